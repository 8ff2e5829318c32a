"""The two-level (runs, then clips) percentile bootstrap of study tables, against a loop written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from motion_relevance.metrics.bootstrap import bootstrap_interval


def _loop_reference(groups, ratio, resamples, seed, level=0.95):
    """The same draws as the vectorised version (same generator calls), resampled with plain Python loops."""
    runs = []
    for g in groups:
        a = np.asarray(g, float)
        a = a.reshape(-1, 2) if ratio else a.reshape(-1)
        a = a[np.isfinite(a).all(1)] if ratio else a[np.isfinite(a)]
        if len(a):
            runs.append(a)
    sizes = [len(r) for r in runs]
    width = max(sizes)
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(runs), size=(resamples, len(runs)))
    u = rng.random((resamples, len(runs), width))
    stats = []
    for r in range(resamples):
        num = den = 0.0
        for j in range(len(runs)):
            run = runs[picked[r, j]]
            for k in range(len(run)):
                row = run[int(np.floor(u[r, j, k] * len(run)))]
                num += row[0] if ratio else row
                den += (row[0] + row[1]) if ratio else 1.0
        if den > 0:
            stats.append(num / den)
    alpha = (1 - level) / 2
    return np.quantile(stats, [alpha, 1 - alpha])


@pytest.mark.parametrize("ratio", [False, True])
def test_matches_hand_written_loops(ratio):
    rng = np.random.default_rng(3)
    if ratio:
        groups = [rng.random((n, 2)) for n in (5, 9, 7)]
    else:
        groups = [rng.normal(m, 1.0, n) for m, n in ((0.0, 5), (1.0, 9), (3.0, 7))]
    est = bootstrap_interval(groups, ratio=ratio, resamples=300, seed=11)
    lo, hi = _loop_reference(groups, ratio, 300, 11)
    assert est.lo == pytest.approx(lo, abs=1e-12) and est.hi == pytest.approx(hi, abs=1e-12)
    rows = np.concatenate([np.asarray(g).reshape(-1, 2) if ratio else np.asarray(g) for g in groups])
    point = rows[:, 0].sum() / rows.sum() if ratio else rows.mean()
    assert est.mean == pytest.approx(point, abs=1e-12)
    assert est.n == len(rows)


def test_seeds_widen_the_interval():
    """Two runs that disagree: resampling the runs spans both; resampling the pooled clips would not."""
    a, b = np.zeros(30), np.ones(30)
    two_level = bootstrap_interval([a, b], resamples=2000, seed=0)
    pooled = bootstrap_interval([np.concatenate([a, b])], resamples=2000, seed=0)
    assert two_level.mean == pooled.mean == pytest.approx(0.5)
    assert two_level.lo == pytest.approx(0.0) and two_level.hi == pytest.approx(1.0)
    assert pooled.hi - pooled.lo < 0.4


def test_ratio_stays_in_unit_interval_and_handles_edge_cases():
    rng = np.random.default_rng(0)
    est = bootstrap_interval([rng.random((6, 2)) * [0.01, 1.0], rng.random((6, 2))], ratio=True, seed=1)
    assert 0.0 <= est.lo <= est.mean <= est.hi <= 1.0
    constant = bootstrap_interval([[0.25] * 4, [0.25] * 3])
    assert constant == (0.25, 0.25, 0.25, 7)
    assert bootstrap_interval([[np.nan], []]).n == 0
    one = bootstrap_interval([[0.5, np.nan]])
    assert one.mean == 0.5 and np.isnan(one.lo) and one.n == 1
    zero = bootstrap_interval([[[0.0, 0.0], [0.0, 0.0]]], ratio=True)
    assert np.isnan(zero.mean) and zero.n == 2
    assert bootstrap_interval([[1.0, 2.0, 3.0]], seed=4) == bootstrap_interval([[1.0, 2.0, 3.0]], seed=4)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        bootstrap_interval([[[-0.1, 1.0]]], ratio=True)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([[1.0, 2.0]], level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([[1.0, 2.0]], resamples=0)
