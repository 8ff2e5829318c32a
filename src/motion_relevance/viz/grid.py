"""Explanation grids in the style of Figure 3 of Hiley et al. (2020).

Rows are clips, the first column is the input frame, then one column per explanation method (e.g. DTD, selective
DTD, Grad-CAM, selective Grad-CAM, Guided Backprop, Guided Grad-CAM, selective Guided Grad-CAM). Every heatmap is
normalised per clip and method (over all ``T`` frames) and blended over the greyed input frame, with the blend
weight following ``|relevance|`` so that zero relevance shows the plain frame. Drawn on a bare
``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global backend state).

The layout is fixed in inches (no ``tight`` bounding box), so the image size is predictable:
``width ≈ dpi * (left + K1 * panel_inches + (K1 - 1) * gap + right)`` with ``K1 = 1 + len(columns)`` and
``height ≈ dpi * (top + N * panel_inches * H / W + (N - 1) * gap + bottom)``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from motion_relevance.viz.colormaps import (
    DEFAULT_CMAPS,
    Mode,
    blend,
    colorize,
    grey_frames,
    normalize_relevance,
    to_numpy,
)

__all__ = ["explanation_grid_figure", "render_explanation_grid", "save_explanation_grid"]

_GAP = 0.04  # inches between panels
_MARGIN = 0.05  # inches at the right and bottom edges
_TITLE_FONT = 8.0  # points, column titles
_SUPTITLE_FONT = 10.0


def _frame_indices(frame_index: int | Sequence[int] | None, n: int, t: int) -> list[int]:
    if frame_index is None:
        idx = [t // 2] * n
    elif isinstance(frame_index, (int, np.integer)):
        idx = [int(frame_index)] * n
    else:
        idx = [int(i) for i in frame_index]
        if len(idx) != n:
            raise ValueError(f"frame_index has {len(idx)} entries for {n} rows")
    out = []
    for i in idx:
        j = i + t if i < 0 else i
        if not 0 <= j < t:
            raise IndexError(f"frame_index {i} out of range for clips of {t} frames")
        out.append(j)
    return out


def _panel(
    frame: np.ndarray, rel_clip: np.ndarray, t: int, mode: Mode, alpha: float, gamma: float, cmap: Any
) -> np.ndarray:
    """One heatmap panel (H, W, 3): clip-normalised relevance at frame ``t`` over the greyed frame."""
    n = normalize_relevance(rel_clip, mode=mode)[t]  # (h, w), clip-wide vmax
    h, w = frame.shape[:2]
    if n.shape != (h, w):
        n = cv2.resize(n, (w, h), interpolation=cv2.INTER_LINEAR)
    cmap = DEFAULT_CMAPS[mode] if cmap is None else cmap
    heat = colorize((n + 1.0) * 0.5 if mode == "signed" else n, cmap)
    weight = np.abs(n) ** gamma
    return blend(grey_frames(frame, fade=0.15), heat, alpha=alpha, weight=weight)


def explanation_grid_figure(
    frames: Any,
    columns: Mapping[str, Any],
    *,
    frame_index: int | Sequence[int] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 100,
    mode: Mode | Mapping[str, Mode] = "signed",
    cmap: Any = None,
    alpha: float = 0.85,
    weight_gamma: float = 0.5,
    panel_inches: float = 1.6,
    input_label: str = "input frame",
) -> Any:
    """Build the grid as a ``matplotlib.figure.Figure`` (Agg canvas attached). Arguments as in
    :func:`render_explanation_grid`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib, slow to import
    from matplotlib.figure import Figure

    fr = to_numpy(frames)
    if fr.ndim != 5 or fr.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, T, H, W, 3) RGB, got shape {fr.shape}")
    if fr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {fr.dtype}")
    n_rows, t_len, h, w = fr.shape[:4]
    maps: dict[str, np.ndarray] = {}
    for name, rel in columns.items():
        r = to_numpy(rel)
        if r.ndim == 5:  # (N, C, T, H, W)
            r = r.sum(axis=1)
        if r.ndim != 4 or r.shape[0] != n_rows or r.shape[1] != t_len:
            raise ValueError(
                f"column {name!r}: relevance must be (N, T, H, W) or (N, C, T, H, W) with N={n_rows}, T={t_len}; "
                f"got shape {to_numpy(rel).shape}"
            )
        maps[name] = np.asarray(r, dtype=np.float32)
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {n_rows} rows")
    idx = _frame_indices(frame_index, n_rows, t_len)
    modes = {k: (mode.get(k, "signed") if isinstance(mode, Mapping) else mode) for k in maps}

    n_cols = 1 + len(maps)
    pw, ph = panel_inches, panel_inches * h / w
    line_in = _TITLE_FONT * 1.25 / 72.0
    head = 2 * line_in + 0.06
    top = head + (_SUPTITLE_FONT * 1.6 / 72.0 if title else 0.0)
    label_lines = max((str(lab).count("\n") + 1 for lab in row_labels), default=1) if row_labels is not None else 0
    left = (label_lines * _TITLE_FONT * 1.3 / 72.0 + 0.08) if row_labels is not None else _MARGIN
    fig_w = left + n_cols * pw + (n_cols - 1) * _GAP + _MARGIN
    fig_h = top + n_rows * ph + (n_rows - 1) * _GAP + _MARGIN
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    chars = max(8, int(pw * 72.0 / (_TITLE_FONT * 0.55)))
    names = [input_label, *maps.keys()]
    for i in range(n_rows):
        frame = fr[i, idx[i]]
        for j, name in enumerate(names):
            x0 = left + j * (pw + _GAP)
            y0 = fig_h - top - (i + 1) * ph - i * _GAP
            ax = fig.add_axes((x0 / fig_w, y0 / fig_h, pw / fig_w, ph / fig_h))
            img = frame if j == 0 else _panel(frame, maps[name][i], idx[i], modes[name], alpha, weight_gamma, cmap)
            ax.imshow(img, interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_linewidth(0.5)
            if i == 0:
                ax.set_title(textwrap.fill(str(name), chars, max_lines=2, placeholder=".."), fontsize=_TITLE_FONT,
                             pad=3)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[i]), fontsize=_TITLE_FONT, labelpad=2)
    if title:
        fig.text(0.5, 1.0 - 0.04 / fig_h, title, ha="center", va="top", fontsize=_SUPTITLE_FONT)
    return fig


def render_explanation_grid(
    frames: Any,
    columns: Mapping[str, Any],
    *,
    frame_index: int | Sequence[int] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 100,
    mode: Mode | Mapping[str, Mode] = "signed",
    cmap: Any = None,
    alpha: float = 0.85,
    weight_gamma: float = 0.5,
    panel_inches: float = 1.6,
    input_label: str = "input frame",
) -> np.ndarray:
    """Render an explanation grid to a ``uint8`` ``(H_img, W_img, 3)`` RGB array (e.g. for ``wandb.Image``).

    ``frames``: ``uint8`` ``(N, T, H, W, 3)`` RGB clips (rows). ``columns``: ordered mapping method name →
    relevance ``(N, T, H, W)`` or ``(N, C, T, H, W)`` (numpy or torch; channels are summed). ``frame_index``:
    ``None`` = middle frame ``T // 2``, an int (negative counts from the end) or one int per row.
    ``mode``: ``"signed"`` (diverging, blue/white/red) or ``"positive"`` (sequential), for all columns or per
    column name (missing names: signed). Maps of another ``H, W`` are resized bilinearly to the frame.
    ``alpha`` is the blend opacity at maximal ``|relevance|``; the per-pixel weight is
    ``(|R| / vmax) ** weight_gamma``. ``panel_inches`` is the width of one panel at ``dpi``.
    """
    fig = explanation_grid_figure(
        frames, columns, frame_index=frame_index, row_labels=row_labels, title=title, dpi=dpi, mode=mode,
        cmap=cmap, alpha=alpha, weight_gamma=weight_gamma, panel_inches=panel_inches, input_label=input_label,
    )
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_explanation_grid(
    frames: Any,
    columns: Mapping[str, Any],
    path: str | Path,
    *,
    frame_index: int | Sequence[int] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 100,
    mode: Mode | Mapping[str, Mode] = "signed",
    cmap: Any = None,
    alpha: float = 0.85,
    weight_gamma: float = 0.5,
    panel_inches: float = 1.6,
    input_label: str = "input frame",
) -> Path:
    """Render the grid (see :func:`render_explanation_grid`) and write it to ``path`` (format from the extension,
    e.g. ``.png``; parent folders are created). Returns the path."""
    from PIL import Image  # deferred: Pillow, only when a grid is saved

    img = render_explanation_grid(
        frames, columns, frame_index=frame_index, row_labels=row_labels, title=title, dpi=dpi, mode=mode,
        cmap=cmap, alpha=alpha, weight_gamma=weight_gamma, panel_inches=panel_inches, input_label=input_label,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, dpi=(dpi, dpi))
    return path

