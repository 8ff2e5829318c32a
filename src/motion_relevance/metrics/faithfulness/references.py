"""The references that replace removed voxels (``freeze``, ``mean``, ``blur``) of a clip batch ``(B, C, T, H, W)``,
and :func:`static_removed`, the clip with its appearance removed and its changes kept (motion reliance)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from motion_relevance.checks import check_choice, check_clips, check_positive

__all__ = ["REFERENCES", "STATIC_REMOVED", "check_reference", "reference", "reference_compact", "static_removed"]

#: Reference kinds accepted by :func:`reference` and every function's ``reference`` argument.
REFERENCES: tuple[str, ...] = ("freeze", "mean", "blur")
#: Internal kind of :func:`reference_compact` for :func:`static_removed` (motion reliance only; not a configurable
#: removal reference, since it replaces every voxel by a value that keeps that voxel's temporal change).
STATIC_REMOVED = "static_removed"


def check_reference(kind: Any, blur_sigma: Any) -> tuple[str, float]:
    """``(kind, blur_sigma)`` checked: a kind of :data:`REFERENCES` and a positive finite std in pixels."""
    return check_choice("reference", kind, REFERENCES), float(check_positive("blur_sigma", blur_sigma))


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = math.ceil(3.0 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _blur(clips: Tensor, sigma: float) -> Tensor:
    """Separable spatial Gaussian blur of every frame, replicate padding, radius ``ceil(3 sigma)``."""
    b, c, t, h, w = clips.shape
    k = _gaussian_kernel(sigma, clips.dtype, clips.device)
    r = (k.numel() - 1) // 2
    x = clips.reshape(b * c * t, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(b, c, t, h, w)


def _static_removed(clips: Tensor) -> Tensor:
    return clips - clips.mean(2, keepdim=True) + clips.mean((2, 3, 4), keepdim=True)


def static_removed(clips: Tensor) -> Tensor:
    """The clip with its appearance removed and its changes kept, a new tensor ``(B, C, T, H, W)``:
    ``x - x.mean(T) + x.mean((T, H, W))``, **per channel** (the ``"mean"`` reference's per-channel mean).

    Every voxel keeps its deviation from its own temporal mean (what moves or changes) on a flat background of the
    channel's clip mean, so ``freeze(static_removed(x)) == mean(x)``: removing the motion of the static-removed clip
    leaves exactly the ``"mean"`` reference. It is the counterpart of ``freeze(x)`` (motion removed, appearance kept)
    in :func:`~motion_relevance.metrics.faithfulness.motion_reliance`.

    Raises:
        ValueError / TypeError: clips not a finite floating-point 5-D tensor.
    """
    check_clips("clips", clips, finite=True)
    return _static_removed(clips)


def reference_compact(clips: Tensor, kind: str, blur_sigma: float) -> Tensor:
    """The reference in a shape that broadcasts to the clips: ``(B,C,1,H,W)``, ``(B,C,1,1,1)`` or full
    (``blur`` and :data:`STATIC_REMOVED`)."""
    if kind == STATIC_REMOVED:
        return _static_removed(clips)
    if kind == "freeze":
        return clips.mean(2, keepdim=True)
    if kind == "mean":
        return clips.mean((2, 3, 4), keepdim=True)
    return _blur(clips, blur_sigma)


def reference(clips: Tensor, kind: str = "freeze", blur_sigma: float = 5.0) -> Tensor:
    """The reference that replaces removed voxels, a new tensor shaped like ``clips`` ``(B, C, T, H, W)``.

    Args:
        clips: ``(B, C, T, H, W)`` floating point (the model's normalised input).
        kind: ``"freeze"``: every frame is the clip's temporal mean, ``x_ref[:, :, t] = x.mean(T)`` (removes motion,
            keeps appearance); ``"mean"``: each channel's mean over the clip's ``T*H*W`` voxels (removes appearance
            and motion); ``"blur"``: each frame blurred spatially (H and W, never across time or channels) with a
            normalised Gaussian of standard deviation ``blur_sigma`` pixels, truncated at radius
            ``ceil(3 * blur_sigma)`` and applied separably with *replicate* padding (edge pixels repeated, which
            works for frames of any size, also smaller than the kernel; ``scipy.ndimage.gaussian_filter`` with
            ``mode="nearest"`` and that radius gives the same frames).
        blur_sigma: standard deviation of the blur in pixels (> 0); used by ``"blur"`` only, checked always.

    Raises:
        ValueError / TypeError: clips not a finite floating-point 5-D tensor, an unknown ``kind``, ``blur_sigma`` <= 0.
    """
    check_clips("clips", clips, finite=True)
    kind, sigma = check_reference(kind, blur_sigma)
    return reference_compact(clips, kind, sigma).expand_as(clips).contiguous()
