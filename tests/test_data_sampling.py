"""Clip sampling, transforms, the unpadded sampler, collate and the failure tracker (no video files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motion_relevance.data import (
    C3D_PORT_MEAN_BGR,
    ClipTransform,
    FailureTracker,
    UnpaddedDistributedSampler,
    clip_indices,
    collate_skipping,
    eval_starts,
    random_start,
)


def test_loop_padding_and_stride() -> None:
    assert clip_indices(0, 10, 16).tolist() == list(range(10)) + list(range(6))
    assert clip_indices(4, 10, 4, stride=2).tolist() == [4, 6, 8, 0]


def test_eval_starts_rules() -> None:
    assert eval_starts(141, 16, mode="all") == [0, 16, 32, 48, 64, 80, 96, 112]  # 8 clips
    assert eval_starts(10, 16, mode="all") == [0]  # too short: one loop-padded clip
    assert eval_starts(141, 16, mode="uniform", clips_per_video=3) == [0, 62, 125]
    assert eval_starts(141, 16, mode="uniform", clips_per_video=1) == [62]
    assert eval_starts(64, 16, stride=2, mode="all") == [0, 32]
    with pytest.raises(ValueError, match="test_sampling"):
        eval_starts(100, 16, mode="random")


def test_random_start_range() -> None:
    assert random_start(10, 16, 1, 0.99) == 0
    assert {random_start(20, 16, 1, r) for r in np.linspace(0, 0.999, 50)} == set(range(5))


def test_unpadded_sampler_covers_each_sample_once() -> None:
    data = list(range(33))
    parts = [list(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == data and len(parts[0]) == 17 and len(parts[1]) == 16
    assert len(UnpaddedDistributedSampler(data, 2, 1)) == 16
    with pytest.raises(ValueError, match="rank"):
        UnpaddedDistributedSampler(data, 2, 2)


def test_transform_bgr_port_roundtrip_and_mask_follows_crop() -> None:
    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
    mask = np.zeros((4, 20, 24), bool)
    mask[:, 5:9, :7] = True  # an off-centre object
    marked = frames.copy()
    marked[..., 1] = np.where(mask, 255, 0)  # green channel encodes the mask
    tf = ClipTransform(16, mean=C3D_PORT_MEAN_BGR, std=1.0, scale=1.0, channel_order="BGR", train=True)
    flips = set()
    for _ in range(20):
        clip, m = tf(marked, mask)
        assert clip.shape == (3, 4, 16, 16) and m.shape == (4, 16, 16) and m.dtype == torch.bool
        back = tf.denormalize(clip)
        assert back.shape == (4, 16, 16, 3) and back.dtype == torch.uint8
        assert torch.equal(back[..., 1] == 255, m)  # same crop and flip for frames and mask
        flips.add(bool(m[0, :, -1].any()))
    assert flips == {True, False}  # both flipped and unflipped crops occurred
    no_flip = ClipTransform(None, train=True, hflip=False)
    assert all(not no_flip.crop_box(20, 24)[2] for _ in range(20))
    eval_tf = ClipTransform(16, mean=C3D_PORT_MEAN_BGR, std=1.0, scale=1.0, channel_order="BGR")
    clip, _ = eval_tf(frames)
    assert clip[0, 0, 0, 0] == pytest.approx(frames[0, 2, 4, 2] - 90.25)  # channel 0 is blue
    np.testing.assert_array_equal(eval_tf.denormalize(clip.numpy()), frames[:, 2:18, 4:20])
    batch = torch.stack([clip, clip])
    assert eval_tf.denormalize(batch).shape == (2, 4, 16, 16, 3)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"channel_order": "RGBA"}, "channel_order"), ({"crop_size": 0}, "crop_size"), ({"std": 0}, "std"),
     ({"scale": 0}, "scale")],
)
def test_transform_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClipTransform(**kw)


def test_collate_skipping_and_tracker() -> None:
    item = {"clip": torch.zeros(3, 2, 4, 4), "label": torch.tensor(1), "video": "a.avi", "start": torch.tensor(0)}

    class Fake:
        def pop_skipped(self) -> list[str]:
            return ["bad.avi"]

    batch = collate_skipping([item, None, item], dataset=Fake())
    assert batch["clip"].shape == (2, 3, 2, 4, 4) and batch["skipped"] == ["bad.avi"]
    empty = collate_skipping([None])
    assert empty["label"].numel() == 0 and empty["skipped"] == ["<unknown>"]
    tracker = FailureTracker(max_fraction=0.25)
    tracker.update(9, ["x.avi"])  # 10 %: fine
    tracker.update(0, ["y.avi", "z.avi"])  # 3 of 12 = 25 %: not above the limit
    with pytest.raises(RuntimeError, match=r"4 of 13 .*x.avi, y.avi"):
        tracker.update(0, ["w.avi"])
