"""Percentile-bootstrap intervals over runs and clips, for tables that pool several seeds.

A study cell holds the per-clip values of several training runs (seeds). Resampling the pooled clips alone would
treat the seeds as one model and understate how much a second seed can differ; :func:`bootstrap_interval`
resamples in two levels instead: the runs with replacement, then the clips of each drawn run with replacement
(a hierarchical, or cluster, bootstrap). With one run it is the ordinary bootstrap over clips.

Two statistics: the mean of the values, or a ratio of sums (``sum a / sum (a + b)`` of two non-negative columns,
e.g. motion reliance, whose interval then lies in ``[0, 1]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from motion_relevance.checks import check_float, check_int

__all__ = ["Estimate", "bootstrap_interval"]


class Estimate(NamedTuple):
    """A point estimate with its interval and the number of values (clips, or runs) behind it."""

    mean: float
    lo: float
    hi: float
    n: int


def _groups(groups: Sequence[Sequence[float] | np.ndarray], ratio: bool) -> list[np.ndarray]:
    """Finite rows of each run (``(n,)`` values, or ``(n, 2)`` for a ratio); runs without any are dropped."""
    out = []
    for i, g in enumerate(groups):
        a = np.asarray(g, dtype=np.float64)
        if ratio:
            a = a.reshape(-1, 2)
            if (a[np.isfinite(a).all(1)] < 0).any():
                raise ValueError(f"groups[{i}]: a ratio of sums needs non-negative columns (clip the drops at 0)")
            a = a[np.isfinite(a).all(1)]
        else:
            a = a.reshape(-1)
            a = a[np.isfinite(a)]
        if len(a):
            out.append(a)
    return out


def _statistic(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_interval(
    groups: Sequence[Sequence[float] | np.ndarray],
    *,
    ratio: bool = False,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Point estimate and percentile-bootstrap interval of the values of ``groups`` (one sequence per run).

    ``ratio=False``: the mean of every finite value (runs weighted by their clips). ``ratio=True``: each group is
    ``(n, 2)`` rows ``(a, b)`` with ``a, b >= 0`` and the statistic is ``sum a / sum (a + b)`` (NaN where the sum is
    0; resamples with a zero denominator are left out of the interval). Non-finite values (rows) are dropped.
    Resampling draws the runs with replacement, then each drawn run's values with replacement (seeded, so the same
    input always gives the same interval). ``n``: the values behind the estimate. ``lo``/``hi`` are NaN with fewer
    than 2 values; everything is NaN (``n = 0``) with none.
    """
    resamples = check_int("resamples", resamples, 1)
    seed = check_int("seed", seed, 0)
    level = check_float("level", level, 0.0, 1.0)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r}: expected a coverage strictly between 0 and 1, e.g. 0.95")
    runs = _groups(groups, ratio)
    nan = float("nan")
    n = int(sum(len(g) for g in runs))
    if n == 0:
        return Estimate(nan, nan, nan, 0)
    rows = np.concatenate(runs)
    if ratio:
        num_all, den_all = rows[:, 0], rows.sum(1)
    else:
        num_all, den_all = rows, np.ones_like(rows)
    point = float(_statistic(np.asarray(num_all.sum()), np.asarray(den_all.sum())))
    if n < 2:
        return Estimate(point, nan, nan, n)
    sizes = np.array([len(g) for g in runs])
    width = int(sizes.max())
    num = np.zeros((len(runs), width))
    den = np.zeros((len(runs), width))
    for i, g in enumerate(runs):
        num[i, : len(g)] = g[:, 0] if ratio else g
        den[i, : len(g)] = g.sum(1) if ratio else 1.0
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(runs), size=(resamples, len(runs)))  # runs drawn per resample
    clips = np.floor(rng.random((resamples, len(runs), width)) * sizes[picked][..., None]).astype(np.int64)
    valid = np.arange(width)[None, None, :] < sizes[picked][..., None]  # a drawn run contributes its own size
    run_rows = picked[..., None]
    num_sum = np.where(valid, num[run_rows, clips], 0.0).sum((1, 2))
    den_sum = np.where(valid, den[run_rows, clips], 0.0).sum((1, 2))
    stats = _statistic(num_sum, den_sum)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Estimate(point, nan, nan, n)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return Estimate(point, float(lo), float(hi), n)
