"""When: per-frame relevance curves as a figure (mean over clips, one panel per method) and as a strip under the
frames of an overlay video (the clip's own curves, with a cursor at the current frame).

Curves are per-frame shares of positive relevance (``a_t``, summing to 1 over the clip; docs/method.md, "When").
Plain matplotlib (Agg ``Figure``) and OpenCV; no Lightning or Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from motion_relevance.viz.plots import _float, _new_figure, _save

__all__ = ["curve_strip", "plot_temporal_curves"]

#: Strip colours (RGB), cycled per curve: the baseline first, then its selective maps.
_STRIP_COLOURS = ((90, 170, 255), (255, 120, 60), (120, 220, 120), (230, 90, 200), (240, 220, 80))


def plot_temporal_curves(
    curves: Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    reference: str | None = None,
    std: Mapping[str, Sequence[Any]] | None = None,
    motion: Sequence[float] | None = None,
    counts: Mapping[str, int] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Mean per-frame relevance share of each map, one panel per baseline method (the baseline solid, its
    selective maps dashed), the uniform share ``1/T`` dotted.

    Args:
        curves: map name (``dtd``, ``dtd_selective`` …) -> mean share per frame (None/NaN where undefined).
        groups: panel title (a baseline method) -> the curves drawn in it, the baseline first (solid) and its
            selective maps after it (dashed); default: one panel per curve other than ``reference``.
        reference: the name of a curve drawn grey in every panel (the ground-truth mask's own shares).
        std: map name -> std per frame, drawn as a band.
        motion: per frame, the fraction of clips whose ground-truth mask moves there (synthetic data): frames
            shaded with that opacity.
        counts: map name -> clips with a curve (shown in the legend).
    """
    if groups is None:
        groups = {name: [name] for name in curves if name != reference}
    groups = {k: list(v) for k, v in groups.items() if v}
    missing = [n for names in groups.values() for n in names if n not in curves]
    if missing:
        raise ValueError(f"groups name curves {missing} that are not in curves ({list(curves)})")
    if not groups:
        raise ValueError(f"curves hold no explainer's curve (names: {list(curves)}); nothing to plot")
    frames = len(next(iter(curves.values())))
    bad = [n for n, c in curves.items() if len(c) != frames]
    if bad:
        raise ValueError(f"curves {bad} do not have {frames} frames like {next(iter(curves))!r}")
    if motion is not None and len(motion) != frames:
        raise ValueError(f"motion has {len(motion)} frames, the curves {frames}")
    n = len(groups)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _new_figure(4.2 * cols, 3.2 * rows + (0.4 if title else 0.0), dpi)
    x = np.arange(frames)
    for i, (method, names) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        if motion is not None:
            for t, share in enumerate(motion):
                if _float(share) > 0:
                    ax.axvspan(t - 0.5, t + 0.5, color="tab:green", alpha=0.25 * min(1.0, _float(share)), lw=0)
            ax.plot([], [], color="tab:green", alpha=0.4, lw=6, label="ground-truth motion")
        if reference is not None and reference in curves:
            ax.plot(x, [_float(v) for v in curves[reference]], color="grey", lw=1, label="mask share")
        for j, name in enumerate(names):
            y = np.asarray([_float(v) for v in curves[name]], dtype=float)
            colour = f"C{j % 10}"
            label = name + (f" (n={counts[name]})" if counts and name in counts else "")
            ax.plot(x, y, marker="o", markersize=3, color=colour, linestyle="-" if j == 0 else "--", label=label)
            if std is not None and name in std:
                s = np.asarray([_float(v) for v in std[name]], dtype=float)
                ok = np.isfinite(s) & np.isfinite(y)
                ax.fill_between(x, np.where(ok, y - s, np.nan), np.where(ok, y + s, np.nan), color=colour,
                                alpha=0.12, lw=0)
        ax.axhline(1.0 / frames, color="black", lw=0.8, linestyle=":", label="uniform 1/T")
        ax.set_xlim(-0.5, frames - 0.5)
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel("frame (input frame rate)")
        ax.set_ylabel("share of positive relevance")
        ax.set_title(method)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def curve_strip(
    curves: Mapping[str, Sequence[Any]], frame: int, width: int, height: int, *,
    motion: Sequence[bool] | None = None,
) -> np.ndarray:
    """A ``uint8`` ``(height, width, 3)`` RGB strip: each curve (per-frame shares of one clip) as a polyline over
    the clip's frames, a cursor at ``frame`` and, with ``motion`` (bool per frame), the ground-truth motion
    frames shaded. Curves share one y scale (0 to the largest share); NaN values (no positive relevance) are not
    drawn. Names are written side by side at the top, in their colours."""
    if width < 8 or height < 8:
        raise ValueError(f"curve strip needs at least 8x8 px, got {width}x{height}")
    strip = np.full((height, width, 3), 24, np.uint8)
    if not curves:
        return strip
    frames = len(next(iter(curves.values())))
    if frames < 1 or not 0 <= frame < frames:
        raise ValueError(f"frame {frame} outside the curves' {frames} frames")
    pad = max(2, height // 12)
    top, bottom = pad, height - pad - 1
    step = (width - 2 * pad) / frames
    xs = [round(pad + (t + 0.5) * step) for t in range(frames)]
    if motion is not None:
        for t, moving in enumerate(motion):
            if moving:
                x0, x1 = round(pad + t * step), round(pad + (t + 1) * step) - 1
                strip[top:bottom + 1, x0:x1 + 1] = (30, 70, 40)
    values = [[_float(v) for v in c] for c in curves.values()]
    finite = [v for c in values for v in c if math.isfinite(v)]
    peak = max(finite) if finite else 1.0
    peak = peak if peak > 0 else 1.0
    cv2.line(strip, (xs[frame], top), (xs[frame], bottom), (255, 255, 255), 1)
    scale = max(0.35, height / 150.0)
    line = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][1] + 4
    x_text, y_text = pad + 2, top + line
    for i, (name, ys) in enumerate(zip(curves, values)):
        colour = _STRIP_COLOURS[i % len(_STRIP_COLOURS)]
        points = [(xs[t], round(bottom - (bottom - top) * v / peak)) for t, v in enumerate(ys) if math.isfinite(v)]
        if len(points) > 1:
            cv2.polylines(strip, [np.asarray(points, np.int32)], False, colour, max(1, height // 60), cv2.LINE_AA)
        for p in points:
            cv2.circle(strip, p, max(1, height // 40), colour, -1, cv2.LINE_AA)
        text = name.encode("ascii", "replace").decode("ascii")
        text_w = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
        if x_text > pad + 2 and x_text + text_w > width - pad:  # names side by side, wrapped at the strip's width
            x_text, y_text = pad + 2, y_text + line
        cv2.putText(strip, text, (x_text, y_text), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
        x_text += text_w + 3 * pad
    return strip
