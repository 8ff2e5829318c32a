"""Functional metrics and torchmetrics classes vs independent numpy references (docs/method.md, "Metrics")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from motion_relevance.explain.timing import OverheadTimer
from motion_relevance.metrics import (
    Agreement,
    GroundTruthMetrics,
    MotionPrecision,
    Overhead,
    Selectivity,
    SpatialBias,
    agreement,
    f1,
    gt_precision_recall,
    motion_precision,
    motion_share,
    positive_mask,
    selectivity,
    spatial_bias,
)

# ----------------------------------------------------------------------------- numpy references


def np_p(x: np.ndarray, mode: str) -> np.ndarray:
    s = x.sum(axis=1)
    return s > 0 if mode == "positive" else np.abs(s) > 0


def np_div(a: float, b: float) -> float:
    return a / b if b else math.nan


def np_precision(r, moves, valid, mode):
    out = []
    for b in range(r.shape[0]):
        p = np_p(r[b : b + 1], mode)[0][valid[b]]
        out.append(np_div(float((p & moves[b][valid[b]]).sum()), float(p.sum())))
    return np.array(out)


def np_pos(x: np.ndarray) -> np.ndarray:
    return np.maximum(x.sum(axis=1), 0)


# ----------------------------------------------------------------------------- fixtures


def make_batch(seed: int = 0, b: int = 5, c: int = 3, t: int = 4, h: int = 5, w: int = 6):
    """Signed relevance with exact zeros, a selective version, masks; clip 0 is all-zero (undefined)."""
    g = np.random.default_rng(seed)
    r = g.normal(size=(b, c, t, h, w)) * (g.random((b, 1, t, h, w)) < 0.6)
    r[0] = 0.0
    sel = r * (g.random((b, 1, t, h, w)) < 0.4)
    moves = g.random((b, t, h, w)) < 0.3
    moves[:, -1] = False
    valid = np.ones((b, t), bool)
    valid[:, -1] = False
    gt = g.random((b, t, h, w)) < 0.25
    return r, sel, moves, valid, gt


T = torch.from_numpy


# ----------------------------------------------------------------------------- functional


def test_positive_mask_modes_hand_made():
    x = torch.zeros(1, 2, 1, 1, 4)
    x[0, :, 0, 0] = torch.tensor([[1.0, -1.0, -2.0, 0.0], [0.5, 1.0, 1.0, 0.0]])  # sums 1.5, 0, -1, 0
    assert positive_mask(x).flatten().tolist() == [True, False, False, False]
    assert positive_mask(x, "nonzero").flatten().tolist() == [True, False, True, False]
    with pytest.raises(ValueError):
        positive_mask(x, "abs")


def test_motion_precision_hand_made():
    # one clip, C=1, T=3 frames of 1x4; last frame invalid (no flow)
    r = torch.tensor([[[[[1.0, 1.0, -1.0, 0.0]], [[1.0, 0.0, 0.0, 2.0]], [[5.0, 5.0, 5.0, 5.0]]]]])
    moves = torch.tensor([[[[True, False, True, True]], [[False, False, False, True]], [[False] * 4]]])
    valid = torch.tensor([[True, True, False]])
    p, d = motion_precision(r, moves, valid)
    # P(R) on valid frames: frame0 {0,1}, frame1 {0,3} -> 4 voxels, moving: frame0 {0}, frame1 {3} -> 2
    assert d.tolist() == [True] and p.item() == pytest.approx(0.5)
    p, _ = motion_precision(r, moves, valid, mode="nonzero")  # adds frame0 voxel 2 (moving) -> 3/5
    assert p.item() == pytest.approx(3 / 5)


@pytest.mark.parametrize("mode", ["positive", "nonzero"])
def test_motion_precision_vs_numpy(mode):
    r, _, moves, valid, _ = make_batch(1)
    p, d = motion_precision(T(r), T(moves), T(valid), mode=mode)
    ref = np_precision(r, moves, valid, mode)
    assert d.tolist() == list(~np.isnan(ref))
    assert not d[0]  # all-zero explanation: undefined, not 0
    np.testing.assert_allclose(p.numpy(), ref, equal_nan=True)


@pytest.mark.parametrize("mode", ["positive", "nonzero"])
def test_selectivity_spatial_bias_vs_numpy(mode):
    r, sel, *_ = make_batch(2)
    area, mass, d = selectivity(T(r), T(sel), mode)
    bias, bd = spatial_bias(T(r), T(sel))
    for b in range(r.shape[0]):
        a_ref = np_div(np_p(sel[b : b + 1], mode).sum(), np_p(r[b : b + 1], mode).sum())
        m_ref = np_div(np_pos(sel[b : b + 1]).sum(), np_pos(r[b : b + 1]).sum())
        if b == 0:
            assert not d[b] and not bd[b] and math.isnan(area[b]) and math.isnan(mass[b])
            continue
        assert d[b] and bd[b]
        assert area[b].item() == pytest.approx(a_ref) and mass[b].item() == pytest.approx(m_ref)
        assert bias[b].item() == pytest.approx(1 - m_ref)


@pytest.mark.parametrize("mode", ["positive", "nonzero"])
def test_agreement_vs_numpy(mode):
    r, sel, *_ = make_batch(3)
    other = np.flip(r, axis=-1).copy()
    iou, d = agreement(T(r), T(other), mode)
    for b in range(r.shape[0]):
        pa, pb = np_p(r[b : b + 1], mode), np_p(other[b : b + 1], mode)
        ref = np_div((pa & pb).sum(), (pa | pb).sum())
        assert d[b].item() == (not math.isnan(ref))
        if d[b]:
            assert iou[b].item() == pytest.approx(ref)
    assert agreement(T(r), T(r), mode)[0][1:].tolist() == [1.0] * 4


@pytest.mark.parametrize("mode", ["positive", "nonzero"])
def test_ground_truth_vs_numpy(mode):
    r, sel, _, _, gt = make_batch(4)
    gt[1] = False  # empty mask: recall undefined
    prec, rec, pd, rd = gt_precision_recall(T(r), T(gt), mode)
    share, sd = motion_share(T(r), T(gt))
    f, fd = f1(T(sel), T(gt), mode)
    for b in range(r.shape[0]):
        p, m = np_p(r[b : b + 1], mode)[0], gt[b]
        p_ref, r_ref = np_div((p & m).sum(), p.sum()), np_div((p & m).sum(), m.sum())
        s_ref = np_div((np_pos(r[b : b + 1])[0] * m).sum(), np_pos(r[b : b + 1]).sum())
        ps = np_p(sel[b : b + 1], mode)[0]
        sp, sr = np_div((ps & m).sum(), ps.sum()), np_div((ps & m).sum(), m.sum())
        f_ref = 2 * sp * sr / (sp + sr) if (sp + sr) > 0 else 0.0  # textbook F1 where p and r exist
        for got, flag, ref in ((prec, pd, p_ref), (rec, rd, r_ref), (share, sd, s_ref)):
            assert flag[b].item() == (not math.isnan(ref))
            if flag[b]:
                assert got[b].item() == pytest.approx(ref)
        if not (math.isnan(sp) or math.isnan(sr)):
            assert fd[b] and f[b].item() == pytest.approx(f_ref)
    assert not pd[0] and not rd[1]
    # empty explanation, non-empty mask: F1 is 0 (defined), not undefined
    assert fd[0] and f[0].item() == 0.0


def test_mask_shapes_accepted_and_checked():
    r, _, moves, valid, _ = make_batch(5)
    a, _ = motion_precision(T(r), T(moves), T(valid))
    b, _ = motion_precision(T(r), T(moves)[:, None], T(valid))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError):
        motion_precision(T(r)[0], T(moves), T(valid))


# ----------------------------------------------------------------------------- classes


def np_stats(values: list[float]) -> tuple[float, float, int, int]:
    v = np.array(values, dtype=np.float64)
    ok = ~np.isnan(v)
    return v[ok].mean(), v[ok].std(ddof=1), int(ok.sum()), int((~ok).sum())


def check(out: dict, q: str, values: list[float]) -> None:
    mean, std, n, nu = np_stats(values)
    assert out[f"{q}_mean"].item() == pytest.approx(mean, rel=1e-10)
    assert out[f"{q}_std"].item() == pytest.approx(std, rel=1e-8)
    assert out[f"{q}_n"].item() == n and out[f"{q}_n_undefined"].item() == nu


@pytest.mark.parametrize("mode", ["positive", "nonzero"])
def test_classes_aggregate_over_updates_vs_numpy(mode):
    metrics = {
        "prec": MotionPrecision(mode),
        "sel": Selectivity(mode),
        "agr": Agreement(mode),
        "gt": GroundTruthMetrics(mode),
        "bias": SpatialBias(),
    }
    vals: dict[str, list[float]] = {k: [] for k in ("p", "a", "m", "i", "gp", "gr", "gs", "gf", "b")}
    for seed in range(4):  # several update() calls of different batches
        r, sel, moves, valid, gt = make_batch(10 + seed, b=3 + seed)
        metrics["prec"].update(T(r), T(moves), T(valid))
        metrics["sel"].update(T(r), T(sel))
        metrics["agr"].update(T(r), T(sel))
        metrics["gt"].update(T(sel), T(gt))
        metrics["bias"].update(T(r), T(sel))
        vals["p"] += list(np_precision(r, moves, valid, mode))
        for b in range(r.shape[0]):
            rb, sb = r[b : b + 1], sel[b : b + 1]
            pr, ps, m = np_p(rb, mode)[0], np_p(sb, mode)[0], gt[b]
            ok = pr.sum() > 0 and np_pos(rb).sum() > 0
            vals["a"].append(ps.sum() / pr.sum() if ok else math.nan)
            mass = np_pos(sb).sum() / np_pos(rb).sum() if ok else math.nan
            vals["m"].append(mass)
            vals["b"].append(np_div(np_pos(sb).sum(), np_pos(rb).sum()))
            vals["b"][-1] = 1 - vals["b"][-1]
            vals["i"].append(np_div((pr & ps).sum(), (pr | ps).sum()))
            vals["gp"].append(np_div((ps & m).sum(), ps.sum()))
            vals["gr"].append(np_div((ps & m).sum(), m.sum()))
            vals["gs"].append(np_div((np_pos(sb)[0] * m).sum(), np_pos(sb).sum()))
            vals["gf"].append(np_div(2 * (ps & m).sum(), ps.sum() + m.sum()))
    out = {k: m.compute() for k, m in metrics.items()}
    check(out["prec"], "precision", vals["p"])
    assert out["prec"]["precision_n_undefined"] == 4  # one all-zero clip per batch
    check(out["sel"], "area", vals["a"])
    check(out["sel"], "mass", vals["m"])
    check(out["agr"], "iou", vals["i"])
    check(out["gt"], "precision", vals["gp"])
    check(out["gt"], "recall", vals["gr"])
    check(out["gt"], "motion_share", vals["gs"])
    check(out["gt"], "f1", vals["gf"])
    check(out["bias"], "bias", vals["b"])
    assert set(out["gt"]) == {
        f"{q}_{s}" for q in GroundTruthMetrics.quantities for s in ("mean", "std", "n", "n_undefined")
    }


def test_empty_and_single_clip_stats_are_nan_not_crash():
    m = Overhead()
    with pytest.warns(UserWarning):  # torchmetrics warns about compute before update
        out = m.compute()
    assert math.isnan(out["ms_mean"]) and math.isnan(out["ms_std"]) and out["ms_n"] == 0
    m.update(3.0)
    out = m.compute()
    assert out["ms_mean"] == 3.0 and math.isnan(out["ms_std"]) and out["ms_n"] == 1


def test_overhead_and_timer():
    m = Overhead()
    times = [12.0, 15.5, float("nan"), 9.25]
    m.update(times[:2])
    m.update(torch.tensor(times[2:]))
    check(m.compute(), "ms", times)
    with OverheadTimer("cpu") as timer:
        sum(range(10000))
    assert 0.0 < timer.ms < 1000.0
    m.reset()
    m.update(timer.ms)
    assert m.compute()["ms_n"] == 1


def test_metrics_package_does_not_import_lightning_or_hydra():
    import subprocess
    import sys

    code = (
        "import sys, motion_relevance.metrics; "
        "bad=[m for m in sys.modules if m.split('.')[0] in ('lightning','pytorch_lightning','hydra')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
