"""Sigma sweeps: a 5-sigma sweep with a cold then warm attribution cache vs one job vs the single-job sigma list.

On a small trained C3D (motion_shapes, trained for a few batches: quality is irrelevant to cost), each measured
run is a full ``mr-explain`` job run in this process (data set-up, test loop, explainers, flow, selective metrics,
tables and figures), all four explainers, ``--clips`` test clips:

* ``single_cold``: one job, sigma 4, empty cache (what every sweep job costs without the cache);
* ``sweep_warm_jobs``: the other four sigmas (1, 2, 3, 5) as separate jobs, reading the cache the first filled;
* ``sweep_total`` = ``single_cold`` + ``sweep_warm_jobs`` (the 5-sigma sweep as ``mr-explain -m`` runs it with the
  basic launcher) and ``sweep_nocache`` = 5 x ``single_cold`` (the same sweep without a cache, estimated);
* ``multi_cold``: one job with ``selective.sigma=[1,2,3,4,5]``, empty cache.

Targets (issue 6): ``sweep_total <= 1.5 x single_cold`` and ``multi_cold <= 1.1 x single_cold``. Run:
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
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from motion_relevance.explain_app import explain
from motion_relevance.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
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
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.extras.print_config = False
    return cfg


def _job(work: Path, ckpt: Path, cache: Path, sigma: str, tag: str, clips: int) -> tuple[float, dict[str, Any]]:
    cfg = _compose("explain", [f"paths.data_dir={work}/data", f"paths.cache_dir={work}/cache", f"cache.dir={cache}",
                               f"ckpt_path={ckpt}", "logger=csv", "~callbacks.progress_bar", f"num_clips={clips}",
                               f"selective.sigma={sigma}", *DATA], work / "runs" / tag)
    start = time.perf_counter()
    metrics, _ = explain(cfg)
    return time.perf_counter() - start, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="test clips explained per job")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_sweeps_"))
    try:
        cfg = _compose("train", [f"paths.data_dir={work}/data", f"paths.cache_dir={work}/cache", "logger=csv",
                                 "callbacks=default", "~callbacks.progress_bar", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false",
                                 *DATA], work / "train")
        train(cfg)
        ckpt = work / "train" / "checkpoints" / "last.ckpt"
        # warm-up: data index and optical-flow caches are filled once, so only the attribution cache differs
        _job(work, ckpt, work / "attr_warmup", "4", "warmup", args.clips)

        single_cold, m_single = _job(work, ckpt, work / "attr_sweep", "4", "single_cold", args.clips)
        warm, hits = [], []
        for sigma in ("1", "2", "3", "5"):
            seconds, metrics = _job(work, ckpt, work / "attr_sweep", sigma, f"warm_{sigma}", args.clips)
            warm.append(seconds)
            hits.append(float(metrics["test/cache_hits"]))
        multi_cold, m_multi = _job(work, ckpt, work / "attr_multi", "[1,2,3,4,5]", "multi_cold", args.clips)
        sweep_total = single_cold + sum(warm)
        results = {
            "clips": args.clips,
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
        md = [
            "# bench_sweeps: a 5-sigma sweep, cold vs warm attribution cache, vs the single-job sigma list",
            "",
            f"{args.clips} test clips, 4 explainers (DTD, Grad-CAM, GBP, Guided Grad-CAM), small C3D, "
            f"{args.threads} torch threads, whole `mr-explain` jobs in one process (basic launcher).",
            "",
            "| run | seconds | x single job |",
            "|---|---|---|",
            f"| one job, sigma 4, cold cache | {single_cold:.2f} | 1.00 |",
            f"| one job, warm cache (mean of sigma 1, 2, 3, 5) | {results['warm_job_mean_s']:.2f} | "
            f"{results['warm_job_mean_s'] / single_cold:.2f} |",
            f"| 5-sigma sweep (cold + 4 warm jobs) | {sweep_total:.2f} | {results['sweep_over_single']:.2f} "
            "(target <= 1.5) |",
            f"| 5-sigma sweep without cache (5 x cold, estimate) | {5 * single_cold:.2f} | 5.00 |",
            f"| one job, selective.sigma=[1,2,3,4,5], cold cache | {multi_cold:.2f} | "
            f"{results['multi_over_single']:.2f} (target <= 1.1) |",
            "",
            f"Warm jobs: cache hits {hits} (of {int(results['cold_cache_misses'])} explanations per job), "
            f"Captum never ran; cache size {results['cache_bytes'] / 1e6:.1f} MB.",
        ]
        path, _ = write_results("bench_sweeps", results, "\n".join(md) + "\n")
        print("\n".join(md))
        print(f"Results written to {path}")
    finally:
        if args.keep:
            print(f"Work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
