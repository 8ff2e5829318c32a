"""torchmetrics classes for faithfulness and the randomisation sanity check: mean and std over clips, exact under DDP.

Feed them the per-clip values of :mod:`motion_relevance.metrics.faithfulness` and
:mod:`motion_relevance.metrics.randomization` (the functions need the model; the classes only reduce). They derive
from :class:`~motion_relevance.metrics.stats.MeanStdMetric` (the base and formula of every mean/std metric): every
state is a sum (``dist_reduce_fx="sum"``): per quantity the sum and the sum of squares of the defined per-clip values
(float64), the count of defined clips and the count of undefined ones (non-finite values, or clips a class defines
as undefined), held as one tensor with a quantity axis. Summing them across processes gives exactly the one-process
numbers, so N processes on disjoint clips report what one process on all clips reports.

``compute()`` returns a flat dict as :mod:`motion_relevance.metrics.classes` does, per quantity ``q``::

    {f"{q}_mean", f"{q}_std", f"{q}_n", f"{q}_n_undefined"}

with ``std`` the sample standard deviation over clips (ddof=1), NaN with fewer than 2 clips (``mean`` NaN with
none). Per-step curves and per-stage correlations come back as 1-D tensors under the same keys; the method is in
``docs/method.md``, "Faithfulness and sanity checks".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from motion_relevance.checks import check_int
from motion_relevance.metrics.faithfulness import curve_auc
from motion_relevance.metrics.randomization import RandomizationResult
from motion_relevance.metrics.stats import MeanStdMetric, mean_std

__all__ = [
    "DeletionAUC",
    "FaithfulnessCurves",
    "FreezeDrop",
    "InsertionAUC",
    "MotionReliance",
    "RandomizationCorrelation",
]


def _per_clip(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of per-clip values (B,), got {getattr(x, 'shape', x)}")
    return x


class FaithfulnessCurves(MeanStdMetric):
    """Deletion or insertion curves ``(B, steps + 1)`` of :func:`~motion_relevance.metrics.faithfulness.deletion_curve`
    (or the random floor, :func:`~motion_relevance.metrics.faithfulness.random_curve`): the AUC over clips and the
    mean curve per step, for plotting.

    ``update(curve)``. Quantities: ``auc`` (scalars) and ``curve`` (tensors ``(steps + 1,)``: mean and std of the
    score at each step over the clips). A clip with a non-finite score counts as undefined for ``auc`` and at that
    step. Keep one instance per method, reference and direction, and one fed with random curves for the floor.
    """

    quantities: ClassVar[tuple[str, ...]] = ("auc",)

    def __init__(self, steps: int = 10, **kwargs: Any) -> None:
        steps = check_int("steps", steps, 1)
        super().__init__(**kwargs)
        self.steps = steps
        self._add_moments("curve_", (steps + 1,))

    def update(self, curve: Tensor) -> None:
        if not isinstance(curve, Tensor) or curve.dim() != 2 or curve.shape[1] != self.steps + 1:
            raise ValueError(
                f"curve must have shape (B, steps + 1) = (B, {self.steps + 1}), got {getattr(curve, 'shape', curve)}"
            )
        c = curve.detach().to(self.total.device, torch.float64)
        self._accumulate(0, curve_auc(c))
        self._accumulate(0, c, prefix="curve_")

    def compute(self) -> dict[str, Tensor]:
        out = self._stats()
        mean, std = mean_std(self.curve_total, self.curve_total_sq, self.curve_n)
        out.update(curve_mean=mean, curve_std=std, curve_n=self.curve_n.clone(),
                   curve_n_undefined=self.curve_n_undefined.clone())
        return out


class DeletionAUC(FaithfulnessCurves):
    """:class:`FaithfulnessCurves` of deletion curves: lower is better (removing the marked voxels first hurts)."""

    higher_is_better: ClassVar[bool | None] = False


class InsertionAUC(FaithfulnessCurves):
    """:class:`FaithfulnessCurves` of insertion curves: higher is better (the marked voxels alone restore the score)."""

    higher_is_better: ClassVar[bool | None] = True


class FreezeDrop(MeanStdMetric):
    """Matched-budget freeze drops (:func:`~motion_relevance.metrics.faithfulness.matched_budget_drops`).

    ``update(selective, baseline, random, budget=None)`` with per-clip drops ``(B,)`` and the budget ``m`` ``(B,)``
    (voxels), e.g. ``metric.update(**matched_budget_drops(...))``. Quantities: ``selective``, ``baseline``,
    ``random`` (the three drops), the paired differences ``selective_minus_baseline`` and ``selective_minus_random``
    (their std is the spread of the per-clip advantage of selective relevance), and ``budget`` (``m``). A clip with
    ``m = 0`` (selective relevance keeps nothing: three zero drops) is undefined for the drops, not averaged as 0;
    its budget still counts.
    """

    higher_is_better: ClassVar[bool | None] = True
    quantities: ClassVar[tuple[str, ...]] = (
        "selective",
        "baseline",
        "random",
        "selective_minus_baseline",
        "selective_minus_random",
        "budget",
    )

    def update(self, selective: Tensor, baseline: Tensor, random: Tensor, budget: Tensor | None = None) -> None:
        sel, base, rnd = _per_clip("selective", selective), _per_clip("baseline", baseline), _per_clip("random", random)
        if not sel.shape == base.shape == rnd.shape:
            raise ValueError(
                f"drops must have one shape (B,), got {tuple(sel.shape)}, {tuple(base.shape)}, {tuple(rnd.shape)}"
            )
        defined = None
        if budget is not None:
            budget = _per_clip("budget", torch.as_tensor(budget))
            if budget.shape != sel.shape:
                raise ValueError(f"budget must have shape {tuple(sel.shape)} like the drops, got {tuple(budget.shape)}")
            defined = budget > 0
            self._accumulate(5, budget)
        for i, v in enumerate((sel, base, rnd, sel - base, sel - rnd)):
            self._accumulate(i, v, defined)


class MotionReliance(MeanStdMetric):
    """Motion reliance of a model (:func:`~motion_relevance.metrics.faithfulness.motion_reliance`).

    ``update(drops)`` with ``drops`` ``(B, 2)``: ``[s(x) - s(freeze(x)), s(x) - s(mean(x))]`` per clip. Quantities
    ``freeze_drop`` and ``mean_drop`` (mean/std/n/n_undefined), and the reliance ratio:

    * ``ratio`` = mean freeze drop / mean mean drop over the same clips: a **ratio of means**, not a mean of per-clip
      ratios. A clip whose mean drop is near 0 (the model barely reacts even when everything is removed) or negative
      would make its own ratio explode or flip sign and dominate a mean of ratios; the ratio of means weighs each clip
      by how much it can lose, is exact under DDP from the sums, and reads as "the share of the score the model loses
      without motion, relative to what it loses without anything". NaN when the mean mean-drop is <= 0 (nothing to
      take a share of) or there are no clips.
    * ``ratio_se``: its delta-method standard error, ``sqrt((v_f - 2 r c_fm + r^2 v_m) / n) / mean_m`` from the sample
      variances and covariance of the drops (NaN below 2 clips); ``ratio_n``: the clips used.
    """

    quantities: ClassVar[tuple[str, ...]] = ("freeze_drop", "mean_drop")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("cross", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("paired", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("paired_freeze", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("paired_mean", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("paired_freeze_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("paired_mean_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, drops: Tensor) -> None:
        if not isinstance(drops, Tensor) or drops.dim() != 2 or drops.shape[1] != 2:
            raise ValueError(
                f"drops must have shape (B, 2) (freeze drop, mean drop), got {getattr(drops, 'shape', drops)}"
            )
        d = drops.detach().to(self.total.device, torch.float64)
        self._accumulate(0, d[:, 0])
        self._accumulate(1, d[:, 1])
        ok = torch.isfinite(d).all(1)
        f, m = d[ok, 0], d[ok, 1]
        self.paired += ok.sum()
        self.paired_freeze += f.sum()
        self.paired_mean += m.sum()
        self.paired_freeze_sq += (f * f).sum()
        self.paired_mean_sq += (m * m).sum()
        self.cross += (f * m).sum()

    def compute(self) -> dict[str, Tensor]:
        out = self._stats()
        n = self.paired.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.cross.device)
        mf, mm = (self.paired_freeze / n, self.paired_mean / n) if self.paired > 0 else (nan, nan)
        ratio = mf / mm if self.paired > 0 and mm > 0 else nan
        se = nan
        if self.paired > 1 and mm > 0:
            vf = (self.paired_freeze_sq - n * mf * mf) / (n - 1)
            vm = (self.paired_mean_sq - n * mm * mm) / (n - 1)
            cfm = (self.cross - n * mf * mm) / (n - 1)
            se = ((vf - 2 * ratio * cfm + ratio * ratio * vm).clamp_min(0) / n).sqrt() / mm
        out.update(ratio=ratio, ratio_se=se, ratio_n=self.paired.clone())
        return out


class RandomizationCorrelation(MeanStdMetric):
    """Spearman correlations of a cascading randomisation per stage (:class:`RandomizationResult`).

    Built with the stage names (or their number); ``update(result)`` with a
    :class:`~motion_relevance.metrics.randomization.RandomizationResult`, or ``update(baseline, selective)`` with
    ``(S, B)`` correlations. Quantities ``baseline`` and ``selective``: every key is a tensor ``(S,)`` (mean, std,
    n and undefined count per stage over clips; NaN correlations, from constant maps, are undefined).
    """

    quantities: ClassVar[tuple[str, ...]] = ("baseline", "selective")

    def __init__(self, stages: int | Sequence[str], **kwargs: Any) -> None:
        if isinstance(stages, int) and not isinstance(stages, bool):
            names = [str(i) for i in range(stages)]
        elif isinstance(stages, Sequence) and not isinstance(stages, str):
            names = [str(s) for s in stages]
        else:
            raise ValueError(f"stages must be a number of stages or a list of stage names, got {stages!r}")
        if not names:
            raise ValueError("stages must not be empty")
        super().__init__(width=(len(names),), **kwargs)
        self.stage_names = names

    def update(self, baseline: Tensor | RandomizationResult, selective: Tensor | None = None) -> None:
        if isinstance(baseline, RandomizationResult):
            if baseline.stages != self.stage_names and self.stage_names != [
                str(i) for i in range(len(baseline.stages))
            ]:
                raise ValueError(f"result stages {baseline.stages} differ from this metric's {self.stage_names}")
            baseline, selective = baseline.baseline, baseline.selective
        s = len(self.stage_names)
        for name, v in (("baseline", baseline), ("selective", selective)):
            if not isinstance(v, Tensor) or v.dim() != 2 or v.shape[0] != s:
                raise ValueError(f"{name} must have shape (stages, B) = ({s}, B), got {getattr(v, 'shape', v)}")
        if baseline.shape != selective.shape:
            raise ValueError(f"baseline {tuple(baseline.shape)} and selective {tuple(selective.shape)} must match")
        self._accumulate(0, baseline.T)
        self._accumulate(1, selective.T)
