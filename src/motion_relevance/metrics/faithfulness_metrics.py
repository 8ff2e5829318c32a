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

from motion_relevance.checks import check_float, check_int
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
    """Motion reliance of a model, a share in ``[0, 1]``
    (:func:`~motion_relevance.metrics.faithfulness.motion_reliance`).

    ``update(drops)`` with ``drops`` ``(B, 3)``: ``[D_m, D_a, D_0]`` per clip, ``D_m = s(x) - s(freeze(x))`` (motion
    removed), ``D_a = s(x) - s(static_removed(x))`` (appearance removed, changes kept), ``D_0 = s(x) - s(mean(x))``
    (everything removed). Quantities (mean/std/n/n_undefined over clips): ``freeze_drop``, ``static_drop``,
    ``mean_drop`` and ``clip_share`` (the per-clip share ``D_m+ / (D_m+ + D_a+)``, ``+`` = clipped at 0; undefined
    where both clipped drops are 0). The reported measure:

    * ``share`` = ``sum D_m+ / sum (D_m+ + D_a+)`` over the clips whose ``D_m`` and ``D_a`` are finite: a **ratio of
      means**, exact under DDP from the sums, always in ``[0, 1]``; it weighs each clip by how much it can lose.
      NaN when every clipped drop is 0 (the model loses nothing either way: nothing to take a share of) or there are
      no clips. ``share_n``: the clips whose share is defined; ``share_n_undefined``: the others.
    * ``share_lo`` / ``share_hi``: percentile bootstrap interval over clips (``resamples`` resamples of the clips
      with replacement under a generator seeded with ``seed``, ``level`` coverage, resamples whose denominator is 0
      skipped), inside ``[0, 1]`` since every resampled ratio is. It is computed at ``compute()`` from the per-clip
      clipped drops kept in the one list state ``clip_drops`` (``dist_reduce_fx="cat"``; as many rows as clips fed,
      bounded by the stage's ``num_clips``); the rows are sorted before resampling, so N processes on disjoint clips
      give the one-process interval exactly. NaN below 2 clips.
    """

    higher_is_better: ClassVar[bool | None] = None
    quantities: ClassVar[tuple[str, ...]] = ("freeze_drop", "static_drop", "mean_drop", "clip_share")

    def __init__(self, resamples: int = 1000, seed: int = 0, level: float = 0.95, **kwargs: Any) -> None:
        resamples = check_int("resamples", resamples, 1)
        seed = check_int("seed", seed, 0)
        level = check_float("level", level, 0.0, 1.0)
        if not 0.0 < level < 1.0:
            raise ValueError(f"level={level!r}: expected a coverage strictly between 0 and 1, e.g. 0.95")
        super().__init__(**kwargs)
        self.resamples, self.seed, self.level = resamples, seed, level
        self.add_state("share_num", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("share_den", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("share_clips", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("clip_drops", [], dist_reduce_fx="cat")

    def update(self, drops: Tensor) -> None:
        if not isinstance(drops, Tensor) or drops.dim() != 2 or drops.shape[1] != 3:
            raise ValueError(f"drops must have shape (B, 3) (freeze drop, static drop, mean drop), got "
                             f"{getattr(drops, 'shape', drops)}; feed motion_reliance(...)")
        d = drops.detach().to(self.total.device, torch.float64)
        for i in range(3):
            self._accumulate(i, d[:, i])
        ok = torch.isfinite(d[:, :2]).all(1)
        pos = torch.where(ok[:, None], d[:, :2].clamp_min(0), torch.zeros_like(d[:, :2]))
        den = pos.sum(1)
        self._accumulate(3, pos[:, 0] / den.where(den > 0, torch.ones_like(den)), ok & (den > 0))
        self.share_num += pos[:, 0].sum()
        self.share_den += den.sum()
        self.share_clips += ok.sum()
        self.clip_drops.append(pos[ok])

    def _interval(self) -> tuple[Tensor, Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.share_num.device)
        rows = self.clip_drops
        rows = (torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)) if isinstance(rows, list) \
            else rows
        n = rows.shape[0]
        if n < 2:
            return nan, nan
        rows = rows.cpu()
        order = torch.argsort(rows[:, 1], stable=True)  # sort by (D_m+, D_a+): independent of the clips' order
        rows = rows[order]
        rows = rows[torch.argsort(rows[:, 0], stable=True)]
        g = torch.Generator().manual_seed(self.seed)
        ratios = []
        for start in range(0, self.resamples, 256):
            k = min(256, self.resamples - start)
            idx = torch.randint(n, (k, n), generator=g)
            num, den = rows[:, 0][idx].sum(1), rows.sum(1)[idx].sum(1)
            ratios.append((num / den)[den > 0])
        r = torch.cat(ratios)
        if r.numel() == 0:
            return nan, nan
        alpha = (1.0 - self.level) / 2
        q = torch.quantile(r, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
        return q[0].to(nan.device), q[1].to(nan.device)

    def compute(self) -> dict[str, Tensor]:
        out = self._stats()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.share_num.device)
        share = self.share_num / self.share_den if self.share_den > 0 else nan
        lo, hi = self._interval()
        out.update(share=share, share_lo=lo, share_hi=hi, share_n=out["clip_share_n"],
                   share_n_undefined=out["clip_share_n_undefined"])
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
