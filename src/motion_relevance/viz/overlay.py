"""Side-by-side overlay frames and videos: the input clip next to each relevance map blended over it.

All images are ``uint8`` ``(H, W, 3)`` RGB. Text is drawn with OpenCV (Hershey font, ASCII only) in white on a
dark bar, so it is readable on any background; its size scales with the image height (readable from ~112 px to
1080 px). Tiny frames (e.g. 56 or 64 px) are upscaled by an integer factor with nearest-neighbour interpolation to
at least ``min_height`` (default 224 px) so every model-input pixel stays a crisp block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from motion_relevance.viz.colormaps import (
    DEFAULT_CMAPS,
    Mode,
    blend,
    channel_sum,
    colorize,
    grey_frames,
    normalize_relevance,
    to_numpy,
)
from motion_relevance.viz.temporal import curve_strip
from motion_relevance.viz.video_writer import VideoWriter

__all__ = [
    "draw_text_bar",
    "iter_overlay_frames",
    "overlay_clip_frames",
    "side_by_side",
    "text_bar_lines",
    "upscale_nearest",
    "write_overlay_video",
]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BAR_COLOUR = (24, 24, 24)
_TEXT_COLOUR = (255, 255, 255)
_SEPARATOR = (255, 255, 255)


def _font_scale(ref_height: int) -> float:
    """Hershey font scale for an image of ``ref_height`` px: ~13 px cap height at 224 px, ~45 px at 1080 px."""
    return max(0.4, ref_height / 520.0)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _text_width(text: str, scale: float, thick: int) -> int:
    return cv2.getTextSize(text, _FONT, scale, thick)[0][0]


def _layout(text: str, width: int, ref_height: int, max_lines: int) -> tuple[list[str], float, int, int, int]:
    """Fit ``text`` into ``width`` px: one line at the base scale, else two lines split at a space, else the
    candidate that needs the least shrinking (down to scale 0.3), cut with ``..`` if it still does not fit.
    Returns (lines, scale, thickness, line height in px at the base scale, horizontal padding)."""
    base = _font_scale(ref_height)
    thick = max(1, round(base * 1.6))
    (_, th), _ = cv2.getTextSize("Ag", _FONT, base, thick)
    line_h = round(th * 1.8)
    pad = max(3, th // 2)
    avail = max(1, width - 2 * pad)
    candidates = [[text]]
    words = text.split(" ")
    if max_lines >= 2 and len(words) > 1:
        splits = [[" ".join(words[:i]), " ".join(words[i:])] for i in range(1, len(words))]
        candidates.append(min(splits, key=lambda ls: max(_text_width(x, base, thick) for x in ls)))
    best, best_scale = candidates[0], 0.0
    for lines in candidates:
        widest = max(_text_width(x, base, thick) for x in lines)
        sc = base if widest <= avail else base * avail / widest
        if sc >= base:
            return lines, base, thick, line_h, pad
        if sc > best_scale * 1.15:  # prefer one line unless two lines are clearly larger
            best, best_scale = lines, sc
    sc = max(0.3, best_scale)
    out = []
    for x in best:
        while x and _text_width(x, sc, thick) > avail:
            x = x[:-3] + ".." if len(x) > 3 else ""
        out.append(x)
    return out, sc, thick, line_h, pad


def text_bar_lines(text: str, width: int, *, ref_height: int, max_lines: int = 2) -> int:
    """How many lines :func:`draw_text_bar` needs for ``text`` in a bar ``width`` px wide."""
    return len(_layout(_ascii(str(text)), width, ref_height, max_lines)[0])


def draw_text_bar(
    text: str,
    width: int,
    *,
    ref_height: int,
    align: str = "center",
    n_lines: int | None = None,
    max_lines: int = 2,
) -> np.ndarray:
    """A dark ``uint8`` ``(bar_h, width, 3)`` RGB bar with ``text`` in white (OpenCV Hershey font, ASCII).

    The font scales with ``ref_height`` (the height of the image the bar belongs to: ~13 px letters at 224 px,
    ~45 px at 1080 px). Text too wide is wrapped onto up to ``max_lines`` lines, then shrunk, then cut with
    ``..``. ``n_lines`` fixes the bar height in lines (so bars of side-by-side panels line up).
    """
    text = _ascii(str(text))
    lines, scale, thick, line_h, pad = _layout(text, width, ref_height, max_lines)
    rows = max(len(lines), n_lines or 0)
    bar_h = rows * line_h + line_h // 3
    bar = np.empty((bar_h, width, 3), np.uint8)
    bar[:] = _BAR_COLOUR
    (_, th), _ = cv2.getTextSize("A", _FONT, scale, thick)
    y0 = (bar_h - len(lines) * line_h) // 2
    for i, line in enumerate(lines):
        tw = _text_width(line, scale, thick)
        x = pad if align == "left" else max(pad, (width - tw) // 2)
        y = y0 + i * line_h + (line_h + th) // 2
        cv2.putText(bar, line, (x, y), _FONT, scale, _TEXT_COLOUR, thick, cv2.LINE_AA)
    return bar


def upscale_nearest(image: np.ndarray, min_height: int) -> np.ndarray:
    """Upscale ``(H, W, ...)`` by the smallest integer factor giving ``H >= min_height`` (nearest neighbour);
    images already tall enough are returned unchanged."""
    h = image.shape[0]
    if h <= 0 or h >= min_height:
        return image
    k = math.ceil(min_height / h)
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def _resize_to_height(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h == height:
        return img
    new_w = max(1, round(w * height / h))
    interp = cv2.INTER_NEAREST if height > h else cv2.INTER_AREA
    return cv2.resize(img, (new_w, height), interpolation=interp)


def side_by_side(
    panels: Sequence[Any],
    labels: Sequence[str] | None = None,
    caption: str | None = None,
    *,
    height: int | None = None,
    min_height: int = 0,
    separator: int = 2,
) -> np.ndarray:
    """Place ``uint8`` ``(H_i, W_i, 3)`` RGB panels left to right at a common height.

    The common height is ``height`` or the tallest panel, upscaled to ``min_height`` (integer factor, nearest
    neighbour). Panels are resized (nearest neighbour up, area down) keeping their aspect ratio and separated by
    ``separator`` white pixels. ``labels`` (one per panel) puts a dark label bar above each panel; ``caption`` adds
    a full-width bar at the bottom. Returns ``uint8`` ``(H_out, W_out, 3)``.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    imgs = []
    for p in panels:
        a = to_numpy(p)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"panels must be uint8 (H, W, 3) RGB, got {a.dtype} {a.shape}")
        imgs.append(a)
    if labels is not None and len(labels) != len(imgs):
        raise ValueError(f"{len(labels)} labels for {len(imgs)} panels")
    target = height if height is not None else max(a.shape[0] for a in imgs)
    if target < min_height:
        target = target * math.ceil(min_height / target)
    imgs = [_resize_to_height(a, target) for a in imgs]
    if labels is not None:
        n_lines = max(text_bar_lines(lab, a.shape[1], ref_height=target) for a, lab in zip(imgs, labels))
        imgs = [np.concatenate([draw_text_bar(lab, a.shape[1], ref_height=target, n_lines=n_lines), a], axis=0)
                for a, lab in zip(imgs, labels)]
    parts: list[np.ndarray] = []
    for i, a in enumerate(imgs):
        if i and separator > 0:
            sep = np.empty((a.shape[0], separator, 3), np.uint8)
            sep[:] = _SEPARATOR
            parts.append(sep)
        parts.append(a)
    out = np.concatenate(parts, axis=1)
    if caption is not None:
        out = np.concatenate([out, draw_text_bar(caption, out.shape[1], ref_height=target, align="left")], axis=0)
    return np.ascontiguousarray(out)


def iter_overlay_frames(
    frames: Any,
    maps: Mapping[str, Any],
    captions: str | Sequence[str] | None = None,
    *,
    mode: Mode | Mapping[str, Mode] = "signed",
    cmap: Any = None,
    alpha: float = 0.85,
    weight_gamma: float = 0.5,
    min_height: int = 224,
    input_label: str = "input",
    show_frame_number: bool = True,
    curves: Mapping[str, Sequence[Any]] | None = None,
    motion: Sequence[bool] | None = None,
) -> Iterator[np.ndarray]:
    """Composite each frame of a clip: ``input | map_1 | map_2 | ...``.

    ``frames``: ``uint8`` ``(T, H, W, 3)`` RGB. ``maps``: name → relevance ``(T, H, W)`` or ``(C, T, H, W)``
    (channels summed); each map is normalised once over the clip and blended over the greyed frame with a
    per-pixel weight ``(|R| / vmax) ** weight_gamma`` (zero relevance shows the frame). ``captions``: one string
    for all frames, one per frame, or ``None`` (then only ``"t=<i>"`` when ``show_frame_number``). Frames below
    ``min_height`` are upscaled (nearest neighbour, integer factor). ``curves`` (name -> ``T`` per-frame relevance
    shares of this clip, see :func:`motion_relevance.metrics.temporal.frame_shares`) adds a strip under each frame
    with the curves and a cursor at the frame (:func:`~motion_relevance.viz.temporal.curve_strip`; ``motion``: bool
    per frame, the ground-truth motion frames, shaded). Yields ``T`` images of one size, one at a time (see
    :func:`overlay_clip_frames` for the list).
    """
    fr = to_numpy(frames)
    if fr.ndim != 4 or fr.shape[-1] != 3 or fr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {fr.dtype} {fr.shape}")
    t_len, h, w = fr.shape[:3]
    if captions is None or isinstance(captions, str):
        caps = [captions] * t_len
    else:
        caps = list(captions)
        if len(caps) != t_len:
            raise ValueError(f"{len(caps)} captions for {t_len} frames")
    coloured: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, rel in maps.items():
        r = channel_sum(rel, map_ndim=3)
        if r.shape[0] != t_len:
            raise ValueError(f"map {name!r} has {r.shape[0]} frames, the clip has {t_len}")
        m = mode.get(name, "signed") if isinstance(mode, Mapping) else mode
        n = normalize_relevance(r, mode=m)
        if n.shape[1:] != (h, w):
            n = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in n])
        cm = DEFAULT_CMAPS[m] if cmap is None else cmap
        heat = colorize((n + 1.0) * 0.5 if m == "signed" else n, cm)
        coloured[name] = (heat, np.abs(n) ** weight_gamma)
    labels = [input_label, *coloured.keys()]
    for name, curve in (curves or {}).items():
        if len(curve) != t_len:
            raise ValueError(f"curve {name!r} has {len(curve)} frames, the clip has {t_len}")
    if motion is not None and len(motion) != t_len:
        raise ValueError(f"motion has {len(motion)} frames, the clip has {t_len}")

    def gen() -> Iterator[np.ndarray]:  # inputs are validated above, eagerly
        grey = grey_frames(fr, fade=0.15)
        for t in range(t_len):
            panels = [upscale_nearest(fr[t], min_height)]
            for heat, wgt in coloured.values():
                panels.append(upscale_nearest(blend(grey[t], heat[t], alpha=alpha, weight=wgt[t]), min_height))
            cap = caps[t]
            if show_frame_number:
                cap = f"t={t}" if cap is None else f"t={t}  {cap}"
            image = side_by_side(panels, labels, cap)
            if curves:
                strip = curve_strip(curves, t, image.shape[1], max(48, round(0.35 * panels[0].shape[0])),
                                    motion=motion)
                image = np.concatenate([image, strip], axis=0)
            yield image

    return gen()


def overlay_clip_frames(
    frames: Any,
    maps: Mapping[str, Any],
    captions: str | Sequence[str] | None = None,
    *,
    mode: Mode | Mapping[str, Mode] = "signed",
    cmap: Any = None,
    alpha: float = 0.85,
    weight_gamma: float = 0.5,
    min_height: int = 224,
    input_label: str = "input",
    show_frame_number: bool = True,
    curves: Mapping[str, Sequence[Any]] | None = None,
    motion: Sequence[bool] | None = None,
) -> list[np.ndarray]:
    """The composited frames ``input | map_1 | ...`` of a clip as a list (arguments: :func:`iter_overlay_frames`).

    ``frames`` ``uint8`` ``(T, H, W, 3)``; ``maps`` name → ``(T, H, W)`` / ``(C, T, H, W)`` relevance; returns
    ``T`` ``uint8`` ``(H_out, W_out, 3)`` RGB images.
    """
    return list(iter_overlay_frames(
        frames, maps, captions, mode=mode, cmap=cmap, alpha=alpha, weight_gamma=weight_gamma,
        min_height=min_height, input_label=input_label, show_frame_number=show_frame_number, curves=curves,
        motion=motion,
    ))


def write_overlay_video(
    frames: Any,
    maps: Mapping[str, Any],
    path: str | Path,
    fps: float = 8,
    captions: str | Sequence[str] | None = None,
    *,
    mode: Mode | Mapping[str, Mode] = "signed",
    cmap: Any = None,
    alpha: float = 0.85,
    weight_gamma: float = 0.5,
    min_height: int = 224,
    codec: str | None = None,
    curves: Mapping[str, Sequence[Any]] | None = None,
    motion: Sequence[bool] | None = None,
) -> Path:
    """Write :func:`overlay_clip_frames` as a video (``.mp4``, ``.avi`` or ``.gif``, see
    :class:`~motion_relevance.viz.video_writer.VideoWriter`), streaming frame by frame; ``curves``/``motion``
    add the per-frame relevance strip under the frames (:func:`iter_overlay_frames`). Returns the path."""
    composed = iter_overlay_frames(
        frames, maps, captions, mode=mode, cmap=cmap, alpha=alpha, weight_gamma=weight_gamma, min_height=min_height,
        curves=curves, motion=motion,
    )
    with VideoWriter(path, fps, codec=codec) as vw:
        vw.write_all(composed)
    return Path(path)
