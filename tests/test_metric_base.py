"""One torchmetrics base for mean/std/undefined counts: every metric class's keys and values on fixed inputs against
a numpy reference (sample std, ddof=1; undefined values counted, never averaged), and the base's sum states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motion_relevance.metrics import functional
from motion_relevance.metrics.classes import (
    Agreement,
    GroundTruthMetrics,
    MotionPrecision,
    Overhead,
    PathwayShare,
    Selectivity,
    SpatialBias,
)
from motion_relevance.metrics.faithfulness_metrics import (
    DeletionAUC,
    FaithfulnessCurves,
    FreezeDrop,
    InsertionAUC,
    MotionReliance,
    RandomizationCorrelation,
)

STATS = ("mean", "std", "n", "n_undefined")


def ref(values, defined=None) -> dict[str, float]:
    """numpy reference over axis 0: mean, sample std, count of defined and of undefined values."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) if defined is None else np.isfinite(v) & np.asarray(defined, dtype=bool)
    kept = v[ok]
    return {
        "mean": float(kept.mean()) if kept.size else float("nan"),
        "std": float(kept.std(ddof=1)) if kept.size > 1 else float("nan"),
        "n": int(ok.sum()),
        "n_undefined": int((~ok).sum()),
    }


def check(out: dict, quantity: str, expected: dict) -> None:
    for stat in STATS:
        got = float(out[f"{quantity}_{stat}"])
        want = expected[stat]
        if np.isnan(want):
            assert np.isnan(got), f"{quantity}_{stat}: expected NaN, got {got}"
        else:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-12), f"{quantity}_{stat}"


def feed(metric, batches) -> dict:
    for args in batches:
        metric.update(*args)
    return metric.compute()


G = torch.Generator().manual_seed(7)
MS = [3.0, float("nan"), 5.5, 1.25, float("inf"), 8.0, 2.0]
DROPS = torch.tensor([0.3, -0.1, 0.5, float("nan"), 0.2, 0.0, 0.7], dtype=torch.float64)


def test_overhead_keys_and_values_vs_numpy():
    out = feed(Overhead(), [(MS[:3],), (torch.tensor(MS[3:]),)])
    assert sorted(out) == sorted(f"ms_{s}" for s in STATS)
    check(out, "ms", ref(MS))


def test_one_and_no_value():
    out = Overhead()
    out.update([4.0])
    r = out.compute()
    assert float(r["ms_mean"]) == 4.0 and np.isnan(float(r["ms_std"])) and int(r["ms_n"]) == 1
    empty = Overhead()
    with pytest.warns(UserWarning):
        r = empty.compute()
    assert np.isnan(float(r["ms_mean"])) and np.isnan(float(r["ms_std"])) and int(r["ms_n"]) == 0


def test_relevance_classes_vs_numpy():
    shape = (9, 3, 4, 5, 5)
    r = torch.randn(shape, generator=G, dtype=torch.float64) * (torch.rand(shape, generator=G) < 0.5)
    r[::4] = 0  # undefined clips
    sel = r * (torch.rand((9, 1, 4, 5, 5), generator=G) < 0.4)
    other = torch.randn(shape, generator=G, dtype=torch.float64)
    moves = torch.rand((9, 4, 5, 5), generator=G) < 0.3
    gt = torch.rand((9, 4, 5, 5), generator=G) < 0.3
    halves = (slice(0, 4), slice(4, 9))

    out = feed(MotionPrecision(), [(r[h], moves[h]) for h in halves])
    check(out, "precision", ref(*functional.motion_precision(r, moves, None, "positive")))
    area, mass, defined = functional.selectivity(r, sel, "positive")
    out = feed(Selectivity(), [(r[h], sel[h]) for h in halves])
    assert sorted(out) == sorted(f"{q}_{s}" for q in ("area", "mass") for s in STATS)
    check(out, "area", ref(area, defined))
    check(out, "mass", ref(mass, defined))
    iou = ref(*functional.agreement(r, other, "positive"))
    check(feed(Agreement(), [(r[h], other[h]) for h in halves]), "iou", iou)
    check(feed(SpatialBias(), [(r[h], sel[h]) for h in halves]), "bias", ref(*functional.spatial_bias(r, sel)))
    out = feed(GroundTruthMetrics(), [(sel[h], gt[h]) for h in halves])
    p, rc, pd, rd = functional.gt_precision_recall(sel, gt, "positive")
    check(out, "precision", ref(p, pd))
    check(out, "recall", ref(rc, rd))
    check(out, "motion_share", ref(*functional.motion_share(sel, gt)))
    check(out, "f1", ref(*functional.f1(sel, gt, "positive")))
    total = functional.positive_relevance(r).flatten(1).sum(1) + 1.0
    total[2] = 0
    share = functional.positive_relevance(sel).flatten(1).sum(1) / total
    check(feed(PathwayShare(), [(sel[h], total[h]) for h in halves]), "share", ref(share, total > 0))


def test_freeze_drop_vs_numpy():
    sel, base, rnd = DROPS, DROPS.flip(0) * 0.5, DROPS * DROPS
    budget = torch.tensor([3, 0, 5, 2, 0, 7, 1])
    m = FreezeDrop()
    m.update(sel[:3], base[:3], rnd[:3], budget[:3])
    m.update(sel[3:], base[3:], rnd[3:], budget[3:])
    out = m.compute()
    names = ("selective", "baseline", "random", "selective_minus_baseline", "selective_minus_random")
    assert sorted(out) == sorted(f"{q}_{s}" for q in (*names, "budget") for s in STATS)
    ok = (budget > 0).numpy()
    for name, v in zip(names, (sel, base, rnd, sel - base, sel - rnd)):
        check(out, name, ref(v, ok))
    check(out, "budget", ref(budget))


@pytest.mark.parametrize("cls", [FaithfulnessCurves, DeletionAUC, InsertionAUC])
def test_curves_vs_numpy(cls):
    curves = torch.rand((6, 5), generator=G, dtype=torch.float64)
    curves[2, 3] = float("nan")
    m = cls(4)
    m.update(curves[:2].float())
    m.update(curves[2:].float())
    out = m.compute()
    assert sorted(out) == sorted([*(f"auc_{s}" for s in STATS), *(f"curve_{s}" for s in STATS)])
    c = curves.float().double().numpy()
    auc = (c[:, 1:-1].sum(1) + 0.5 * (c[:, 0] + c[:, -1])) / 4
    check(out, "auc", ref(auc))
    for k in range(5):
        expected = ref(c[:, k])
        for stat in STATS:
            got, want = float(out[f"curve_{stat}"][k]), expected[stat]
            assert got == pytest.approx(want, rel=1e-6), (k, stat)


def test_motion_reliance_vs_numpy():
    d = torch.stack([DROPS, DROPS.flip(0) + 1.0, DROPS + 2.0], 1)
    m = MotionReliance()
    m.update(d[:4])
    m.update(d[4:])
    out = m.compute()
    quantities = ("freeze_drop", "static_drop", "mean_drop", "clip_share")
    assert sorted(out) == sorted([*(f"{q}_{s}" for q in quantities for s in STATS),
                                  "share", "share_lo", "share_hi", "share_n", "share_n_undefined"])
    check(out, "freeze_drop", ref(d[:, 0]))
    check(out, "static_drop", ref(d[:, 1]))
    check(out, "mean_drop", ref(d[:, 2]))
    x = d.numpy()[:, :2]
    x = np.clip(x[np.isfinite(x).all(1)], 0, None)
    assert float(out["share"]) == pytest.approx(x[:, 0].sum() / x.sum(), rel=1e-6)
    assert int(out["share_n"]) == int((x.sum(1) > 0).sum())


def test_randomization_correlation_vs_numpy():
    base = torch.rand((3, 5), generator=G, dtype=torch.float64) * 2 - 1
    sel = base.flip(1).clone()
    sel[1, 2] = float("nan")
    m = RandomizationCorrelation(["original", "fc", "conv"])
    m.update(base[:, :2], sel[:, :2])
    m.update(base[:, 2:], sel[:, 2:])
    out = m.compute()
    assert sorted(out) == sorted(f"{q}_{s}" for q in ("baseline", "selective") for s in STATS)
    for name, v in (("baseline", base), ("selective", sel)):
        for k in range(3):
            expected = ref(v[k])
            for stat in STATS:
                got, want = float(out[f"{name}_{stat}"][k]), expected[stat]
                assert got == pytest.approx(want, rel=1e-6, nan_ok=True), (name, k, stat)


@pytest.mark.parametrize(
    "metric",
    [Overhead(), Selectivity(), FreezeDrop(), MotionReliance(), FaithfulnessCurves(3), RandomizationCorrelation(2)],
)
def test_every_state_is_a_sum(metric):
    """DDP exactness rests on this: every state is reduced by summing (no mean, no cat, no custom merge) — except
    MotionReliance's per-clip rows for its bootstrap interval, the one cat state, whose order never matters (the
    rows are sorted before resampling; tests/test_faithfulness_ddp.py checks the DDP interval)."""
    assert metric._reductions
    for name, fx in metric._reductions.items():
        if isinstance(metric, MotionReliance) and name == "clip_drops":
            assert fx.__name__ == "dim_zero_cat" and getattr(metric, name) == []
            continue
        assert fx is not None and fx.__name__ in ("dim_zero_sum", "sum"), name
        state = getattr(metric, name)
        assert state.dtype in (torch.float64, torch.int64), (name, state.dtype)
