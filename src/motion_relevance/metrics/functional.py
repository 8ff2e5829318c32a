"""Per-clip metric functions (docs/method.md, "Metrics"). Plain torch; every function works on a batch and
returns ``(B,)`` tensors.

Shapes: explanations ``(B, C, T, H, W)``; masks ``(B, T, H, W)`` bool (``(B, 1, T, H, W)`` is accepted);
``valid_frames`` ``(B, T)`` bool. ``P(X) = X.sum(C) > 0`` (``mode="positive"``, default) or ``|X.sum(C)| > 0``
(``mode="nonzero"``). ``R⁺ = max(R.sum(C), 0)``.

A ratio whose denominator is 0 is *undefined*: its value is NaN and its ``defined`` flag False, so aggregators
count such clips separately instead of averaging them as 0 or 1 (docs/method.md, "Metrics").
"""

from __future__ import annotations

import torch
from torch import Tensor

from motion_relevance.checks import check_clips

_DIMS = (1, 2, 3)  # T, H, W of a (B, T, H, W) mask


def _mask(m: Tensor, name: str) -> Tensor:
    """(B, T, H, W) or (B, 1, T, H, W) → bool (B, T, H, W)."""
    if m.ndim == 5:
        if m.shape[1] != 1:
            raise ValueError(f"{name} must be (B, T, H, W) or (B, 1, T, H, W), got {tuple(m.shape)}")
        m = m[:, 0]
    if m.ndim != 4:
        raise ValueError(f"{name} must be (B, T, H, W) or (B, 1, T, H, W), got {tuple(m.shape)}")
    return m.bool()


def _ratio(num: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
    """num / den as float64, NaN where den == 0; plus the defined flag."""
    defined = den > 0
    num, den = num.double(), den.double()
    return torch.where(defined, num / den.clamp_min(1e-300), torch.full_like(num, float("nan"))), defined


def _count(m: Tensor) -> Tensor:
    return m.sum(dim=_DIMS)


def positive_relevance(x: Tensor) -> Tensor:
    """``R⁺ = max(X.sum(C), 0)`` → ``(B, T, H, W)`` float (same dtype as ``x``)."""
    check_clips("relevance", x, floating=False)
    return x.sum(dim=1).clamp_min(0)


def positive_mask(x: Tensor, mode: str = "positive") -> Tensor:
    """``P(X)``: ``X.sum(C) > 0`` (``"positive"``) or ``|X.sum(C)| > 0`` (``"nonzero"``) → bool ``(B, T, H, W)``."""
    check_clips("relevance", x, floating=False)
    s = x.sum(dim=1)
    if mode == "positive":
        return s > 0
    if mode == "nonzero":
        return s != 0
    raise ValueError(f"mode must be 'positive' or 'nonzero', got {mode!r}")


def motion_precision(
    relevance: Tensor, moves: Tensor, valid_frames: Tensor | None = None, mode: str = "positive"
) -> tuple[Tensor, Tensor]:
    """Motion-selection precision ``|P(R) ∧ moves| / |P(R)|`` over the frames with flow (docs/method.md,
    "Metrics"; Table 1).

    Args:
        relevance: ``(B, C, T, H, W)``.
        moves: bool ``(B, T, H, W)`` from the flow estimator.
        valid_frames: bool ``(B, T)``, frames that have flow (the last frame does not); None = all frames.
        mode: ``"positive"`` or ``"nonzero"`` (see :func:`positive_mask`).

    Returns:
        ``precision`` float64 ``(B,)`` (NaN where undefined) and ``defined`` bool ``(B,)`` (``|P(R)| > 0`` on valid
        frames).
    """
    p = positive_mask(relevance, mode)
    moves = _mask(moves, "moves")
    if valid_frames is not None:
        p = p & valid_frames.bool()[:, :, None, None]
    return _ratio(_count(p & moves), _count(p))


def selectivity(relevance: Tensor, selective: Tensor, mode: str = "positive") -> tuple[Tensor, Tensor, Tensor]:
    """Selectivity of selective relevance (docs/method.md, "Metrics"; Table 3).

    Returns:
        ``area_ratio = |P(R_sel)| / |P(R)|``, ``mass_ratio = Σ R_sel⁺ / Σ R⁺`` (float64 ``(B,)``) and ``defined``
        ``(B,)`` = ``|P(R)| > 0`` and ``Σ R⁺ > 0`` (the two coincide in ``"positive"`` mode); both ratios are NaN
        where undefined.
    """
    area, area_def = _ratio(_count(positive_mask(selective, mode)), _count(positive_mask(relevance, mode)))
    mass, mass_def = _ratio(
        positive_relevance(selective).double().sum(dim=_DIMS), positive_relevance(relevance).double().sum(dim=_DIMS)
    )
    defined = area_def & mass_def
    nan = torch.full_like(area, float("nan"))
    return torch.where(defined, area, nan), torch.where(defined, mass, nan), defined


def agreement(a: Tensor, b: Tensor, mode: str = "positive") -> tuple[Tensor, Tensor]:
    """Agreement of two explanations: IoU ``|P(A) ∧ P(B)| / |P(A) ∨ P(B)|`` (docs/method.md, "Metrics"; Table 2).

    Returns ``iou`` float64 ``(B,)`` (NaN where the union is empty) and ``defined`` ``(B,)``.
    """
    pa, pb = positive_mask(a, mode), positive_mask(b, mode)
    return _ratio(_count(pa & pb), _count(pa | pb))


def gt_precision_recall(
    relevance: Tensor, mask: Tensor, mode: str = "positive"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ground-truth precision ``|P(R) ∧ M| / |P(R)|`` and recall ``|P(R) ∧ M| / |M|`` (docs/method.md, "Metrics";
    synthetic data).

    Returns ``precision``, ``recall`` (float64 ``(B,)``, NaN where undefined), ``precision_defined``
    (``|P(R)| > 0``) and ``recall_defined`` (``|M| > 0``).
    """
    p, m = positive_mask(relevance, mode), _mask(mask, "mask")
    inter = _count(p & m)
    precision, p_def = _ratio(inter, _count(p))
    recall, r_def = _ratio(inter, _count(m))
    return precision, recall, p_def, r_def


def f1(relevance: Tensor, mask: Tensor, mode: str = "positive") -> tuple[Tensor, Tensor]:
    """F1 of ``P(R)`` vs the ground-truth mask ``M``: ``2|P ∧ M| / (|P| + |M|)`` (= 2pr/(p+r) when both exist).

    Pass the selective map ``R_sel`` to get the sigma-sweep objective. Written in Dice form so that an empty
    explanation of a clip with motion scores 0 (not undefined); undefined only when ``|P| + |M| = 0``.
    Returns ``f1`` float64 ``(B,)`` and ``defined`` ``(B,)``.
    """
    p, m = positive_mask(relevance, mode), _mask(mask, "mask")
    return _ratio(2 * _count(p & m), _count(p) + _count(m))


def motion_share(relevance: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Motion share ``Σ R⁺ inside M / Σ R⁺`` (docs/method.md, "Metrics"; synthetic data).

    Returns ``share`` float64 ``(B,)`` (NaN where undefined) and ``defined`` ``(B,)`` (``Σ R⁺ > 0``).
    """
    rp = positive_relevance(relevance).double()
    m = _mask(mask, "mask")
    return _ratio((rp * m).sum(dim=_DIMS), rp.sum(dim=_DIMS))


def spatial_bias(relevance: Tensor, selective: Tensor) -> tuple[Tensor, Tensor]:
    """Spatial bias ``1 - Σ R_sel⁺ / Σ R⁺``: the share of positive relevance selective relevance removes as static.

    Returns ``bias`` float64 ``(B,)`` (NaN where ``Σ R⁺ = 0``) and ``defined`` ``(B,)`` (docs/method.md, "Metrics").
    """
    mass, defined = _ratio(
        positive_relevance(selective).double().sum(dim=_DIMS), positive_relevance(relevance).double().sum(dim=_DIMS)
    )
    return 1.0 - mass, defined


__all__ = [
    "agreement",
    "f1",
    "gt_precision_recall",
    "motion_precision",
    "motion_share",
    "positive_mask",
    "positive_relevance",
    "selectivity",
    "spatial_bias",
]
