"""Selective relevance: keep the relevance that changes over time (``docs/method.md``, "Selective relevance").

For a relevance tensor ``R`` of shape ``(B, C, T, H, W)``:

1. ``S = R.sum(C)``;
2. ``G = |h_t * S|`` with ``h_t`` the 3x3x3 Sobel kernel that differentiates along ``t`` and smooths along
   ``y`` and ``x`` (``h_t[0] = [[1,2,1],[2,4,2],[1,2,1]]``, ``h_t[1] = 0``, ``h_t[2] = -h_t[0]``), i.e.
   ``G[t] = |B(S[t-1]) - B(S[t+1])|`` with ``B`` the ``[1,2,1] x [1,2,1]`` spatial smoothing;
3. one voxel of padding on every side: ``"replicate"`` (default, static relevance in the first/last frame
   is not motion) or ``"zeros"`` (the authors' code);
4. ``mask = G > sigma * std(G)`` per clip (unbiased std over the clip's ``T*H*W`` voxels, strict ``>``);
   a clip whose ``G`` is constant gets an all-zero mask;
5. ``R_sel = R * mask`` (one mask for every channel).

Since ``B`` is linear, ``G = |B(S[t-1] - S[t+1])|``: on CPU a temporal difference of the padded ``S`` and four
shifted adds (``[1,2,1] = [1,1] * [1,1]`` per axis); on other devices (CUDA) one single-channel ``conv3d`` with
``h_t``, where one kernel launch beats a dozen small ones. Both give the same ``G``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from motion_relevance.checks import CLIP_LAYOUT, check_clips, check_unique

__all__ = [
    "DEFAULT_SIGMA",
    "PADDINGS",
    "SigmaTypeError",
    "check_padding",
    "check_sigma",
    "selective_mask",
    "selective_relevance",
    "temporal_gradient",
]

#: Padding names: ``"replicate"`` (the default) repeats edge voxels, ``"zeros"`` is the authors' code.
PADDINGS = ("replicate", "zeros")
#: The authors' threshold, in units of the clip's standard deviation of ``G``.
DEFAULT_SIGMA = 4.0

_SIGMA_RULE = "a non-negative number or a non-empty sequence of them (multiples of std(G), e.g. 4 or [1, 2, 3, 4])"


class SigmaTypeError(TypeError, ValueError):
    """A sigma that is not a number: a ``TypeError`` for code, and a ``ValueError`` like every other bad config
    value, so config validation catches one exception type."""


def check_sigma(sigma: float | Sequence[float] | Tensor) -> list[float]:
    """``sigma`` (a number, a sequence of numbers or a tensor of them) as a list of floats.

    Raises:
        SigmaTypeError: an entry is not a real number (strings and bools included).
        ValueError: an entry is negative or NaN, or the sequence is empty.
    """
    if isinstance(sigma, Tensor):
        values = sigma.flatten().tolist()
    elif _is_sequence(sigma):
        values = list(sigma)  # type: ignore[arg-type]
    else:
        values = [sigma]
    if not values:
        raise ValueError(f"selective.sigma must be {_SIGMA_RULE}, got an empty sequence {sigma!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SigmaTypeError(f"selective.sigma must be {_SIGMA_RULE}, got {sigma!r} (bad entry: {value!r})")
        if math.isnan(value) or value < 0:
            raise ValueError(f"selective.sigma must be {_SIGMA_RULE}, got {sigma!r} (bad entry: {value!r})")
    return [float(value) for value in check_unique("selective.sigma", values)]


def check_padding(padding: str) -> str:
    """``padding`` if it is one of :data:`PADDINGS`, else ``ValueError``."""
    if padding not in PADDINGS:
        raise ValueError(f"selective.padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def _is_sequence(sigma: object) -> bool:
    """Whether ``sigma`` asks for a leading sigma dimension (a sequence, or a tensor with at least one dim)."""
    if isinstance(sigma, Tensor):
        return sigma.dim() > 0
    return isinstance(sigma, Sequence) and not isinstance(sigma, str)


def _check_relevance(relevance: Tensor) -> None:
    if isinstance(relevance, Tensor) and relevance.dim() != 5:
        raise ValueError(
            f"relevance must have shape {CLIP_LAYOUT}, got {tuple(relevance.shape)}; "
            "add missing batch/channel dimensions with .unsqueeze(0) / .unsqueeze(1)"
        )
    if isinstance(relevance, Tensor) and not relevance.is_floating_point():
        raise TypeError(f"relevance must be a floating-point tensor, got {relevance.dtype}; convert with .float()")
    check_clips("relevance", relevance)  # the type and an empty dimension


def _non_finite(clip: int) -> ValueError:
    return ValueError(
        f"relevance of clip {clip} contains NaN or Inf; check the explainer's output "
        "(torch.isfinite(R).all()) before selective relevance"
    )


@functools.lru_cache(maxsize=8)
def _sobel_t(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``h_t`` as a conv3d weight ``(1, 1, 3, 3, 3)`` (conv3d is a cross-correlation; index 0 is ``t-1``)."""
    b = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    smooth = b[:, None] * b[None, :]
    return torch.stack([smooth, torch.zeros_like(smooth), -smooth]).view(1, 1, 3, 3, 3).to(device=device, dtype=dtype)


def _use_conv(device: torch.device) -> bool:
    """One ``conv3d`` on accelerators; shifted adds on CPU, where conv3d of one channel is the slow one."""
    return device.type != "cpu"


def _gradient(relevance: Tensor, padding: str) -> Tensor:
    """``G`` of ``relevance`` ``(B, C, T, H, W)`` as ``(B, 1, T, H, W)``, in float32 for half-precision input
    (else in its dtype). NaN/Inf in the relevance carry through to ``G``."""
    work = torch.promote_types(relevance.dtype, torch.float32)
    s = relevance.sum(1, keepdim=True, dtype=work)
    sp = F.pad(s, (1, 1, 1, 1, 1, 1), mode="replicate" if padding == "replicate" else "constant")
    if _use_conv(relevance.device):
        g = F.conv3d(sp, _sobel_t(work, relevance.device))
    else:
        d = sp[:, :, :-2] - sp[:, :, 2:]  # S[t-1] - S[t+1], still padded in H and W
        d = d[..., :-1, :] + d[..., 1:, :]
        d = d[..., :-1, :] + d[..., 1:, :]
        d = d[..., :-1] + d[..., 1:]
        g = d[..., :-1] + d[..., 1:]
    return g.abs_()


def _std(flat: Tensor) -> Tensor:
    """Unbiased std of each row of ``flat`` ``(B, N)`` as ``sqrt(m2 / (n - 1))``, ``m2`` the sum of squared deviations
    from the mean (two passes: the rounding of the reference, where ``norm / sqrt(n - 1)`` can land one ulp below a
    threshold that ``G`` hits exactly). NaN/Inf, or ``inf`` where ``m2`` overflows the dtype, are left to the caller."""
    n = flat.shape[-1]
    return (flat - flat.mean(-1, keepdim=True)).square_().sum(-1).div_(max(n - 1, 1)).sqrt_()


def _std_in_float64(flat: Tensor, std: Tensor) -> Tensor:
    """``std`` with its non-finite entries redone in float64 (``G**2`` overflowing float32 or half precision);
    ``ValueError`` naming the first clip that stays non-finite (NaN/Inf in its relevance)."""
    std = std.clone()
    for clip in (~torch.isfinite(std)).nonzero().flatten().tolist():
        wide = _std(flat[clip].double())
        if not bool(torch.isfinite(wide)):
            raise _non_finite(clip)
        std[clip] = wide
    return std


def _check_finite_if_g_ignores_it(relevance: Tensor, padding: str) -> None:
    """With zero padding and ``T == 1``, ``G = 0`` whatever ``R`` is, so NaN/Inf would not reach ``std(G)``."""
    if padding == "zeros" and relevance.shape[2] == 1:
        bad = ~torch.isfinite(relevance).flatten(1).all(1)
        if bool(bad.any()):
            raise _non_finite(int(bad.nonzero()[0, 0]))


def _selective(
    relevance: Tensor, sigma: float | Sequence[float] | Tensor, padding: str, apply: Callable[[Tensor], Tensor]
) -> Tensor:
    """``apply(mask)`` for the masks ``(S, B, 1, T, H, W)``, written as 0/1 in ``G``'s dtype (a float mask multiplies
    ``R`` faster than a bool one); without the leading ``S`` for a single sigma.

    The finiteness of the statistics is checked once, after ``apply`` is queued (on an accelerator a check in the
    middle would leave the device idle while the host queues the rest); if it fails, the masks are redone with the
    std in float64, or ``ValueError`` names the clip.
    """
    _check_relevance(relevance)
    check_padding(padding)
    sigmas = check_sigma(sigma)
    _check_finite_if_g_ignores_it(relevance, padding)
    g = _gradient(relevance, padding)
    flat = g.flatten(1)
    constant = flat.amax(1) <= flat.amin(1)  # exactly: rounding in the mean never turns a constant G into a mask
    limits = torch.tensor(sigmas, dtype=g.dtype, device=g.device).view(-1, 1, 1, 1, 1, 1)

    def masks(std: Tensor) -> Tensor:
        thresholds = (limits * std.view(-1, 1, 1, 1, 1)).masked_fill_(constant.view(-1, 1, 1, 1, 1), math.inf)
        return apply(torch.gt(g, thresholds, out=g.new_empty((len(sigmas), *g.shape))))

    std = _std(flat)
    out = masks(std)
    if not bool(torch.isfinite(std).all()):  # the one host sync
        out = masks(_std_in_float64(flat, std))
    return out if _is_sequence(sigma) else out[0]


def temporal_gradient(relevance: Tensor, *, padding: str = "replicate") -> Tensor:
    """Temporal edge map ``G = |h_t * R.sum(C)|``, shape ``(B, 1, T, H, W)``, ``G >= 0``, in the relevance's dtype.

    NaN/Inf in the relevance are carried into ``G``, not judged (selective relevance raises on them).

    Args:
        relevance: ``R`` of shape ``(B, C, T, H, W)``, floating point, any device.
        padding: ``"replicate"`` (default; repeats edge voxels) or ``"zeros"`` (the authors' code).
    """
    _check_relevance(relevance)
    check_padding(padding)
    return _gradient(relevance, padding).to(relevance.dtype)


def selective_mask(
    relevance: Tensor, sigma: float | Sequence[float] = DEFAULT_SIGMA, *, padding: str = "replicate"
) -> Tensor:
    """Boolean motion mask ``G > sigma * std(G)`` per clip.

    Returns ``(B, 1, T, H, W)`` bool, or ``(S, B, 1, T, H, W)`` for a sequence of ``S`` sigmas. Arguments and
    errors as :func:`selective_relevance`.
    """
    return _selective(relevance, sigma, padding, Tensor.bool)


def selective_relevance(
    relevance: Tensor, sigma: float | Sequence[float] = DEFAULT_SIGMA, *, padding: str = "replicate"
) -> Tensor:
    """Selective relevance ``R_sel = R * (G > sigma * std(G))``.

    Args:
        relevance: ``R`` of shape ``(B, C, T, H, W)`` (C = 3 for pixel methods, 1 for Grad-CAM-like maps),
            floating point, any device; half precision is computed in float32 and returned in its dtype.
        sigma: threshold in units of the clip's (unbiased) standard deviation of ``G``; a non-negative number
            or a sequence of them (then ``G`` is computed once and the result has a leading sigma dimension).
        padding: ``"replicate"`` (default) or ``"zeros"`` (the authors' code).

    Returns:
        ``(B, C, T, H, W)`` like ``relevance`` (``(S, B, C, T, H, W)`` for ``S`` sigmas): ``R`` where the mask is
        set, zero elsewhere. A clip whose ``G`` is constant (e.g. static relevance) comes back all zero.

    Raises:
        ValueError / TypeError: not 5-D, not floating point, a bad sigma (see :func:`check_sigma`), unknown
            padding, NaN/Inf in the relevance (the message names the clip).
    """
    return _selective(relevance, sigma, padding, lambda mask: relevance * mask.to(relevance.dtype))
