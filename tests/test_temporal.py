"""Per-frame relevance and the temporal-window freeze test against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from motion_relevance.metrics.temporal import (
    default_window,
    frame_shares,
    random_centres,
    temporal_window_drops,
    top_frames,
    window_masks,
)
from tests.tiny_models import FrameReader


def test_frame_shares_by_hand() -> None:
    r = torch.zeros(2, 3, 4, 2, 2)
    r[0, 0, 1, 0, 0] = 3.0
    r[0, 1, 1, 0, 0] = -1.0  # channel sum at (1,0,0): 2
    r[0, 2, 3, 1, 1] = 6.0
    r[0, 0, 2, 0, 0] = -5.0  # negative voxels do not count
    r[1, 0, 0, 0, 0] = -1.0  # no positive relevance at all
    shares = frame_shares(r)
    assert torch.allclose(shares[0], torch.tensor([0.0, 0.25, 0.0, 0.75]))
    assert torch.isnan(shares[1]).all()
    assert top_frames(shares).tolist() == [3, 0]


def test_windows_stay_inside_the_clip() -> None:
    m = window_masks(torch.tensor([0, 5, 9]), 4, (3, 10, 2, 2))
    frames = [m[i, :, 0, 0].nonzero().flatten().tolist() for i in range(3)]
    assert frames == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert m.shape == (3, 10, 2, 2) and m.dtype == torch.bool
    assert default_window(16) == 4 and default_window(3) == 1
    with pytest.raises(ValueError, match="window"):
        window_masks(torch.tensor([0]), 11, (1, 10, 1, 1))


def test_random_centres_depend_only_on_the_seed() -> None:
    a = random_centres([1, 2, 3], 16)
    b = random_centres([3, 1], 16)
    assert a[0] == b[1] and a[2] == b[0]
    assert ((a >= 0) & (a < 16)).all()


def _prob(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return model(x).softmax(1)[:, 0]


def test_window_drops_against_hand_freeze() -> None:
    torch.manual_seed(0)
    t = 8
    clips = torch.randn(2, 3, t, 4, 4)
    clips[:, 0, 6] += 2.0  # frame 6 carries the evidence
    model = FrameReader(6)
    sel = torch.zeros_like(clips)
    sel[:, :, 6] = 1.0  # selective marks frame 6
    base = torch.zeros_like(clips)
    base[:, :, 1] = 1.0  # baseline marks frame 1
    seeds = [11, 12]
    out = temporal_window_drops(model, clips, base, sel, seeds, target=0, window=2)
    mean_t = clips.mean(2, keepdim=True).expand_as(clips)

    def frozen(start: torch.Tensor) -> torch.Tensor:
        x = clips.clone()
        for i, s in enumerate(start.tolist()):
            x[i, :, s : s + 2] = mean_t[i, :, s : s + 2]
        return x

    clean = _prob(clips, model)
    for name, centre in (("selective", torch.tensor([6, 6])), ("baseline", torch.tensor([1, 1])),
                         ("random", random_centres(seeds, t))):
        start = (centre - 1).clamp(0, t - 2)
        expected = clean - _prob(frozen(start), model)
        assert torch.allclose(out[name], expected, atol=1e-6), name
    assert out["selective"].gt(0.05).all()  # freezing the evidence frame lowers the score
    assert torch.allclose(out["baseline"], torch.zeros(2), atol=1e-6)  # frame 1 never matters
    assert torch.allclose(out["advantage"], out["selective"] - out["random"])


def test_empty_selective_map_is_undefined_and_bad_inputs_refused() -> None:
    clips = torch.randn(1, 3, 4, 2, 2)
    model = FrameReader(1)
    out = temporal_window_drops(model, clips, torch.ones_like(clips), torch.zeros_like(clips), [0], target=0)
    assert math.isnan(out["selective"].item()) and math.isnan(out["advantage"].item())
    assert not math.isnan(out["baseline"].item())
    with pytest.raises(ValueError, match="seeds: expected 1"):
        temporal_window_drops(model, clips, clips, clips, [0, 1])
    with pytest.raises(ValueError, match="temporal.window"):
        temporal_window_drops(model, clips, clips, clips, [0], window=5)
    with pytest.raises(ValueError, match="selective must cover"):
        temporal_window_drops(model, clips, clips, clips[:, :, :2], [0])
