"""Optical flow, moving masks and the flow cache (docs/method.md, "Optical flow")."""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import pytest
import torch

from motion_relevance.metrics.flow import FlowEstimator, compute_flow, flow_magnitude, moving_mask

DX, DY = 2, 1  # known displacement, px/frame (x right, y down)


def translated_clip(t: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 RGB (T, H, W, 3) of a smooth random texture moving by (DX, DY) px per frame."""
    g = np.random.default_rng(seed)
    big = cv2.GaussianBlur(g.random((size + 40, size + 40)).astype(np.float32), (0, 0), 2.0)
    big = ((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    grey = np.stack([big[20 - i * DY : 20 - i * DY + size, 20 - i * DX : 20 - i * DX + size] for i in range(t)])
    return np.repeat(grey[..., None], 3, axis=-1)


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_flow_recovers_known_translation(method):
    frames = translated_clip()
    flow = compute_flow(frames, method)
    assert flow.shape == (3, 64, 64, 2) and flow.dtype == np.float32
    inner = flow[:, 12:-12, 12:-12]
    err = np.hypot(inner[..., 0] - DX, inner[..., 1] - DY)
    assert err.max() < 0.5, err.max()
    # torch input gives the same result
    np.testing.assert_array_equal(compute_flow(torch.from_numpy(frames), method), flow)


def test_flow_params_validated():
    with pytest.raises(ValueError):
        compute_flow(translated_clip(), "lucas-kanade")
    with pytest.raises(ValueError):
        compute_flow(translated_clip(), "farneback", preset="fast")
    with pytest.raises(TypeError):
        compute_flow(translated_clip().astype(np.float32))


def test_short_clip_has_no_flow():
    one = translated_clip(t=1)
    flow = compute_flow(one)
    assert flow.shape == (0, 64, 64, 2)
    moves, valid = moving_mask(flow)
    assert moves.shape == (1, 64, 64) and not moves.any() and not valid.any()
    est = FlowEstimator()
    m, v = est(one[None])
    assert m.shape == (1, 1, 64, 64) and v.shape == (1, 1) and not v.any()


def test_moving_mask_std_and_absolute_threshold():
    flow = np.zeros((3, 2, 3, 2), np.float32)
    flow[0, ..., 0] = [[0.0, 0.5, 3.0], [0.0, 0.0, 4.0]]
    flow[1, ..., 1] = 1.0  # uniform motion (a pan): std 0, so every voxel is above it
    # flow[2] = 0: a static frame, nothing moves (strict >)
    moves, valid = moving_mask(flow)
    mag0 = np.array([[0.0, 0.5, 3.0], [0.0, 0.0, 4.0]])
    assert moves.shape == (4, 2, 3) and valid.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(moves[0], mag0 > mag0.std())  # population std (ddof=0)
    assert moves[1].all() and not moves[2].any() and not moves[3].any()  # last frame: no flow
    moves, valid = moving_mask(flow, threshold=0.75)
    np.testing.assert_array_equal(moves[0], mag0 > 0.75)
    assert moves[1].all() and not moves[2].any() and not moves[3].any()
    moves, _ = moving_mask(np.hypot(flow[..., 0], flow[..., 1]), threshold=1.0, magnitude=True)
    np.testing.assert_array_equal(moves[0], mag0 > 1.0)
    assert not moves[1].any()  # 1.0 is not > 1.0
    with pytest.raises(ValueError):
        moving_mask(flow, threshold="mean")


def test_estimator_batch_matches_functions():
    clip = translated_clip()
    static = np.repeat(clip[:1], 4, axis=0)
    est = FlowEstimator(threshold=1.0)
    moves, valid = est(np.stack([clip, static]))
    assert moves.shape == (2, 4, 64, 64) and moves.dtype == torch.bool
    assert valid.tolist() == [[True, True, True, False]] * 2
    ref, _ = moving_mask(flow_magnitude(compute_flow(clip)), 1.0, magnitude=True)
    np.testing.assert_array_equal(moves[0].numpy(), ref)
    assert moves[0, :3, 12:-12, 12:-12].all() and not moves[1].any()
    assert est.cache_info() == {"hits": 0, "misses": 2, "corrupt": 0, "write_errors": 0}


def test_cache_hit_miss_threshold_change_and_params(tmp_path):
    clip = translated_clip()[None]
    est = FlowEstimator(cache_dir=tmp_path)
    m1, _ = est(clip)
    m2, _ = est(clip)
    assert (est.hits, est.misses) == (1, 1)
    assert torch.equal(m1, m2)  # hit and miss agree bit for bit
    assert not list(tmp_path.glob("*.tmp")) and len(list(tmp_path.glob("*.npz"))) == 1
    # another threshold reuses the cached magnitudes
    est_abs = FlowEstimator(threshold=1.0, cache_dir=tmp_path)
    est_abs(clip)
    assert (est_abs.hits, est_abs.misses) == (1, 0)
    # changed flow parameters or method miss
    for other in (FlowEstimator(params={"winsize": 9}, cache_dir=tmp_path), FlowEstimator("dis", cache_dir=tmp_path)):
        other(clip)
        assert (other.hits, other.misses) == (0, 1)
    # other frames (another video, first frame or preprocessing) miss: the key is the frames' content
    est(clip[:, :, ::-1].copy())
    assert (est.hits, est.misses) == (1, 2)


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    clip = translated_clip()[None]
    est = FlowEstimator(cache_dir=tmp_path)
    ref, _ = est(clip)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not an npz at all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corrupt entry logs, it does not warn or raise
        again, _ = est(clip)
    assert torch.equal(again, ref) and est.corrupt == 1 and est.misses == 2
    est(clip)  # rewritten entry is good again
    assert est.hits == 1


def test_unwritable_cache_dir_warns_and_runs(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits: make the access check say what a user would see
        monkeypatch.setattr("motion_relevance.metrics.flow.os.access", lambda *a, **k: False)
    try:
        with pytest.warns(RuntimeWarning, match="flow cache disabled"):
            est = FlowEstimator(cache_dir=ro)
        moves, valid = est(translated_clip()[None])
        assert valid.any() and est.cache_dir is None and est.misses == 1
    finally:
        ro.chmod(0o700)


def test_cache_dir_that_is_a_file_warns_once_and_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="flow cache disabled") as rec:
        est = FlowEstimator(cache_dir=blocker / "flow")
        est(translated_clip()[None])
        est(translated_clip()[None])
    assert len(rec) == 1 and est.misses == 2 and est.hits == 0


def test_write_failure_after_start_warns_once(tmp_path, monkeypatch):
    est = FlowEstimator(cache_dir=tmp_path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("motion_relevance.metrics.flow.tempfile.mkstemp", fail)
    with pytest.warns(RuntimeWarning, match="disk full") as rec:
        est(translated_clip()[None])
        est(translated_clip()[None][:, :, ::-1].copy())
    assert len(rec) == 1 and est.write_errors == 1 and est.cache_dir is None
