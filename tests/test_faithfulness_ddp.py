"""The faithfulness and randomisation metric classes are exact under DDP: 2 gloo CPU processes on disjoint halves
of 33 clips report what one process reports on all 33. Loopback only."""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
from torch import nn

from motion_relevance.explain.selective import selective_relevance
from motion_relevance.metrics.faithfulness import (
    deletion_curve,
    matched_budget_drops,
    motion_reliance,
    random_curve,
)
from motion_relevance.metrics.faithfulness_metrics import (
    DeletionAUC,
    FaithfulnessCurves,
    FreezeDrop,
    InsertionAUC,
    MotionReliance,
    RandomizationCorrelation,
)
from motion_relevance.metrics.randomization import cascading_randomization
from tests._ddp import close, run_ddp

N_CLIPS, WORLD, STEPS = 33, 2, 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv3d(3, 2, 3, padding=1),
            relu=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(2 * 4 * 5 * 6, 6),
            relu2=nn.ReLU(),
            fc2=nn.Linear(6, 4),
        )
    ).double()


def _gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target.view(-1, 1)).sum(), x)
    return g


def per_clip_values() -> dict[str, torch.Tensor]:
    """Per-clip inputs of every metric, from the real functions; every 7th selective map is empty (m = 0)."""
    g = torch.Generator().manual_seed(1234)
    clips = torch.randn((N_CLIPS, 3, 4, 5, 6), generator=g, dtype=torch.float64)
    rel = torch.randn((N_CLIPS, 3, 4, 5, 6), generator=g, dtype=torch.float64)
    sel = rel * (torch.rand((N_CLIPS, 1, 4, 5, 6), generator=g) < 0.3)
    sel[::7] = 0
    model = _model()
    seeds = torch.arange(N_CLIPS) + 100  # per-clip seeds: the floor does not depend on the split
    drops = matched_budget_drops(model, clips, rel, sel, seed=seeds)
    rand = cascading_randomization(model, clips, _gradient, selective=functools.partial(selective_relevance, sigma=1.0))
    return {
        "deletion": deletion_curve(model, clips, rel, steps=STEPS),
        "insertion": deletion_curve(model, clips, rel, steps=STEPS, insertion=True, reference="blur"),
        "floor": random_curve(model, clips, steps=STEPS, seed=seeds),
        "sel": drops["selective"],
        "base": drops["baseline"],
        "rand": drops["random"],
        "budget": drops["budget"],
        "reliance": motion_reliance(model, clips),
        "corr_base": rand.baseline,
        "corr_sel": rand.selective,
    }


def make_metrics(**kw) -> dict:
    return {
        "deletion": DeletionAUC(steps=STEPS, **kw),
        "insertion": InsertionAUC(steps=STEPS, **kw),
        "floor": FaithfulnessCurves(steps=STEPS, **kw),
        "freeze": FreezeDrop(**kw),
        "reliance": MotionReliance(**kw),
        "randomization": RandomizationCorrelation(["original", "fc2", "fc1", "conv"], **kw),
    }


def _plain(v: torch.Tensor) -> float | list[float]:
    return v.tolist() if v.dim() else v.item()


def run_metrics(metrics: dict, d: dict, idx: torch.Tensor, batch: int = 5) -> dict:
    for s in range(0, len(idx), batch):
        i = idx[s : s + batch]
        metrics["deletion"].update(d["deletion"][i])
        metrics["insertion"].update(d["insertion"][i])
        metrics["floor"].update(d["floor"][i])
        metrics["freeze"].update(d["sel"][i], d["base"][i], d["rand"][i], d["budget"][i])
        metrics["reliance"].update(d["reliance"][i])
        metrics["randomization"].update(d["corr_base"][:, i], d["corr_sel"][:, i])
    return {name: {k: _plain(v) for k, v in m.compute().items()} for name, m in metrics.items()}


def test_ddp_two_processes_equal_one_process(tmp_path):
    results = run_ddp(tmp_path, WORLD, N_CLIPS, (per_clip_values, make_metrics, run_metrics))
    single = results[0]["single"]
    assert single["deletion"]["auc_n"] == N_CLIPS
    assert single["freeze"]["selective_n"] == N_CLIPS - 5  # clips 0, 7, 14, 21, 28 keep nothing
    assert single["freeze"]["selective_n_undefined"] == 5
    assert single["reliance"]["share_n"] + single["reliance"]["share_n_undefined"] == N_CLIPS
    assert single["reliance"]["share_n"] > N_CLIPS // 2
    assert 0 <= single["reliance"]["share_lo"] <= single["reliance"]["share"] <= single["reliance"]["share_hi"] <= 1
    n_rand = single["randomization"]
    assert [a + b for a, b in zip(n_rand["baseline_n"], n_rand["baseline_n_undefined"])] == [N_CLIPS] * 4
    for res in results:
        assert res["single"] == single
        for name, stats in single.items():
            for key, want in stats.items():
                got = res["ddp"][name][key]
                pairs = zip(got, want) if isinstance(want, list) else [(got, want)]
                assert all(close(a, b) for a, b in pairs), (name, key, got, want)
