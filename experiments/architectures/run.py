"""The architectures study: which motion do today's video networks use, and do the explanations say so faithfully?

One command runs everything (README.md in this folder)::

    .venv/bin/python experiments/architectures/run.py [hydra-style overrides, e.g. study.seeds=[1]]

For every model of ``study.models``, context bias of ``study.context_bias`` and seed of ``study.seeds``: (1) train
with ``mr-train`` on ``motion_shapes`` (subprocess; its own data root per context bias), (2) explain the test clips
with ``mr-explain per_clip=true`` (subprocess: tables 1-7 and ``per_clip.csv`` in its run folder), then (3) tabulate
with 95 % bootstrap intervals over clips (pooled over seeds) into ``results/`` and the README. Runs that exist
are reused (``study.reuse``), so an interrupted study resumes.

Configuration: ``explain.yaml`` + ``experiment/architectures.yaml`` of ``src/motion_relevance/conf`` (the ``study:``
block).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from motion_relevance.conf import CONFIG_DIR

log = logging.getLogger("architectures")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_EXPLAINERS = ("dtd", "gradcam", "gbp", "guided_gradcam")  # the explainers of motion_relevance/conf/explain.yaml


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The study config: explain.yaml + experiment=architectures + ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("explain", overrides=["experiment=architectures", *overrides])


def per_model(node: Any, model: str) -> Any:
    """``node[model]`` if present, else ``node.default``."""
    node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return node.get(model, node.get("default"))


def run_name(model: str, bias: float, seed: int) -> str:
    return f"{model}_cb{int(round(bias * 100)):03d}_s{seed}"


def _paths(cfg: DictConfig) -> list[str]:
    return [f"paths.data_dir={Path(str(cfg.paths.data_dir)).resolve()}",
            f"paths.cache_dir={Path(str(cfg.paths.cache_dir)).resolve()}"]


def _data(cfg: DictConfig, bias: float) -> list[str]:
    root = Path(str(cfg.paths.data_dir)).resolve() / f"motion_shapes_arch_cb{int(round(bias * 100)):03d}"
    generator = OmegaConf.to_container(cfg.study.generator, resolve=True) or {}
    return [f"data.root={root}", f"data.generator.context_bias={bias}",
            *[f"data.generator.{k}={json.dumps(v)}" for k, v in generator.items()]]


def _run(cmd: list[str], log_file: Path, expect: Path) -> float:
    """Run an entry point as a subprocess into ``log_file``; raise with the log's tail if ``expect`` is missing."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_file, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, check=False,
                              env=dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline")))
    if proc.returncode != 0 or not expect.exists():
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed (exit {proc.returncode}); log {log_file}:\n"
                           + log_file.read_text()[-3000:])
    return time.perf_counter() - t0


def train(cfg: DictConfig, model: str, bias: float, seed: int) -> Path:
    """Train one model (or reuse its run); returns its ``last.ckpt``."""
    out = Path(str(cfg.study.out_dir)) / "train" / run_name(model, bias, seed)
    ckpt = out / "checkpoints" / "last.ckpt"
    if cfg.study.reuse and ckpt.is_file() and (out / "metrics.json").is_file():
        return ckpt
    cmd = [sys.executable, "-m", "motion_relevance.train", f"model={model}", f"seed={seed}",
           f"trainer.max_epochs={per_model(cfg.study.epochs, model)}", "logger=csv", f"hydra.run.dir={out}",
           "extras.print_config=false", *_paths(cfg), *_data(cfg, bias),
           *[str(o) for o in per_model(cfg.study.train_overrides, model) or []]]
    wall = _run(cmd, out.with_suffix(".log"), ckpt)
    log.info("trained %s in %.0f s", run_name(model, bias, seed), wall)
    return ckpt


def explain(cfg: DictConfig, model: str, bias: float, seed: int, ckpt: Path) -> Path:
    """Explain one checkpoint's test clips with mr-explain (or reuse the run); returns its run folder."""
    out = Path(str(cfg.study.out_dir)) / "explain" / run_name(model, bias, seed)
    if cfg.study.reuse and (out / "per_clip.csv").is_file() and (out / "metrics.json").is_file():
        return out
    explainers = per_model(cfg.study.explainers, model)
    randomize = bias == min(per_model(cfg.study.context_bias, model))
    cmd = [sys.executable, "-m", "motion_relevance.explain_app", f"ckpt_path={ckpt}", "per_clip=true", "logger=csv",
           f"hydra.run.dir={out}", "extras.print_config=false", "flow=none", "cache=none",
           f"num_clips={cfg.study.num_clips}", f"selective.sigma={json.dumps(list(cfg.study.sigmas))}",
           f"faithfulness.num_clips={cfg.study.faithfulness_clips}",
           f"faithfulness.references={json.dumps(list(cfg.study.references))}",
           f"randomization.num_clips={cfg.study.randomization_clips}" if randomize else "randomization=none",
           "callbacks.explanations.overlay_videos=0", *_paths(cfg), *_data(cfg, bias),
           *[f"~explainer@explainers.{name}" for name in DEFAULT_EXPLAINERS if name not in explainers],
           *[f"+explainer@explainers.{name}={name}" for name in explainers if name not in DEFAULT_EXPLAINERS],
           f"objective.method={explainers[0]}"]
    data_keys = _checkpoint_data(ckpt)
    cmd += [f"data.{k}={_hydra(v)}" for k, v in data_keys.items()]
    wall = _run(cmd, out.with_suffix(".log"), out / "per_clip.csv")
    log.info("explained %s in %.0f s", run_name(model, bias, seed), wall)
    return out


def _hydra(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    return str(value)


def _checkpoint_data(ckpt: Path) -> dict[str, Any]:
    """The normalisation and pathways the checkpoint was trained with (model configs may set them)."""
    from motion_relevance.models.checkpoint import read_checkpoint, read_description

    meta = read_description(read_checkpoint(ckpt), ckpt)
    pre = meta["preprocessing"]
    return {k: pre[k] for k in ("mean", "std", "scale", "channel_order", "pathways") if k in pre}


# ------------------------------------------------------------------------------------------------ analysis
def read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def bootstrap(values: Sequence[float], resamples: int, seed: int) -> tuple[float, float, float, int]:
    """Mean and 95 % percentile-bootstrap interval of the finite ``values``; (nan, nan, nan, 0) when none."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)), int(v.size)


def ratio_bootstrap(num: Sequence[float], den: Sequence[float], resamples: int, seed: int
                    ) -> tuple[float, float, float, int]:
    """Ratio of means with a paired 95 % bootstrap interval (motion reliance)."""
    pairs = np.asarray([(a, b) for a, b in zip(num, den) if np.isfinite(a) and np.isfinite(b)], dtype=float)
    if pairs.size == 0 or pairs[:, 1].mean() <= 0:
        return float("nan"), float("nan"), float("nan"), len(pairs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
    sums = pairs[idx].sum(axis=1)
    ratios = sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], np.nan)
    return (float(pairs[:, 0].mean() / pairs[:, 1].mean()), float(np.nanpercentile(ratios, 2.5)),
            float(np.nanpercentile(ratios, 97.5)), len(pairs))


def _values(rows: list[dict[str, Any]], metric: str, method: str) -> list[float]:
    return [float(r["value"]) for r in rows if r["metric"] == metric and r["method"] == method]


def _fmt(mean: float, lo: float, hi: float, n: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{mean:.3f}"


def analyse(cfg: DictConfig, runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The study's tables from the runs' ``metrics.json`` and ``per_clip.csv`` (see the README)."""
    from motion_relevance.metrics import keys

    resamples, seed = int(cfg.study.bootstrap), int(cfg.study.seed)
    sigmas = [float(s) for s in cfg.study.sigmas]
    sigma = sigmas[0]
    multi = len(sigmas) > 1
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], run["bias"])].append(run)
    main, faith, sanity, best = [], [], [], []
    for (model, bias), items in groups.items():
        rows = [r for run in items for r in run["rows"]]
        method = per_model(cfg.study.explainers, model)[0]
        sel, base = keys.selective(method, sigma, multi), keys.at_sigma(method, sigma, multi)
        accs = [float(run["metrics"].get("test/acc", float("nan"))) for run in items]
        row: dict[str, Any] = {
            "model": model, "context_bias": bias, "method": method, "seeds": len(items),
            "test_acc": f"{np.mean(accs):.3f} ({', '.join(f'{a:.3f}' for a in accs)})",
            "gt_precision_selective": _fmt(*bootstrap(_values(rows, "gt_precision", sel), resamples, seed)),
            "gt_recall_selective": _fmt(*bootstrap(_values(rows, "gt_recall", sel), resamples, seed)),
            "gt_precision_baseline": _fmt(*bootstrap(_values(rows, "gt_precision", method), resamples, seed)),
            "spatial_bias": _fmt(*bootstrap(_values(rows, "spatial_bias", base), resamples, seed)),
            "motion_reliance": _fmt(*ratio_bootstrap(_values(rows, "full_freeze_drop", "model"),
                                                     _values(rows, "full_mean_drop", "model"), resamples, seed)),
        }
        for pathway in ("slow", "fast"):
            values = _values(rows, f"pathway_share_{pathway}", method)
            if values:
                row[f"{pathway}_share"] = _fmt(*bootstrap(values, resamples, seed))
                row[f"{pathway}_share_selective"] = _fmt(*bootstrap(_values(rows, f"pathway_share_{pathway}", sel),
                                                                    resamples, seed))
        main.append(row)
        drops = {k: bootstrap(_values(rows, name, m), resamples, seed) for k, name, m in (
            ("selective", "freeze_drop_freeze", sel), ("topm", "topm_drop_freeze", base),
            ("random", "random_drop_freeze", base), ("advantage", "drop_advantage_random_freeze", base))}
        faith.append({"model": model, "context_bias": bias, "method": method,
                      **{f"drop_{k}": _fmt(*v) for k, v in drops.items()},
                      "selective_largest": bool(drops["selective"][0] > max(drops["topm"][0], drops["random"][0])),
                      "deletion_auc": _fmt(*bootstrap(_values(rows, "deletion_auc_freeze", method), resamples, seed)),
                      "deletion_auc_random": _fmt(*bootstrap(_values(rows, "deletion_auc_freeze", "random"),
                                                             resamples, seed))})
        scores = {}
        for s in sigmas:
            b = keys.at_sigma(method, s, multi)
            scores[s] = (bootstrap(_values(rows, "drop_advantage_random_freeze", b), resamples, seed)[0],
                         bootstrap(_values(rows, "gt_f1", keys.selective(method, s, multi)), resamples, seed)[0])
        finite = {s: v for s, v in scores.items() if np.isfinite(v[0])}
        best.append({"model": model, "context_bias": bias, "method": method,
                     "best_sigma_freeze_drop": max(finite, key=lambda s: finite[s][0]) if finite else None,
                     "best_sigma_gt_f1": max(scores, key=lambda s: np.nan_to_num(scores[s][1], nan=-1)),
                     **{f"advantage_s{s:g}": f"{v[0]:.4f}" for s, v in scores.items()},
                     **{f"gt_f1_s{s:g}": f"{v[1]:.3f}" for s, v in scores.items()}})
        for run in items:
            metrics = run["metrics"]
            stages = metrics.get("test/randomization_stages") or []
            if not stages:
                continue
            last = len(stages) - 1
            for name in per_model(cfg.study.explainers, model):
                for label, m in (("baseline", name), ("selective", keys.selective(name, sigma, False))):
                    value = metrics.get(keys.metric_key("test", f"randomization_s{last}", m))
                    half = metrics.get(keys.metric_key("test", f"randomization_s{last // 2}", m))
                    sanity.append({"model": model, "seed": run["seed"], "method": name, "map": label,
                                   "stages": last, "spearman_half": half, "spearman_all": value,
                                   "passes": bool(value is not None and np.isfinite(value) and abs(value) < 0.5)})
    return {"architectures": main, "faithfulness": faith, "randomization": sanity, "sigma": best}


def write(tables: dict[str, list[dict[str, Any]]], folder: Path) -> str:
    from motion_relevance.report import to_markdown, write_csv

    folder.mkdir(parents=True, exist_ok=True)
    text = []
    for name, rows in tables.items():
        if rows:
            write_csv(rows, folder / f"{name}.csv")
        text.append(to_markdown(rows, title=name))
    (folder / "results.md").write_text("\n".join(text))
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = compose(list(sys.argv[1:] if argv is None else argv))
    runs = []
    steps = set(cfg.study.steps)
    started = time.perf_counter()
    for model in cfg.study.models:
        for bias in per_model(cfg.study.context_bias, model):
            for seed in cfg.study.seeds:
                ckpt = train(cfg, model, float(bias), int(seed)) if "train" in steps else None
                if "explain" not in steps or ckpt is None:
                    continue
                out = explain(cfg, model, float(bias), int(seed), ckpt)
                runs.append({"model": model, "bias": float(bias), "seed": int(seed),
                             "metrics": json.loads((out / "metrics.json").read_text()),
                             "rows": read_rows(out / "per_clip.csv")})
    if "analyse" not in steps:
        print(f"study steps {sorted(steps)} done in {time.perf_counter() - started:.0f} s")
        return
    tables = analyse(cfg, runs)
    text = write(tables, Path(str(cfg.study.out_dir)) / "tables")
    if cfg.study.publish:
        write(tables, Path(str(cfg.study.publish_dir)))
        readme = Path(str(cfg.study.readme))
        if readme.exists():
            body = readme.read_text()
            start, end = "<!-- results:start -->", "<!-- results:end -->"
            if start in body and end in body:
                body = body[: body.index(start) + len(start)] + "\n" + text + "\n" + body[body.index(end):]
                readme.write_text(body)
    print(text)
    print(f"study done in {time.perf_counter() - started:.0f} s; tables in {cfg.study.publish_dir}")


if __name__ == "__main__":
    main()
