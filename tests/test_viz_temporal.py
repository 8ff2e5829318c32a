"""The per-frame relevance figure and the curve strip under overlay videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from motion_relevance.viz import overlay_clip_frames, write_overlay_video
from motion_relevance.viz.temporal import curve_strip, plot_temporal_curves


def test_figure_has_one_panel_per_method_and_shades_motion(tmp_path: Path) -> None:
    curves = {"dtd": [0.1, 0.2, 0.3, 0.4], "dtd_selective": [0.0, None, 0.5, 0.5], "gbp": [0.25] * 4,
              "ground_truth": [0.0, 0.5, 0.5, 0.0]}
    groups = {"dtd": ["dtd", "dtd_selective"], "gbp": ["gbp"]}
    path = plot_temporal_curves(curves, tmp_path / "test_temporal.png", groups=groups, reference="ground_truth",
                                std={"dtd": [0.01] * 4},
                                motion=[0.0, 1.0, 1.0, 0.0], counts={"dtd": 3}, title="per-frame relevance")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] > image.shape[0]  # two panels side by side
    green = (image[..., 1] > image[..., 0] + 20) & (image[..., 1] > image[..., 2] + 20)
    assert green.any()  # the ground-truth motion frames are shaded
    plain = plot_temporal_curves({"dtd": [0.5, 0.5]}, tmp_path / "one.png")
    assert np.asarray(Image.open(plain)).shape[1] < image.shape[1]


def test_figure_refuses_ragged_or_empty_curves(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not have 3 frames"):
        plot_temporal_curves({"dtd": [0.1, 0.2, 0.7], "gbp": [1.0]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no explainer's curve"):
        plot_temporal_curves({"ground_truth": [1.0]}, tmp_path / "x.png", reference="ground_truth")
    with pytest.raises(ValueError, match="not in curves"):
        plot_temporal_curves({"dtd": [1.0]}, tmp_path / "x.png", groups={"dtd": ["dtd", "dtd_selective"]})
    with pytest.raises(ValueError, match="motion has 1 frames"):
        plot_temporal_curves({"dtd": [0.5, 0.5]}, tmp_path / "x.png", motion=[1.0])


def test_curve_strip_draws_the_cursor_at_the_frame_and_the_curve_heights() -> None:
    curves = {"a": [0.0, 0.0, 1.0, 0.0]}
    strip = curve_strip(curves, 1, 200, 60)
    assert strip.shape == (60, 200, 3) and strip.dtype == np.uint8
    step = (200 - 2 * 5) / 4
    x_cursor = round(5 + 1.5 * step)
    assert (strip[20:40, x_cursor] == 255).all()  # the white cursor at frame 1
    x_peak = round(5 + 2.5 * step)
    column = strip[:, x_peak].astype(int)
    coloured = np.nonzero(np.abs(column - 24).sum(1) > 60)[0]
    assert coloured.min() < 12  # the peak (share 1) is drawn at the top
    moved = curve_strip(curves, 3, 200, 60, motion=[False, False, True, False])
    assert (moved[30, round(5 + 2.2 * step)] == (30, 70, 40)).all()
    with pytest.raises(ValueError, match="frame 4 outside"):
        curve_strip(curves, 4, 200, 60)


def test_overlay_frames_get_the_strip_under_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    maps = {"dtd": rng.standard_normal((4, 32, 32))}
    plain = overlay_clip_frames(frames, maps, min_height=64)
    strip = overlay_clip_frames(frames, maps, min_height=64, curves={"dtd": [0.1, 0.2, 0.3, 0.4]},
                                motion=[True] * 4)
    assert strip[0].shape[0] == plain[0].shape[0] + 48 and strip[0].shape[1] == plain[0].shape[1]
    assert np.array_equal(strip[2][: plain[2].shape[0]], plain[2])
    with pytest.raises(ValueError, match="curve 'dtd' has 3 frames"):
        overlay_clip_frames(frames, maps, curves={"dtd": [0.3, 0.3, 0.4]})
    path = write_overlay_video(frames, maps, tmp_path / "clip.gif", curves={"dtd": [0.25] * 4}, min_height=64)
    assert Image.open(path).size[1] == strip[0].shape[0]
