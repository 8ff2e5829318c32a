"""Motion reliance as a share in [0, 1]: the static-removed reference, the drops and the MotionReliance metric vs hand
computations on models with a known answer (one that reads only frame differences: share 1; one that reads only the
temporal mean: share 0), numpy, and the bootstrap's bounds, seeding and order invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from motion_relevance.metrics.faithfulness import motion_reliance, reference, static_removed
from motion_relevance.metrics.faithfulness.scoring import batch_bytes
from motion_relevance.metrics.faithfulness_metrics import MotionReliance
from motion_relevance.pipeline.tables import build_tables

SHAPE = (6, 3, 4, 5, 6)
CLASSES = 5


def make_clips(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Model(nn.Module):
    """Logits = W_a flatten(x.mean(T)) * a + W_m flatten(x[:, :, 1:] - x[:, :, :-1]) * m (no bias)."""

    def __init__(self, appearance: float, motion: float, seed: int = 3) -> None:
        super().__init__()
        _, c, t, h, w = SHAPE
        g = torch.Generator().manual_seed(seed)
        self.wa = torch.randn(c * h * w, CLASSES, generator=g, dtype=torch.float64) * appearance
        self.wm = torch.randn(c * (t - 1) * h * w, CLASSES, generator=g, dtype=torch.float64) * motion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(2).flatten(1) @ self.wa + (x[:, :, 1:] - x[:, :, :-1]).flatten(1) @ self.wm


def _score(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), 1).gather(1, target[:, None])[:, 0]


def _hand_static_removed(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    b, c, t, h, w = x.shape
    for i in range(b):
        for ch in range(c):
            clip_mean = x[i, ch].mean()
            for y in range(h):
                for z in range(w):
                    out[i, ch, :, y, z] = x[i, ch, :, y, z] - x[i, ch, :, y, z].mean() + clip_mean
    return out


def _share(dm: np.ndarray, da: np.ndarray) -> float:
    dm, da = np.clip(dm, 0, None), np.clip(da, 0, None)
    return float(dm.sum() / (dm + da).sum())


def test_static_removed_vs_a_hand_loop_and_its_decomposition():
    x = make_clips()
    got = static_removed(x)
    np.testing.assert_allclose(got.numpy(), _hand_static_removed(x.numpy()), rtol=0, atol=1e-12)
    # per channel: the appearance goes, the changes stay; freezing it leaves exactly the "mean" reference
    torch.testing.assert_close(got[:, :, 1:] - got[:, :, :-1], x[:, :, 1:] - x[:, :, :-1])
    torch.testing.assert_close(reference(got, "freeze"), reference(x, "mean"))
    torch.testing.assert_close(got.mean((2, 3, 4)), x.mean((2, 3, 4)))
    with pytest.raises(ValueError, match="clips"):
        static_removed(x[0])


@pytest.mark.parametrize(("appearance", "motion", "want"), [(0.0, 1.0, 1.0), (1.0, 0.0, 0.0)])
def test_known_answers(appearance, motion, want):
    """Frame differences only: freezing removes everything, removing appearance nothing (share 1); the temporal
    mean only: the reverse (share 0)."""
    x, model = make_clips(), Model(appearance, motion)
    with torch.no_grad():
        target = model(x).argmax(1)  # s(x) >= 1/K: the drop to a constant input is >= 0
    d = motion_reliance(model, x, target).double()
    assert d.shape == (SHAPE[0], 3)
    zero, lost = (1, 0) if want == 1.0 else (0, 1)
    torch.testing.assert_close(d[:, zero], torch.zeros(SHAPE[0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert (d[:, lost] > 1e-3).all()
    metric = MotionReliance()
    metric.update(d)
    out = metric.compute()
    assert out["share"].item() == pytest.approx(want, abs=1e-5)
    assert out["share_lo"].item() == pytest.approx(want, abs=1e-5)
    assert out["share_hi"].item() == pytest.approx(want, abs=1e-5)
    assert out["share_n"].item() == SHAPE[0]


def test_drops_and_share_vs_a_hand_computation():
    x, model = make_clips(1), Model(1.0, 0.7)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    d = motion_reliance(model, x, target).double()
    s = _score(model, x, target)
    frozen = x.mean(2, keepdim=True).expand_as(x)
    flat = torch.from_numpy(_hand_static_removed(x.numpy()))
    mean = x.mean((2, 3, 4), keepdim=True).expand_as(x)
    dm, da, d0 = (s - _score(model, r, target) for r in (frozen, flat, mean))
    torch.testing.assert_close(d, torch.stack([dm, da, d0], 1), atol=1e-6, rtol=1e-5)
    metric = MotionReliance()
    metric.update(d[:2])
    metric.update(d[2:])
    out = metric.compute()
    assert out["share"].item() == pytest.approx(_share(d[:, 0].numpy(), d[:, 1].numpy()), rel=1e-12)
    for name, col in (("freeze_drop", 0), ("static_drop", 1), ("mean_drop", 2)):
        assert out[f"{name}_mean"].item() == pytest.approx(d[:, col].mean().item(), rel=1e-12)
        assert out[f"{name}_std"].item() == pytest.approx(d[:, col].std().item(), rel=1e-9)


def test_bounds_interval_inside_and_containing_the_estimate():
    g = torch.Generator().manual_seed(7)
    for trial in range(20):
        d = torch.randn(25, 3, generator=g, dtype=torch.float64) * (0.1 + trial / 5)
        metric = MotionReliance(resamples=400, seed=trial)
        metric.update(d)
        out = metric.compute()
        share, lo, hi = (out[k].item() for k in ("share", "share_lo", "share_hi"))
        assert share == pytest.approx(_share(d[:, 0].numpy(), d[:, 1].numpy()), rel=1e-12)
        assert 0.0 <= lo <= share <= hi <= 1.0, (trial, lo, share, hi)
        clip = out["clip_share_mean"].item()
        assert 0.0 <= clip <= 1.0


def test_interval_vs_a_numpy_percentile_bootstrap():
    """The same resampled indices (the seeded generator, 256 resamples a draw) through numpy's percentile."""
    d = torch.rand(15, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    metric = MotionReliance(resamples=300, seed=5, level=0.9)
    metric.update(d)
    out = metric.compute()
    rows = np.array(sorted(map(tuple, d[:, :2].numpy())))  # sorted by (D_m+, D_a+)
    g = torch.Generator().manual_seed(5)
    idx = torch.cat([torch.randint(15, (256, 15), generator=g), torch.randint(15, (44, 15), generator=g)]).numpy()
    ratios = [rows[i, 0].sum() / rows[i].sum() for i in idx]
    lo, hi = np.percentile(ratios, [5, 95])
    assert out["share_lo"].item() == pytest.approx(lo, rel=1e-12)
    assert out["share_hi"].item() == pytest.approx(hi, rel=1e-12)


def test_seeded_reproducible_and_independent_of_the_clip_order():
    d = torch.randn(30, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64).abs()

    def interval(rows_list, seed=0):
        m = MotionReliance(seed=seed)
        for rows in rows_list:
            m.update(rows)
        out = m.compute()
        return out["share_lo"].item(), out["share_hi"].item()

    first = interval([d])
    assert interval([d]) == first
    assert interval([d[torch.randperm(30, generator=torch.Generator().manual_seed(1))]]) == first
    assert interval([d[20:], d[:7], d[7:20]]) == first  # DDP order: the interval is the one-process one
    assert interval([d], seed=1) != first


def test_undefined_when_both_drops_are_zero():
    zeros = torch.zeros(4, 3, dtype=torch.float64)
    zeros[:, 2] = 0.3
    m = MotionReliance()
    m.update(zeros)
    m.update(-torch.rand(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))  # clipped to 0
    out = m.compute()
    assert math.isnan(out["share"].item()) and math.isnan(out["share_lo"].item()) and math.isnan(out["share_hi"])
    assert out["share_n"].item() == 0 and out["share_n_undefined"].item() == 7
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(MotionReliance().compute()["share"].item())  # no clips
    one = MotionReliance()
    one.update(torch.tensor([[0.2, 0.1, 0.3], [0.0, 0.0, 0.0], [float("nan"), 0.1, 0.1]], dtype=torch.float64))
    out = one.compute()
    assert out["share"].item() == pytest.approx(2 / 3)  # the both-zero clip adds nothing, the NaN clip is dropped
    assert out["share_n"].item() == 1 and out["share_n_undefined"].item() == 2
    assert out["freeze_drop_n_undefined"].item() == 1


def test_bad_inputs():
    m = MotionReliance()
    with pytest.raises(ValueError, match=r"drops must have shape \(B, 3\)"):
        m.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="resamples=0"):
        MotionReliance(resamples=0)
    with pytest.raises(ValueError, match="seed=-1"):
        MotionReliance(seed=-1)
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"level={level}"):
            MotionReliance(level=level)


def test_memory_estimate_counts_the_static_removed_copy():
    plain = batch_bytes((3, 4, 5, 6), 4, 2, 3, 8)
    full = batch_bytes((3, 4, 5, 6), 4, 2, 3, 8, full_copy=True)
    assert full["clips"] - plain["clips"] == 2 * 3 * 4 * 5 * 6 * 4


def test_table_six_motion_reliance():
    metrics = {"test/motion_reliance/model": 0.4, "test/motion_reliance_lo/model": 0.3,
               "test/motion_reliance_hi/model": 0.5, "test/motion_reliance_n/model": 8.0,
               "test/full_freeze_drop/model": 0.2, "test/full_static_drop/model": 0.3,
               "test/full_mean_drop/model": 0.6}
    (row,) = build_tables(metrics)["table6_motion_reliance"]
    assert row["method"] == "model"
    assert (row["motion_reliance"], row["motion_reliance_lo"], row["motion_reliance_hi"]) == (0.4, 0.3, 0.5)
    assert row["motion_reliance_n"] == 8.0 and row["full_static_drop"] == 0.3
