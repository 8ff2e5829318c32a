"""Relevance → colour: channel reduction, per-clip normalisation, colour maps and alpha blending.

Conventions: relevance maps are ``(T, H, W)`` (or ``(H, W)``) after :func:`channel_sum`; pixel methods give
``(C, T, H, W)`` and are summed over ``C`` first (docs/method.md, "Selective relevance"). Colour images are
``uint8`` RGB with a trailing axis of 3. Normalisation is per clip: one ``vmax`` (the largest ``|value|`` over
all ``T`` frames, or the caller's ``vmax``) for the whole clip, so intensities are comparable over time. An
all-zero clip normalises to zeros (the neutral colour), never NaN.

Modes: ``"signed"`` maps ``[-vmax, vmax]`` through a diverging map (default ``"bwr"``: blue negative, white 0,
red positive, as in the LRP literature); ``"positive"`` keeps ``max(R, 0)`` and maps ``[0, vmax]`` through a
sequential map (default ``"inferno"``; 0 → black).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np

Mode = Literal["signed", "positive"]

DEFAULT_CMAPS: dict[str, str] = {"signed": "bwr", "positive": "inferno"}
_LUT_SIZE = 257

__all__ = [
    "DEFAULT_CMAPS",
    "blend",
    "channel_sum",
    "colorize",
    "grey_frames",
    "normalize_relevance",
    "relevance_to_heatmap",
    "to_numpy",
]


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, torch tensor on any device/dtype, or nested sequence)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()  # bf16/fp16 → fp32 (numpy has no bf16)
        return x.numpy()
    return np.asarray(x)


def channel_sum(relevance: Any, *, map_ndim: int = 3) -> np.ndarray:
    """Sum a relevance tensor over its leading channel axis if it has one.

    ``relevance`` with ``map_ndim + 1`` dims (e.g. ``(C, T, H, W)`` for ``map_ndim=3``) is summed over axis 0;
    with ``map_ndim`` dims (e.g. ``(T, H, W)``) it is returned as float32. Anything else raises ``ValueError``.
    """
    r = to_numpy(relevance)
    if r.ndim == map_ndim + 1:
        r = r.sum(axis=0)
    elif r.ndim != map_ndim:
        raise ValueError(
            f"relevance must have {map_ndim} dims (map) or {map_ndim + 1} dims (channels first), got shape {r.shape}"
        )
    return np.asarray(r, dtype=np.float32)


def normalize_relevance(relevance: Any, *, mode: Mode = "signed", vmax: float | None = None) -> np.ndarray:
    """Scale a relevance map (any shape, already channel-summed) by one clip-wide ``vmax``.

    Returns float32 of the same shape: in ``[-1, 1]`` for ``mode="signed"``, in ``[0, 1]`` for
    ``mode="positive"`` (negative values clipped to 0). ``vmax=None`` uses ``max |R|`` (signed) or ``max R⁺``
    (positive). NaN/inf inputs are treated as 0; a zero ``vmax`` gives all zeros (never NaN).
    """
    if mode not in ("signed", "positive"):
        raise ValueError(f"mode must be 'signed' or 'positive', got {mode!r}")
    r = np.nan_to_num(np.asarray(to_numpy(relevance), dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "positive":
        r = np.maximum(r, 0.0)
    if vmax is None:
        vmax = float(np.abs(r).max()) if r.size else 0.0
    vmax = float(vmax)
    if not np.isfinite(vmax) or vmax <= 0.0:
        return np.zeros_like(r)
    lo = -1.0 if mode == "signed" else 0.0
    return np.clip(r / vmax, lo, 1.0).astype(np.float32)


@lru_cache(maxsize=32)
def _lut(cmap_name: str) -> np.ndarray:
    import matplotlib  # deferred: matplotlib, slow to import

    return _lut_for(matplotlib.colormaps[cmap_name])


def _lut_for(cmap: Any) -> np.ndarray:
    if isinstance(cmap, str):
        return _lut(cmap)
    # a matplotlib Colormap object: resample (exact for segment-defined maps such as bwr/seismic: white centre)
    cm = cmap.resampled(_LUT_SIZE) if hasattr(cmap, "resampled") else cmap
    rgb = np.asarray(cm(np.linspace(0.0, 1.0, _LUT_SIZE)))[:, :3]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, cmap: Any) -> np.ndarray:
    """Map values in ``[0, 1]`` (any shape ``S``) to ``uint8`` RGB ``S + (3,)`` through a 257-entry LUT (odd, so
    0.5 — zero relevance in signed mode — hits the colour map's exact centre)."""
    idx = np.clip(np.rint(np.asarray(values, dtype=np.float32) * (_LUT_SIZE - 1)), 0, _LUT_SIZE - 1).astype(np.intp)
    return _lut_for(cmap)[idx]


def relevance_to_heatmap(
    relevance: Any,
    *,
    mode: Mode = "signed",
    vmax: float | None = None,
    cmap: Any = None,
) -> np.ndarray:
    """Colour a relevance map: ``(T, H, W)`` or ``(H, W)``, or ``(C, T, H, W)`` (summed over ``C`` first).

    Normalised per clip (see :func:`normalize_relevance`), then coloured: signed mode → ``cmap`` (default
    ``"bwr"``) with 0 at the centre (white), ``+vmax`` red, ``-vmax`` blue; positive mode → ``cmap`` (default
    ``"inferno"``) with 0 black and ``vmax`` the brightest colour. Returns ``uint8`` ``(T, H, W, 3)`` RGB
    (``(H, W, 3)`` for a single map). An all-zero map is uniformly the neutral colour.
    """
    r = to_numpy(relevance)
    if r.ndim == 4:
        r = channel_sum(r, map_ndim=3)
    elif r.ndim not in (2, 3):
        raise ValueError(f"relevance must be (H, W), (T, H, W) or (C, T, H, W), got shape {r.shape}")
    n = normalize_relevance(r, mode=mode, vmax=vmax)
    cmap = DEFAULT_CMAPS[mode] if cmap is None else cmap
    values = (n + 1.0) * 0.5 if mode == "signed" else n
    return colorize(values, cmap)


def grey_frames(frames: Any, *, strength: float = 1.0, fade: float = 0.0) -> np.ndarray:
    """Desaturate ``uint8`` RGB frames ``(..., H, W, 3)`` (``strength`` 1 = fully grey) and optionally fade
    them towards white by ``fade`` in ``[0, 1]``, so coloured heatmaps stand out. Returns ``uint8``, same shape."""
    f = to_numpy(frames).astype(np.float32)
    if f.shape[-1] != 3:
        raise ValueError(f"frames must be (..., H, W, 3) RGB, got shape {f.shape}")
    luma = f @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = f * (1.0 - strength) + luma[..., None] * strength
    if fade:
        out = out * (1.0 - fade) + 255.0 * fade
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def blend(frames: Any, heat: Any, alpha: float = 0.5, weight: Any = None) -> np.ndarray:
    """Alpha-blend a heatmap over frames: ``out = frame * (1 - a) + heat * a`` with ``a = alpha * weight``.

    ``frames`` and ``heat`` are ``uint8`` ``(..., H, W, 3)`` (broadcastable); ``weight`` is ``None`` (uniform
    alpha) or a per-pixel array ``(..., H, W)`` in ``[0, 1]`` (e.g. normalised ``|relevance|``) so that zero
    relevance leaves the plain frame visible. Returns ``uint8`` of the broadcast shape.
    """
    f = to_numpy(frames).astype(np.float32)
    h = to_numpy(heat).astype(np.float32)
    if f.shape[-1] != 3 or h.shape[-1] != 3:
        raise ValueError(f"frames and heat must end with an RGB axis of 3, got {f.shape} and {h.shape}")
    a: np.ndarray | float = float(alpha)
    if weight is not None:
        w = np.clip(np.nan_to_num(to_numpy(weight).astype(np.float32)), 0.0, 1.0)
        a = (a * w)[..., None]
    out = f * (1.0 - a) + h * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
