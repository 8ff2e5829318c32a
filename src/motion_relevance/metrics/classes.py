"""torchmetrics ``Metric`` classes for the explanation metrics (docs/method.md, "Metrics"): mean and std over
clips, exact under DDP.

Every class derives from :class:`~motion_relevance.metrics.stats.MeanStdMetric` (one base, one formula): four
sum-type states (``dist_reduce_fx="sum"``), each a vector with one entry per reported quantity: ``total`` and
``total_sq`` (float64), ``n`` (clips used) and ``n_undefined`` (clips whose value is undefined, e.g. an all-zero
explanation for precision — counted, never averaged). Summing these across processes gives exactly the one-process
numbers, so N processes on disjoint clips report what one process on all clips reports.

``compute()`` returns a flat dict, for each quantity ``q`` of the class::

    {f"{q}_mean", f"{q}_std", f"{q}_n", f"{q}_n_undefined"}

``std`` is the *sample* standard deviation over clips (ddof=1, as ``numpy.std(x, ddof=1)``); it is NaN with fewer
than 2 clips and ``mean`` is NaN with none. Quantities per class: ``MotionPrecision``: ``precision``;
``Selectivity``: ``area``, ``mass``; ``Agreement``: ``iou``; ``GroundTruthMetrics``: ``precision``, ``recall``,
``motion_share``, ``f1``; ``SpatialBias``: ``bias``; ``Overhead``: ``ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from motion_relevance.metrics import functional
from motion_relevance.metrics.stats import MeanStdMetric


def _check_mode(mode: str) -> str:
    if mode not in ("positive", "nonzero"):
        raise ValueError(f"mode must be 'positive' or 'nonzero', got {mode!r}")
    return mode


class MotionPrecision(MeanStdMetric):
    """Motion-selection precision ``|P(R) ∧ moves| / |P(R)|`` over frames with flow (docs/method.md, "Metrics";
    Table 1).

    ``update(relevance (B,C,T,H,W), moves (B,T,H,W) bool, valid_frames (B,T) bool | None)``.
    Clips with ``|P(R)| = 0`` on valid frames count in ``precision_n_undefined``. Skip clips without any flow
    (``valid_frames[b].any() == False``) before calling, or they are counted as undefined.
    """

    higher_is_better: ClassVar[bool | None] = True
    quantities: ClassVar[tuple[str, ...]] = ("precision",)

    def __init__(self, mode: str = "positive", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = _check_mode(mode)

    def update(self, relevance: Tensor, moves: Tensor, valid_frames: Tensor | None = None) -> None:
        self._accumulate("precision", *functional.motion_precision(relevance, moves, valid_frames, self.mode))


class Selectivity(MeanStdMetric):
    """Area ratio ``|P(R_sel)|/|P(R)|`` and mass ratio ``Σ R_sel⁺ / Σ R⁺`` (docs/method.md, "Metrics"; Table 3).

    ``update(relevance (B,C,T,H,W), selective (B,C,T,H,W))``. Quantities ``area`` and ``mass``.
    """

    quantities: ClassVar[tuple[str, ...]] = ("area", "mass")

    def __init__(self, mode: str = "positive", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = _check_mode(mode)

    def update(self, relevance: Tensor, selective: Tensor) -> None:
        area, mass, defined = functional.selectivity(relevance, selective, self.mode)
        self._accumulate("area", area, defined)
        self._accumulate("mass", mass, defined)


class Agreement(MeanStdMetric):
    """IoU of ``P(A)`` and ``P(B)`` of two explanations of the same clips (docs/method.md, "Metrics"; Table 2).

    Quantity ``iou``.
    """

    quantities: ClassVar[tuple[str, ...]] = ("iou",)

    def __init__(self, mode: str = "positive", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = _check_mode(mode)

    def update(self, a: Tensor, b: Tensor) -> None:
        self._accumulate("iou", *functional.agreement(a, b, self.mode))


class GroundTruthMetrics(MeanStdMetric):
    """Precision, recall, motion share and F1 of an explanation vs the true motion mask (docs/method.md,
    "Metrics"; synthetic data).

    ``update(relevance (B,C,T,H,W), mask (B,T,H,W) bool)``. Pass ``R`` for the baseline or ``R_sel`` for the
    selective map (its ``f1_mean`` is the sigma-sweep objective). Quantities ``precision``, ``recall``,
    ``motion_share``, ``f1`` (F1 in Dice form, see :func:`~motion_relevance.metrics.functional.f1`).
    """

    quantities: ClassVar[tuple[str, ...]] = ("precision", "recall", "motion_share", "f1")

    def __init__(self, mode: str = "positive", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = _check_mode(mode)

    def update(self, relevance: Tensor, mask: Tensor) -> None:
        precision, recall, p_def, r_def = functional.gt_precision_recall(relevance, mask, self.mode)
        self._accumulate("precision", precision, p_def)
        self._accumulate("recall", recall, r_def)
        self._accumulate("motion_share", *functional.motion_share(relevance, mask))
        self._accumulate("f1", *functional.f1(relevance, mask, self.mode))


class SpatialBias(MeanStdMetric):
    """Spatial bias ``1 - Σ R_sel⁺ / Σ R⁺`` of a model under a method (docs/method.md, "Metrics"). Quantity ``bias``.

    ``update(relevance (B,C,T,H,W), selective (B,C,T,H,W))``.
    """

    quantities: ClassVar[tuple[str, ...]] = ("bias",)

    def update(self, relevance: Tensor, selective: Tensor) -> None:
        self._accumulate("bias", *functional.spatial_bias(relevance, selective))


class PathwayShare(MeanStdMetric):
    """Share of a clip's positive relevance that one input pathway carries: ``Σ R⁺(pathway) / Σ R⁺(all)``.

    ``update(pathway (B, C, T, H, W), total (B,))`` with ``total`` the positive relevance of every pathway of the
    clip; clips with ``total == 0`` are undefined. Quantity ``share``.
    """

    quantities: ClassVar[tuple[str, ...]] = ("share",)

    def update(self, pathway: Tensor, total: Tensor) -> None:
        mass = functional.positive_relevance(pathway).flatten(1).sum(1).double()
        total = total.double().to(mass.device)
        defined = total > 0
        self._accumulate("share", torch.where(defined, mass / total.clamp_min(1e-300), torch.nan), defined)


class TemporalShare(MeanStdMetric):
    """Share of the relevance AttnLRP passes through a video transformer's attention products that crosses frames
    (``explain.temporal_flow.temporal_share``; docs/method.md, "How much relevance flows through time").

    ``update(share (B,))`` with one value in ``[0, 1]`` per clip; NaN (a clip served from the attribution cache,
    whose explanation was not recomputed) counts as undefined. Quantity ``share``.
    """

    quantities: ClassVar[tuple[str, ...]] = ("share",)

    def update(self, share: Tensor) -> None:
        v = torch.as_tensor(share, dtype=torch.float64).reshape(-1)
        self._accumulate("share", v, torch.isfinite(v))


class Overhead(MeanStdMetric):
    """Wall time per clip in ms (docs/method.md, "Metrics"; Table 4), fed with measured times
    (see :class:`OverheadTimer`).

    ``update(ms)`` with a number or a 1-D sequence/tensor of per-clip times. When timing a batch of ``B`` clips,
    pass one time per clip (``batch_ms / B``), or time with batch size 1 for the paper's table. Non-finite
    times count as undefined. Quantity ``ms``.
    """

    higher_is_better: ClassVar[bool | None] = False
    quantities: ClassVar[tuple[str, ...]] = ("ms",)

    def update(self, ms: Tensor | float | Sequence[float]) -> None:
        t = torch.as_tensor(ms, dtype=torch.float64).reshape(-1)
        self._accumulate("ms", t, torch.isfinite(t))


__all__ = ["Agreement", "GroundTruthMetrics", "MotionPrecision", "Overhead", "PathwayShare", "Selectivity",
           "SpatialBias", "TemporalShare"]
