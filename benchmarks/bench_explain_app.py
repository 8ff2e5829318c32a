"""`mr-explain` end to end: clips/s and where the time goes (flow, explainers, selective step, logging, figures).

Runs :func:`motion_relevance.explain_app.explain` with the four default methods on ``--clips`` test clips of the
default ``motion_shapes`` set, twice: with an empty flow cache (cold) and again with the cache filled (warm); the
attribution cache is off so that every run explains. The phases are timed by wrapping the library functions
the callbacks call (nothing in the package is changed), so nested time is attributed to the innermost phase
only where the phases do not nest (they do not: flow, explainers, selective step and loggers are disjoint).

The checkpoint is ``--ckpt`` (e.g. the demo's ``last.ckpt``) or, by default, the newest
``logs/train/runs/*/checkpoints/last.ckpt``; without one, a small C3D is trained for one batch with ``mr-train``'s
code (the cost of explaining does not depend on the weights' values).
Targets: flow with the cache warm costs at most 5 % of the run (issue 4); the share of the faithfulness and
randomisation sections is reported (issue 16).

    .venv/bin/python benchmarks/bench_explain_app.py [--clips 100] [--ckpt PATH]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import write_results

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("flow", "explainers", "selective", "faithfulness", "randomization", "logging", "figures")


class PhaseClock:
    """Exclusive wall time per phase from wrapped callables: time spent in a phase called from inside another (the
    explainers inside the randomisation test) counts for the inner phase only; re-entrant calls count once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0
        self._undo: list[Callable[[], None]] = []

    def _switch(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._since = now

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._switch()
            self._stack.append(phase)
            try:
                return original(*args, **kwargs)
            finally:
                self._switch()
                self._stack.pop()

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def instrument(clock: PhaseClock) -> None:
    """Wrap the functions each phase runs through."""
    import pytorch_lightning.loggers as pl_loggers

    import motion_relevance.callbacks.figures as figures
    import motion_relevance.pipeline.core as core
    from motion_relevance.explain.explainers import Explainer
    from motion_relevance.metrics.flow import FlowEstimator
    from motion_relevance.pipeline.faithfulness import FaithfulnessStage, RandomizationStage
    from motion_relevance.utils.loggers import SafeWandbLogger

    clock.wrap(FlowEstimator, "__call__", "flow")
    clock.wrap(Explainer, "__call__", "explainers")
    clock.wrap(core, "selective_relevance", "selective")
    clock.wrap(FaithfulnessStage, "update", "faithfulness")
    clock.wrap(RandomizationStage, "update", "randomization")
    for name in ("log_metrics", "log_table", "log_image", "log_video", "log_hyperparams"):
        if hasattr(SafeWandbLogger, name):
            clock.wrap(SafeWandbLogger, name, "logging")
    clock.wrap(pl_loggers.CSVLogger, "log_metrics", "logging")
    for name in ("save_explanation_grid", "render_explanation_grid", "write_overlay_video"):
        if hasattr(figures, name):
            clock.wrap(figures, name, "figures")


def find_checkpoint(given: str | None, workdir: Path) -> tuple[Path, str]:
    """The checkpoint to explain and where it came from."""
    if given:
        return Path(given), "given"
    runs = sorted((ROOT / "logs" / "train" / "runs").glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1], "newest demo run"
    from omegaconf import open_dict

    from motion_relevance.train import train

    config = compose("train", [f"paths.data_dir={workdir / 'data'}", "trainer.max_epochs=1", "logger=csv",
                               "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"])
    with open_dict(config):
        config.paths.output_dir = str(workdir / "train")
    metrics, _ = train(config)
    path = Path(metrics["last_checkpoint"])
    return path, "small C3D trained for one batch (the cost of explaining does not depend on the weights)"


def compose(name: str, overrides: list[str]) -> Any:
    from motion_relevance.utils.compose import compose_config

    return compose_config(name, overrides)


def run_once(ckpt: Path, workdir: Path, clips: int, flow_cache: Path, tag: str) -> dict[str, Any]:
    from omegaconf import open_dict

    from motion_relevance.explain_app import explain

    overrides = [f"ckpt_path={ckpt}", f"num_clips={clips}", "data.num_workers=0", f"flow.cache_dir={flow_cache}",
                 "~callbacks.progress_bar"]
    cfg = compose("explain", overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(workdir / f"run_{tag}")
        cfg.paths.log_dir = str(workdir / "logs")
        if cfg.get("cache") is not None:
            cfg.cache = None  # measure the explainers, not the attribution cache
    clock = PhaseClock()
    instrument(clock)
    start = time.perf_counter()
    try:
        metrics, _ = explain(cfg)
    finally:
        clock.restore()
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except Exception:
            pass
    total = time.perf_counter() - start
    explained = int(float(metrics.get("test/explained_clips", clips)))
    shares = {p: clock.seconds.get(p, 0.0) / total for p in PHASES}
    shares["other (data, forward, metrics, Lightning)"] = max(0.0, 1.0 - sum(shares.values()))
    return {"tag": tag, "total_s": total, "clips": explained, "clips_per_s": explained / total,
            "seconds": {p: clock.seconds.get(p, 0.0) for p in PHASES}, "shares": shares}


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        "# mr-explain end to end (bench_explain_app.py)",
        "",
        f"{res['clips']} test clips of motion_shapes, 4 methods (DTD, Grad-CAM, GBP, Guided Grad-CAM) + selective "
        f"(sigma 4), Farnebäck flow, faithfulness (3 references, on the first `faithfulness.num_clips` clips) and "
        f"cascading randomisation (on the first `randomization.num_clips`), W&B offline + CSV, figures on; "
        f"checkpoint: {res['checkpoint_source']}. Each phase's time is exclusive (the explanations inside the "
        f"randomisation test count for randomisation).",
        "",
        "| run | total s | clips/s | " + " | ".join(f"{p} %" for p in res["runs"][0]["shares"]) + " |",
        "|---|---|---|" + "---|" * len(res["runs"][0]["shares"]),
    ]
    for run in res["runs"]:
        lines.append(f"| {run['tag']} | {run['total_s']:.1f} | {run['clips_per_s']:.2f} | "
                     + " | ".join(f"{100 * v:.1f}" for v in run["shares"].values()) + " |")
    warm = res["runs"][-1]
    cold = res["runs"][0]
    lines += [
        "",
        f"Flow share with the cache warm: {100 * warm['shares']['flow']:.1f} % (target <= 5 %: "
        f"{'met' if warm['shares']['flow'] <= 0.05 else 'MISSED'}); cold: {100 * cold['shares']['flow']:.1f} %. "
        f"Flow time warm vs cold: {warm['seconds']['flow']:.2f} s vs {cold['seconds']['flow']:.2f} s "
        f"({cold['seconds']['flow'] / max(warm['seconds']['flow'], 1e-9):.1f}x).",
        f"Faithfulness section (deletion/insertion, random floor, matched budget, motion reliance): "
        f"{100 * warm['shares']['faithfulness']:.1f} % of the warm run; randomisation: "
        f"{100 * warm['shares']['randomization']:.1f} %.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import os

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ckpt, source = find_checkpoint(args.ckpt, workdir)
        flow_cache = workdir / "flow_cache"
        runs = [run_once(ckpt, workdir, args.clips, flow_cache, tag) for tag in ("cold flow cache", "warm flow cache")]
    res = {"clips": runs[-1]["clips"], "checkpoint": str(ckpt), "checkpoint_source": source, "runs": runs,
           "warm_flow_share": runs[-1]["shares"]["flow"], "target_warm_flow_share": 0.05}
    md = to_markdown(res)
    write_results("bench_explain_app", res, md)
    print(md)


if __name__ == "__main__":
    main()
