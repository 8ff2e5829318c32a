"""Sigma sweeps: a 5-sigma sweep with a cold then warm attribution cache vs one job vs the single-job sigma list.

On a small trained C3D (motion_shapes, trained for a few batches: quality is irrelevant to cost), each measured
run is a full ``mr-explain`` job run in this process (data set-up, test loop, explainers, flow, selective metrics,
tables and figures), all four explainers, ``--clips`` test clips:

* ``single_cold``: one job, sigma 4, empty cache (what every sweep job costs without the cache);
* ``sweep_warm_jobs``: the other four sigmas (1, 2, 3, 5) as separate jobs, reading the cache the first filled;
* ``sweep_total`` = ``single_cold`` + ``sweep_warm_jobs`` (the 5-sigma sweep as ``mr-explain -m`` runs it with the
  basic launcher) and ``sweep_nocache`` = 5 x ``single_cold`` (the same sweep without a cache, estimated);
* ``multi_cold``: one job with ``selective.sigma=[1,2,3,4,5]``, empty cache.

Scenarios: the small C3D (16 clips) and the full C3D at 112 px (8 clips). Targets (issue 6):
``sweep_total <= 1.5 x single_cold`` and ``multi_cold <= 1.1 x single_cold``. Run:
``.venv/bin/python benchmarks/bench_sweeps.py`` -> ``benchmarks/results/bench_sweeps.{json,md}``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import write_results
from omegaconf import DictConfig

from motion_relevance.explain_app import explain
from motion_relevance.train import train
from motion_relevance.utils.compose import compose_config

DATA = [
    "data.generator.classes=[right,left,up,down]",
    "data.generator.videos_per_class=16",
    "data.generator.num_groups=4",
    "data.generator.test_groups=1",
    "data.num_workers=0",
    "data.index_threads=1",
    "data.val_fraction=0.34",
    "data.batch_size=8",
]


def _compose(name: str, overrides: list[str], out: Path) -> DictConfig:
    return compose_config(name, overrides, out)


#: Scenarios: the small C3D of the demo (explanations are cheap, per-job fixed costs dominate) and the full C3D
#: at 112 px (the paper's set-up: explanations dominate, which is what the cache removes).
SCENARIOS: dict[str, dict[str, Any]] = {
    "small": {"label": "small C3D (x0.125, 56 px)", "overrides": [], "clips": 16},
    "full": {
        "label": "full C3D (112 px)",
        "overrides": ["model=c3d", "data.generator.frame_size=[128,171]", "data.crop_size=112",
                      "data.generator.object_size=[24,36]", "data.generator.speed=[2.0,4.0]"],
        "clips": 8,
    },
}
#: The warm-up job fills the data-index and optical-flow caches with the cheapest explainer only.
WARMUP = ["~explainers.dtd", "~explainers.gbp", "~explainers.guided_gradcam", "objective.method=gradcam"]


def _job(work: Path, ckpt: Path, cache: Path, sigma: str, tag: str, clips: int,
         extra: list[str]) -> tuple[float, dict[str, Any]]:
    cfg = _compose("explain", [f"paths.data_dir={work}/data", f"paths.cache_dir={work}/cache", f"cache.dir={cache}",
                               f"ckpt_path={ckpt}", "logger=csv", "~callbacks.progress_bar", f"num_clips={clips}",
                               f"selective.sigma={sigma}", *DATA, *extra], work / "runs" / tag)
    start = time.perf_counter()
    metrics, _ = explain(cfg)
    return time.perf_counter() - start, metrics


def run_scenario(work: Path, name: str, clips: int) -> dict[str, Any]:
    """Train a checkpoint for two batches (its quality is irrelevant to cost), then time the jobs."""
    scenario = SCENARIOS[name]
    data_overrides = [o for o in scenario["overrides"] if o.startswith("data.")]
    work = work / name
    cfg = _compose("train", [f"paths.data_dir={work}/data", f"paths.cache_dir={work}/cache", "logger=csv",
                             "callbacks=default", "~callbacks.progress_bar", "trainer.max_epochs=1",
                             "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false",
                             *DATA, *scenario["overrides"]], work / "train")
    train(cfg)
    ckpt = work / "train" / "checkpoints" / "last.ckpt"
    _job(work, ckpt, work / "attr_warmup", "4", "warmup", clips, data_overrides + WARMUP)

    single_cold, m_single = _job(work, ckpt, work / "attr_sweep", "4", "single_cold", clips, data_overrides)
    warm, hits = [], []
    for sigma in ("1", "2", "3", "5"):
        seconds, metrics = _job(work, ckpt, work / "attr_sweep", sigma, f"warm_{sigma}", clips, data_overrides)
        warm.append(seconds)
        hits.append(float(metrics["test/cache_hits"]))
    multi_cold, m_multi = _job(work, ckpt, work / "attr_multi", "[1,2,3,4,5]", "multi_cold", clips, data_overrides)
    sweep_total = single_cold + sum(warm)
    return {
        "scenario": name,
        "model": scenario["label"],
        "clips": clips,
        "explainers": 4,
        "single_cold_s": single_cold,
        "warm_job_s": warm,
        "warm_job_mean_s": sum(warm) / len(warm),
        "warm_cache_hits": hits,
        "cold_cache_misses": float(m_single["test/cache_misses"]),
        "sweep_total_s": sweep_total,
        "sweep_nocache_estimate_s": 5 * single_cold,
        "sweep_over_single": sweep_total / single_cold,
        "multi_cold_s": multi_cold,
        "multi_over_single": multi_cold / single_cold,
        "cache_bytes": float(m_single["test/cache_bytes"]),
        "selective_ms_per_map": float(m_multi["test/overhead_ms/selective"]),
        "target_sweep_over_single": 1.5,
        "target_multi_over_single": 1.1,
    }


def _verdict(value: float, target: float) -> str:
    return f"{value:.2f} (target <= {target}: {'met' if value <= target else 'MISSED'})"


def to_markdown(runs: list[dict[str, Any]], threads: int) -> str:
    md = [
        "# bench_sweeps: a 5-sigma sweep, cold vs warm attribution cache, vs the single-job sigma list",
        "",
        f"4 explainers (DTD, Grad-CAM, GBP, Guided Grad-CAM), {threads} torch threads, whole `mr-explain` jobs in one "
        "process (as the basic launcher runs a multirun); data-index and flow caches warm, attribution cache cold "
        "for the first job. Alternative: the same sweep without the cache (5 cold jobs).",
        "",
        "| model | clips | one job (cold) s | warm job s | 5-sigma sweep s | sweep / one job | without cache s | "
        "sigma list job s | sigma list / one job |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        md.append(
            f"| {r['model']} | {r['clips']} | {r['single_cold_s']:.1f} | {r['warm_job_mean_s']:.1f} | "
            f"{r['sweep_total_s']:.1f} | {_verdict(r['sweep_over_single'], 1.5)} | "
            f"{r['sweep_nocache_estimate_s']:.1f} | {r['multi_cold_s']:.1f} | {_verdict(r['multi_over_single'], 1.1)} |"
        )
    md.append("")
    for r in runs:
        md.append(f"- {r['model']}: warm-job cache hits {r['warm_cache_hits']} of {int(r['cold_cache_misses'])} "
                  f"explanations per job (Captum never ran); cache {r['cache_bytes'] / 1e6:.1f} MB.")
    md += ["", "A warm job still pays the fixed cost of a run (data set-up, model load, loggers, metrics, tables and "
           "figures), so the ratio depends on how expensive the explanations are: on the small C3D they are a "
           "minority of a job, on the full C3D (the paper's model) they dominate."]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="small,full", help="comma list of: " + ", ".join(SCENARIOS))
    parser.add_argument("--clips", type=int, default=None, help="test clips per job (default: per scenario)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_sweeps_"))
    try:
        runs = []
        for name in [n.strip() for n in args.scenarios.split(",") if n.strip()]:
            if name not in SCENARIOS:
                raise SystemExit(f"--scenarios: unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
            runs.append(run_scenario(work, name, args.clips or SCENARIOS[name]["clips"]))
        results = {"threads": args.threads, "runs": runs}
        md = to_markdown(runs, args.threads)
        path, _ = write_results("bench_sweeps", results, md)
        print(md)
        print(f"Results written to {path}")
    finally:
        if args.keep:
            print(f"Work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
