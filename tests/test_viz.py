"""Tests of motion_relevance.viz: heatmaps, grids, overlay videos (MP4/AVI/GIF), writer errors and plots."""

from __future__ import annotations

import os
import sys
import warnings
from collections import OrderedDict

import cv2
import numpy as np
import pytest

from motion_relevance.viz import (
    VideoWriter,
    VideoWriterError,
    blend,
    channel_sum,
    draw_text_bar,
    normalize_relevance,
    overlay_clip_frames,
    plot_metric_vs_sigma,
    plot_timeline,
    relevance_to_heatmap,
    render_explanation_grid,
    save_explanation_grid,
    side_by_side,
    write_overlay_video,
)


def _clip(t: int = 8, h: int = 56, w: int = 56, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): a gradient background with a square moving right."""
    yy, xx = np.mgrid[:h, :w]
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    frames[..., 1] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    frames[..., 2] = 100
    for i in range(t):
        frames[i, h // 3 : h // 3 + 8, 2 + 3 * i : 10 + 3 * i] = (250, 220, 40)
    return frames


def _relevance(t: int = 8, h: int = 56, w: int = 56, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.zeros((c, t, h, w), np.float32)
    for i in range(t):
        r[:, i, h // 3 : h // 3 + 8, 2 + 3 * i : 10 + 3 * i] = rng.random((c, 8, 8))
    r[:, :, -12:-4, 4:12] = -0.3
    return r


# ---------------------------------------------------------------------------------------------- colormaps
def test_signed_heatmap_extremes_and_neutral():
    r = np.zeros((2, 4, 4), np.float32)
    r[0, 0, 0] = 2.0
    r[1, 3, 3] = -2.0
    heat = relevance_to_heatmap(r, mode="signed")
    assert heat.shape == (2, 4, 4, 3) and heat.dtype == np.uint8
    assert tuple(heat[0, 0, 0]) == (255, 0, 0)  # +max → red
    assert tuple(heat[1, 3, 3]) == (0, 0, 255)  # -max → blue
    assert tuple(heat[0, 1, 1]) == (255, 255, 255)  # 0 → white (neutral)


def test_positive_heatmap_and_vmax():
    r = np.array([[[-1.0, 0.0], [0.5, 1.0]]], np.float32)
    heat = relevance_to_heatmap(r, mode="positive")
    lo, hi = heat[0, 0, 1], heat[0, 1, 1]
    assert np.array_equal(heat[0, 0, 0], lo)  # negative → clipped to the 0 colour
    assert lo.sum() < 30 and hi.sum() > 400  # inferno: black → bright yellow
    n = normalize_relevance(r, mode="signed", vmax=0.5)
    assert n.max() == 1.0 and n.min() == -1.0  # values beyond vmax clip


def test_all_zero_and_nan_relevance_give_no_nan():
    z = np.zeros((3, 2, 5, 5), np.float32)
    for mode in ("signed", "positive"):
        n = normalize_relevance(z, mode=mode)
        assert np.isfinite(n).all() and (n == 0).all()
        heat = relevance_to_heatmap(z, mode=mode)  # (C, T, H, W) → (T, H, W, 3)
        assert heat.shape == (2, 5, 5, 3)
        assert (heat == heat[0, 0, 0]).all()  # uniformly the neutral colour
    nan = np.full((2, 3, 3), np.nan, np.float32)
    assert np.isfinite(normalize_relevance(nan)).all()


def test_channel_sum_and_blend_weight():
    r = np.ones((3, 2, 4, 4), np.float32)
    assert channel_sum(r).shape == (2, 4, 4) and channel_sum(r)[0, 0, 0] == 3.0
    assert channel_sum(r[0]).shape == (2, 4, 4)
    with pytest.raises(ValueError):
        channel_sum(np.ones((4, 4)))
    frame = np.full((4, 4, 3), 100, np.uint8)
    heat = np.full((4, 4, 3), 200, np.uint8)
    w = np.zeros((4, 4), np.float32)
    w[0, 0] = 1.0
    out = blend(frame, heat, alpha=0.5, weight=w)
    assert tuple(out[1, 1]) == (100, 100, 100)  # zero weight → plain frame
    assert tuple(out[0, 0]) == (150, 150, 150)
    assert tuple(blend(frame, heat, alpha=1.0)[2, 2]) == (200, 200, 200)


# ---------------------------------------------------------------------------------------------- grid
def _grid_inputs(n: int, k: int, t: int = 4, s: int = 32):
    frames = np.stack([_clip(t, s, s) for _ in range(n)])
    cols = OrderedDict()
    for j in range(k):
        rel = np.stack([_relevance(t, s, s, c=3 if j % 2 == 0 else 1, seed=j) for _ in range(n)])  # (N, C, T, H, W)
        cols[f"method {j}"] = rel if j % 2 == 0 else rel[:, 0]  # alternate (N,C,T,H,W) and (N,T,H,W)
    return frames, cols


def test_grid_png_size_scales_with_rows_and_columns(tmp_path):
    dpi, panel = 50, 1.0  # 50 px panels
    sizes = {}
    for n, k in ((2, 3), (3, 3), (2, 5)):
        frames, cols = _grid_inputs(n, k)
        path = save_explanation_grid(frames, cols, tmp_path / f"g{n}{k}.png", dpi=dpi, panel_inches=panel,
                                     row_labels=[f"clip {i}" for i in range(n)], title="grid")
        assert path.exists()
        img = cv2.imread(str(path))
        assert img is not None
        sizes[(n, k)] = img.shape[:2]
        h, w = img.shape[:2]
        # panels are square (32x32 frames) → the grid is about (k+1) x n panels plus small margins
        assert abs(w / h - (k + 1) / n) < 0.35 * (k + 1) / n
    px = dpi * panel
    assert abs((sizes[(3, 3)][0] - sizes[(2, 3)][0]) - px) <= 4  # one more row → one panel taller
    assert abs((sizes[(2, 5)][1] - sizes[(2, 3)][1]) - 2 * px) <= 6  # two more columns → two panels wider
    assert sizes[(3, 3)][1] == sizes[(2, 3)][1]


def test_render_grid_array_and_frame_index():
    frames, cols = _grid_inputs(2, 2)
    img = render_explanation_grid(frames, cols, frame_index=[0, -1], mode={"method 1": "positive"}, dpi=40)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    with pytest.raises(ValueError):
        render_explanation_grid(frames, {"bad": np.zeros((3, 4, 32, 32))})  # wrong N
    with pytest.raises(IndexError):
        render_explanation_grid(frames, cols, frame_index=9)


def test_grid_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    frames, cols = _grid_inputs(1, 1)
    img = render_explanation_grid(torch.from_numpy(frames), {k: torch.from_numpy(v) for k, v in cols.items()}, dpi=30)
    assert img.shape[2] == 3


# ---------------------------------------------------------------------------------------------- overlay / video
def test_tiny_frames_are_upscaled_with_labels():
    frames = _clip(3, 56, 56)
    out = overlay_clip_frames(frames, {"DTD": _relevance(3, 56, 56), "Grad-CAM": _relevance(3, 56, 56, c=1)[0]},
                              captions=["a", "b", "c"])
    assert len(out) == 3
    h, w = out[0].shape[:2]
    assert h > 224 and w >= 3 * 224  # 56 px → x4 = 224 px panels, plus label and caption bars
    assert all(o.shape == out[0].shape for o in out)
    # the input panel is a nearest-neighbour x4 copy of the frame, below the label bar
    bar = draw_text_bar("input", 224, ref_height=224).shape[0]  # one-line label bar on top
    assert np.array_equal(out[0][bar : bar + 224 : 4, 0:224:4], frames[0])
    big = side_by_side([np.zeros((1080, 1920, 3), np.uint8)], ["label"], "caption")
    assert big.shape[0] > 1080 + 2 * 40  # bars scale with the image (readable at 1080 px)


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_overlay_video_decodes(tmp_path, ext):
    decord = pytest.importorskip("decord")
    frames = _clip(6, 64, 64)
    maps = {"DTD": _relevance(6, 64, 64), "selective DTD": _relevance(6, 64, 64, seed=1)}
    expected = overlay_clip_frames(frames, maps)
    path = write_overlay_video(frames, maps, tmp_path / f"ov{ext}", fps=8)
    assert path.exists() and path.stat().st_size > 0
    vr = decord.VideoReader(str(path))
    assert len(vr) == 6
    h, w = expected[0].shape[:2]
    assert vr[0].shape == (h + h % 2, w + w % 2, 3)
    assert h >= 224


def test_gif_frame_count(tmp_path):
    from PIL import Image

    frames = _clip(5, 32, 32)
    path = write_overlay_video(frames, {"DTD": _relevance(5, 32, 32)}, tmp_path / "ov.gif", fps=5)
    with Image.open(path) as im:
        assert im.n_frames == 5
        assert im.info.get("duration") == 200


def test_video_writer_counts_and_pads_odd_sizes(tmp_path):
    decord = pytest.importorskip("decord")
    with VideoWriter(tmp_path / "odd.mp4", fps=10) as vw:
        for i in range(4):
            vw.write(np.full((47, 65, 3), 40 * i, np.uint8))
        assert vw.frames_written == 4
    assert vw.frame_size == (48, 66)
    vr = decord.VideoReader(str(tmp_path / "odd.mp4"))
    assert len(vr) == 4 and vr[0].shape == (48, 66, 3)


def test_mismatched_frame_sizes_raise(tmp_path):
    for ext in (".mp4", ".gif"):
        with VideoWriter(tmp_path / f"m{ext}", fps=8) as vw:
            vw.write(np.zeros((32, 32, 3), np.uint8))
            with pytest.raises(ValueError, match="same size"):
                vw.write(np.zeros((32, 48, 3), np.uint8))
            with pytest.raises(ValueError, match="uint8"):
                vw.write(np.zeros((32, 32, 3), np.float32))


def test_unwritable_path_raises_clear_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    bad = blocker / "out.mp4"  # parent is a regular file
    with pytest.raises(VideoWriterError, match="not_a_dir"):
        VideoWriter(bad, fps=8)
    with pytest.raises(ValueError, match="extension"):
        VideoWriter(tmp_path / "x.webm", fps=8)
    if sys.platform != "win32" and os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(VideoWriterError, match="ro"):
                VideoWriter(ro / "v.avi", fps=8)
        finally:
            ro.chmod(0o700)


def test_writer_without_frames_warns(tmp_path):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with VideoWriter(tmp_path / "empty.mp4", fps=8):
            pass
    assert any("no frames" in str(w.message) for w in rec)
    assert not (tmp_path / "empty.mp4").exists()


# ---------------------------------------------------------------------------------------------- plots
def test_plots_write_pngs(tmp_path):
    rows = [
        {"method": m, "sigma": s, "precision": 0.5 + 0.05 * s, "precision_std": 0.02,
         "selectivity_area": 1 / (1 + s), "selectivity_mass": str(1 / (1 + s / 2))}  # strings as from a CSV
        for m in ("DTD", "Grad-CAM") for s in (4, 0, 1, 2)
    ]
    p = plot_metric_vs_sigma(rows, tmp_path / "sigma.png")
    assert p.exists() and cv2.imread(str(p)) is not None
    cols = {"method": ["a", "a"], "sigma": [0, 1], "precision": [0.1, 0.2]}  # dict of columns
    assert plot_metric_vs_sigma(cols, tmp_path / "cols.png", metrics=("precision", "missing")).exists()
    with pytest.raises(ValueError):
        plot_metric_vs_sigma(cols, tmp_path / "none.png", metrics=("missing",))
    t = np.arange(20) * 0.5
    share = np.linspace(0, 1, 20)
    share[5] = np.nan
    labels = ["walk"] * 8 + ["run"] * 12
    p = plot_timeline(t, np.linspace(0.2, 0.9, 20), share, tmp_path / "timeline.png", labels=labels)
    assert p.exists() and cv2.imread(str(p)) is not None
