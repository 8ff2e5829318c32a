"""Every metric class is exact under DDP: 2 gloo CPU processes on disjoint halves of 33 clips report what one
process reports on all 33 (docs/method.md, "Metrics"). Loopback only."""

from __future__ import annotations

import torch

from motion_relevance.metrics import (
    Agreement,
    GroundTruthMetrics,
    MotionPrecision,
    Overhead,
    Selectivity,
    SpatialBias,
)
from tests._ddp import close, run_ddp

N_CLIPS, WORLD = 33, 2


def make_clips(n: int = N_CLIPS) -> dict[str, torch.Tensor]:
    """Deterministic synthetic clips; every 7th explanation is all zero (undefined precision)."""
    g = torch.Generator().manual_seed(1234)
    shape = (n, 3, 4, 6, 6)
    r = torch.randn(shape, generator=g, dtype=torch.float64) * (torch.rand(shape, generator=g) < 0.5)
    r[::7] = 0
    sel = r * (torch.rand((n, 1, 4, 6, 6), generator=g) < 0.4)
    other = torch.randn(shape, generator=g, dtype=torch.float64)
    moves = torch.rand((n, 4, 6, 6), generator=g) < 0.3
    valid = torch.ones((n, 4), dtype=torch.bool)
    valid[:, -1] = False
    gt = torch.rand((n, 4, 6, 6), generator=g) < 0.3
    ms = torch.rand(n, generator=g, dtype=torch.float64) * 100
    return {"r": r, "sel": sel, "other": other, "moves": moves, "valid": valid, "gt": gt, "ms": ms}


def make_metrics(**kw) -> dict:
    return {
        "precision": MotionPrecision(**kw),
        "precision_nonzero": MotionPrecision(mode="nonzero", **kw),
        "selectivity": Selectivity(**kw),
        "agreement": Agreement(**kw),
        "ground_truth": GroundTruthMetrics(**kw),
        "spatial_bias": SpatialBias(**kw),
        "overhead": Overhead(**kw),
    }


def run_metrics(metrics: dict, d: dict, idx: torch.Tensor, batch: int = 5) -> dict:
    for s in range(0, len(idx), batch):
        i = idx[s : s + batch]
        metrics["precision"].update(d["r"][i], d["moves"][i], d["valid"][i])
        metrics["precision_nonzero"].update(d["r"][i], d["moves"][i], d["valid"][i])
        metrics["selectivity"].update(d["r"][i], d["sel"][i])
        metrics["agreement"].update(d["r"][i], d["other"][i])
        metrics["ground_truth"].update(d["sel"][i], d["gt"][i])
        metrics["spatial_bias"].update(d["r"][i], d["sel"][i])
        metrics["overhead"].update(d["ms"][i])
    return {name: {k: v.item() for k, v in m.compute().items()} for name, m in metrics.items()}


def test_ddp_two_processes_equal_one_process(tmp_path):
    results = run_ddp(tmp_path, WORLD, N_CLIPS, (make_clips, make_metrics, run_metrics))
    single = results[0]["single"]
    assert single["precision"]["precision_n"] + single["precision"]["precision_n_undefined"] == N_CLIPS
    assert single["precision"]["precision_n_undefined"] == 5  # clips 0, 7, 14, 21, 28
    assert single["overhead"]["ms_n"] == N_CLIPS
    for res in results:
        assert res["single"] == single
        for name, stats in single.items():
            for key, want in stats.items():
                got = res["ddp"][name][key]
                assert close(got, want), (name, key, got, want)
