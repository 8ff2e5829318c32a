"""The architectures study's analysis: from the two multirun folders to the committed, tidy results and the README.

Run after (or during) the sweeps of the README::

    .venv/bin/python experiments/architectures/analyse.py [--outputs DIR] [--results DIR] [--readme FILE]

1. **Collect** (``--outputs``, default ``experiments/architectures/outputs``): every training job of
   ``outputs/train`` (mr-train, ``experiment=study_train``) becomes a row of ``results/runs.csv``; every
   explanation job of ``outputs/explain`` (mr-explain, ``experiment=study_explain_*``) writes the study's per-clip
   values to ``results/clips/<model>_cb<bias>_s<seed>.csv``. Jobs the sweeps planned but that have no finished
   record are listed (read from each sweep's ``multirun.yaml``, as ``mr-report`` does).
2. **Summarise** from those committed files only: ``results/summary.csv`` (long: model, context_bias, method,
   metric, mean, lo, hi, n) with two-level bootstrap intervals over runs and clips
   (:func:`motion_relevance.metrics.bootstrap.bootstrap_interval`). Explanations of a run whose test accuracy
   missed its bar (``competence`` of its training config) are not summarised.
3. **Publish**: the README's tables, verdicts and figures, generated from ``runs.csv`` and ``summary.csv``.

``--no-collect`` skips step 1 (recompute the summary and README from the committed files: what the tests do).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from motion_relevance.metrics.bootstrap import bootstrap_interval
from motion_relevance.pipeline.record import read_metrics_file
from motion_relevance.report import planned_jobs

log = logging.getLogger("architectures")

HERE = Path(__file__).resolve().parent
RESAMPLES, SEED = 1000, 0
#: runs.csv columns (one row per training job).
RUN_COLUMNS = ("model", "context_bias", "seed", "test_acc", "val_acc_best", "epochs", "max_epochs", "train_seconds",
               "competence", "learned")
#: summary.csv columns (long format, numbers only besides the names).
SUMMARY_COLUMNS = ("model", "context_bias", "method", "metric", "mean", "lo", "hi", "n")
#: per-clip files' columns.
CLIP_COLUMNS = ("clip", "video", "label", "target", "metric", "method", "value")
#: The per-clip metrics the study keeps (the rest of a run's per_clip.csv stays in its run folder).
CLIP_METRICS = ("gt_precision", "gt_recall", "gt_f1", "spatial_bias", "freeze_drop_freeze", "topm_drop_freeze",
                "random_drop_freeze", "drop_advantage_random_freeze", "full_freeze_drop", "full_static_drop",
                "full_mean_drop", "temporal_share", "pathway_share_slow", "pathway_share_fast", "temporal_advantage",
                "deletion_auc_freeze")
#: Means over clips per (method, metric) in summary.csv; ``drop_advantage_topm_freeze`` is derived per clip.
MEAN_METRICS = tuple(m for m in CLIP_METRICS if not m.startswith("full_")) + ("drop_advantage_topm_freeze",)


# --------------------------------------------------------------------------------------------- collect
def _job_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / ".hydra" / "config.yaml").is_file()) if folder.is_dir() else []


def _choice(job: Path, group: str) -> str | None:
    hydra = OmegaConf.load(job / ".hydra" / "hydra.yaml")
    return OmegaConf.select(hydra, f"hydra.runtime.choices.{group}")


def bias_name(bias: float) -> str:
    """``0`` -> ``"0"``, ``0.5`` -> ``"0.5"``: the context bias as the run names write it."""
    return f"{float(bias):g}"


def run_name(model: str, bias: float, seed: int) -> str:
    return f"{model}_cb{bias_name(bias)}_s{int(seed)}"


def collect_train(folder: Path) -> list[dict[str, Any]]:
    """One row per training job with a finished record (RUN_COLUMNS)."""
    rows = []
    for job in _job_dirs(folder):
        metrics = read_metrics_file(job / "metrics.json")
        if metrics.get("run_status") != "finished":
            log.warning("training job %s has no finished record; left out", job)
            continue
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        acc, bar = float(metrics.get("test/acc", math.nan)), float(cfg.get("competence", math.nan))
        rows.append({"model": _choice(job, "model"), "context_bias": float(cfg.data.generator.context_bias),
                     "seed": int(cfg.seed), "test_acc": acc,
                     "val_acc_best": float(metrics.get("val/acc_best", math.nan)),
                     "epochs": int(metrics.get("epochs", -1)), "max_epochs": int(cfg.trainer.max_epochs),
                     "train_seconds": float(metrics.get("train_seconds", math.nan)), "competence": bar,
                     "learned": int(acc >= bar)})
    return sorted(rows, key=lambda r: (r["model"], r["context_bias"], r["seed"]))


def collect_explain(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Run name -> the study's per-clip rows (CLIP_COLUMNS) of every finished explanation job."""
    out = {}
    for job in _job_dirs(folder):
        metrics = read_metrics_file(job / "metrics.json")
        if metrics.get("run_status") != "finished" or not (job / "per_clip.csv").is_file():
            log.warning("explanation job %s has no finished record; left out", job)
            continue
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        name = run_name(str(cfg.study.model), float(cfg.data.generator.context_bias), int(cfg.seed))
        with open(job / "per_clip.csv", newline="") as handle:
            rows = [{k: r[k] for k in CLIP_COLUMNS} for r in csv.DictReader(handle) if r["stage"] == "test"
                    and (r["metric"] in CLIP_METRICS or r["metric"].startswith("randomization_s"))]
        out[name] = rows
    return out


COMPUTE_COLUMNS = ("step", "run", "seconds", "cpu_seconds")


def collect_compute(outputs: Path) -> list[dict[str, Any]]:
    """Wall and CPU seconds of every finished job of both sweeps (``run_seconds`` and ``run_cpu_seconds`` of its
    record; records written before CPU time was recorded leave that cell empty): the study's compute."""
    rows = []
    for step in ("train", "explain"):
        for job in _job_dirs(outputs / step):
            metrics = read_metrics_file(job / "metrics.json")
            seconds = metrics.get("run_seconds", metrics.get("train_seconds"))  # older records: fit time only
            if metrics.get("run_status") == "finished" and seconds is not None:
                rows.append({"step": step, "run": job.name, "seconds": float(seconds),
                             "cpu_seconds": metrics.get("run_cpu_seconds")})
    return rows


def missing_jobs(outputs: Path) -> list[str]:
    """Planned jobs of both sweeps without a finished record, as ``train: <overrides>`` lines."""
    lines = []
    for step in ("train", "explain"):
        folder = outputs / step
        plan = planned_jobs(folder) if (folder / "multirun.yaml").is_file() else None
        done = {p.name for p in _job_dirs(folder)
                if read_metrics_file(p / "metrics.json").get("run_status") == "finished"} if folder.is_dir() else set()
        for overrides in plan or []:
            values = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
            model = values.get("recipe", values.get("study.model"))
            if model and "seed" in values and "data.generator.context_bias" in values:
                name = run_name(model, float(values["data.generator.context_bias"]), int(values["seed"]))
                if name not in done:
                    lines.append(f"{step}: {name}")
    return lines


# --------------------------------------------------------------------------------------------- files
def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return value


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a committed CSV; a row with more or fewer cells than the header (an unquoted comma in a note) is
    refused naming its line, rather than read with its cells shifted."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise ValueError(f"{path}, line {line}: {len(reader.fieldnames or [])} columns in the header but not in "
                             "this row; quote a cell that holds a comma")
    return rows


def _num(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def read_results(results: Path) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """runs.csv and the per-clip files, as the summary reads them."""
    runs = [{**r, "context_bias": float(r["context_bias"]), "seed": int(r["seed"]), "test_acc": _num(r["test_acc"]),
             "competence": _num(r["competence"]), "learned": int(r["learned"])}
            for r in read_csv(results / "runs.csv")] if (results / "runs.csv").is_file() else []
    clips = {p.stem: [{**r, "value": _num(r["value"])} for r in read_csv(p)]
             for p in sorted((results / "clips").glob("*.csv"))}
    return runs, clips


# --------------------------------------------------------------------------------------------- summary
#: One run's per-clip values by (metric, method): clip -> value.
ClipIndex = dict[tuple[str, str], dict[int, float]]


def index_clips(rows: Sequence[Mapping[str, Any]]) -> ClipIndex:
    """A run's per-clip rows indexed once by (metric, method)."""
    index: ClipIndex = defaultdict(dict)
    for r in rows:
        index[(str(r["metric"]), str(r["method"]))][int(r["clip"])] = float(r["value"])
    return index


def _per_clip(index: ClipIndex, metric: str, method: str) -> dict[int, float]:
    return index.get((metric, method), {})


def _methods(index: ClipIndex, metric: str) -> set[str]:
    return {method for m, method in index if m == metric}


def selective_name(method: str) -> str:
    """The selective map's method name of a baseline-at-sigma name: ``dtd@s4`` -> ``dtd_selective_s4``
    (``dtd`` -> ``dtd_selective`` in a one-sigma run), as the run's metric keys write them."""
    base, _, sigma = method.partition("@s")
    return f"{base}_selective_s{sigma}" if sigma else f"{base}_selective"


def _row(model: str, bias: float, method: str, metric: str, groups: list[Any], ratio: bool = False) -> dict[str, Any]:
    est = bootstrap_interval(groups, ratio=ratio, resamples=RESAMPLES, seed=SEED)
    return {"model": model, "context_bias": bias, "method": method, "metric": metric,
            "mean": est.mean, "lo": est.lo, "hi": est.hi, "n": est.n}


def summarise(runs: Sequence[Mapping[str, Any]], clips: Mapping[str, Sequence[Mapping[str, Any]]]
              ) -> list[dict[str, Any]]:
    """summary.csv's rows from runs.csv and the per-clip files (deterministic: seeded bootstrap)."""
    out: list[dict[str, Any]] = []
    cells: dict[tuple[str, float], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        cells[(str(run["model"]), float(run["context_bias"]))].append(run)
    for (model, bias), items in sorted(cells.items()):
        out.append(_row(model, bias, "model", "test_acc", [[r["test_acc"]] for r in items]))
        learned = [index_clips(clips[n]) for n in (run_name(model, bias, r["seed"]) for r in items if r["learned"])
                   if n in clips]
        if not learned:
            continue
        drops = []
        for rows in learned:
            dm, da = _per_clip(rows, "full_freeze_drop", "model"), _per_clip(rows, "full_static_drop", "model")
            drops.append([[max(dm[c], 0.0), max(da[c], 0.0)] for c in sorted(dm) if c in da])
        out.append(_row(model, bias, "model", "motion_reliance", drops, ratio=True))
        for metric in ("full_freeze_drop", "full_static_drop", "full_mean_drop"):
            groups = [list(_per_clip(rows, metric, "model").values()) for rows in learned]
            out.append(_row(model, bias, "model", metric, groups))
        for metric in MEAN_METRICS:
            methods = set().union(*(_methods(r, "topm_drop_freeze" if metric == "drop_advantage_topm_freeze"
                                             else metric) for r in learned))
            for method in sorted(methods):
                groups = []
                for rows in learned:
                    if metric == "drop_advantage_topm_freeze":
                        sel = _per_clip(rows, "freeze_drop_freeze", selective_name(method))
                        top = _per_clip(rows, "topm_drop_freeze", method)
                        groups.append([sel[c] - top[c] for c in sorted(sel) if c in top])
                    else:
                        groups.append(list(_per_clip(rows, metric, method).values()))
                out.append(_row(model, bias, method, metric, groups))
        stages = sorted({int(metric[len("randomization_s"):]) for index in learned for metric, _ in index
                         if metric.startswith("randomization_s")})
        if stages:
            last = stages[-1]
            for method in sorted(_methods(learned[0], f"randomization_s{last}")):
                for label, k in (("randomization_all", last), ("randomization_half", last // 2)):
                    groups = [list(_per_clip(rows, f"randomization_s{k}", method).values()) for rows in learned]
                    out.append(_row(model, bias, method, label, groups))
    return out


# --------------------------------------------------------------------------------------------- publish
def _lookup(summary: Sequence[Mapping[str, Any]]) -> dict[tuple[str, float, str, str], Mapping[str, Any]]:
    return {(str(r["model"]), float(r["context_bias"]), str(r["method"]), str(r["metric"])): r for r in summary}


def fmt(row: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``mean [lo, hi]`` at three significant figures; ``–`` where there is no value."""
    if row is None or not math.isfinite(_f(row["mean"])):
        return "–"
    mean, lo, hi = (_f(row[k]) for k in ("mean", "lo", "hi"))
    text = sig(mean, digits)
    return f"{text} [{sig(lo, digits)}, {sig(hi, digits)}]" if math.isfinite(lo) else text


def sig(value: float, digits: int = 3) -> str:
    """``value`` at ``digits`` significant figures, trailing zeros kept (``1.00``, ``0.0599``)."""
    return f"{value:#.{digits}g}".rstrip(".")


def _f(value: Any) -> float:
    return _num(value) if isinstance(value, str) else float(value)


def main_method(summary: Sequence[Mapping[str, Any]], model: str, bias: float) -> str | None:
    """The study's main method of a cell: AttnLRP where it ran, else Deep Taylor."""
    methods = {str(r["method"]) for r in summary if r["model"] == model and float(r["context_bias"]) == bias}
    return next((m for m in ("attnlrp", "dtd") if m in methods), None)


def sigmas(summary: Sequence[Mapping[str, Any]], method: str) -> list[float]:
    found = {float(str(r["method"]).split("@s")[1]) for r in summary if str(r["method"]).startswith(f"{method}@s")}
    return sorted(found)


def tables(runs: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], sigma: float = 4.0) -> str:
    """The README's tables and verdicts (markdown) from runs.csv and summary.csv."""
    at = _lookup(summary)
    cells = sorted({(str(r["model"]), float(r["context_bias"])) for r in runs})
    lines = ["### Training (runs.csv)", "",
             "| model | context bias | seeds | learned | test acc per seed | mean test acc [95 % interval] | epochs | "
             "train s (mean) |", "|---|---|---|---|---|---|---|---|"]
    for model, bias in cells:
        items = [r for r in runs if r["model"] == model and float(r["context_bias"]) == bias]
        accs = ", ".join(sig(float(r["test_acc"])) for r in items)
        epochs = ", ".join(str(r["epochs"]) for r in items)
        secs = np.mean([_f(r["train_seconds"]) for r in items])
        acc = fmt(at.get((model, bias, "model", "test_acc")))
        lines.append(f"| {model} | {bias:g} | {len(items)} | {sum(int(r['learned']) for r in items)} "
                     f"(bar {_f(items[0]['competence']):g}) | {accs} | {acc} | {epochs} | {secs:.0f} |")
    lines += ["", f"### Motion, explanations and faithfulness (summary.csv; main method, sigma {sigma:g})", "",
              "| model | context bias | method | motion reliance | spatial bias | GT precision selective | "
              "GT precision baseline | drop selective | drop baseline top | drop random | temporal share | "
              "fast-pathway share |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, bias in cells:
        method = main_method(summary, model, bias)
        if method is None:
            lines.append(f"| {model} | {bias:g} | – | no run reached its bar: explanations not tabulated |"
                         + " |" * 8)
            continue
        b, s = f"{method}@s{sigma:g}", f"{method}_selective_s{sigma:g}"
        lines.append("| " + " | ".join([
            model, f"{bias:g}", method, fmt(at.get((model, bias, "model", "motion_reliance"))),
            fmt(at.get((model, bias, b, "spatial_bias"))), fmt(at.get((model, bias, s, "gt_precision"))),
            fmt(at.get((model, bias, method, "gt_precision"))), fmt(at.get((model, bias, s, "freeze_drop_freeze"))),
            fmt(at.get((model, bias, b, "topm_drop_freeze"))), fmt(at.get((model, bias, b, "random_drop_freeze"))),
            fmt(at.get((model, bias, method, "temporal_share"))),
            fmt(at.get((model, bias, method, "pathway_share_fast")))]) + " |")
    lines += ["", "### Randomisation check (summary.csv: rank correlation with the trained model's map after "
              "randomising every layer; passes when the interval lies below 0.5)", "",
              "| model | context bias | method | baseline | selective | passes (baseline / selective) |",
              "|---|---|---|---|---|---|"]
    for model, bias in cells:
        methods = sorted({str(r["method"]) for r in summary if r["model"] == model and float(r["context_bias"]) == bias
                          and r["metric"] == "randomization_all" and "_selective" not in str(r["method"])})
        for method in methods:
            base = at.get((model, bias, method, "randomization_all"))
            sel = at.get((model, bias, f"{method}_selective", "randomization_all"))
            lines.append(f"| {model} | {bias:g} | {method} | {fmt(base)} | {fmt(sel)} | "
                         f"{passes(base)} / {passes(sel)} |")
    lines += ["", "### Verdicts (context bias 0)", ""]
    lines += [f"- {verdict(runs, summary, model)}" for model in sorted({m for m, _ in cells})]
    return "\n".join(lines) + "\n"


def trials_table(path: Path, runs: Sequence[Mapping[str, Any]] = ()) -> str:
    """The recipe trials behind the transformers' recipe (``recipe_trials.csv``, one row per trial) as a table, and
    the models tried there that have no study run yet, with their best trial."""
    if not path.is_file():
        return ""
    trials = read_csv(path)
    lines = ["", "### Training the transformers on small data (recipe_trials.csv: one seed each, context bias 0)", "",
             "| model | recipe | epochs | val acc | test acc | outcome |", "|---|---|---|---|---|---|"]
    for r in trials:
        cells = [sig(_f(r[k])) if r[k] else "–" for k in ("val_acc", "test_acc")]
        lines.append(f"| {r['model']} | {r['recipe']} | {r['epochs']} | {cells[0]} | "
                     f"{cells[1]} | {r['note']} |")
    trained = {str(r["model"]) for r in runs}
    learned = {str(r["model"]) for r in runs if int(r.get("learned") or 0)}
    why = ("what the trials show and why: docs/method.md, \"Seeds, batch size and schedule\"; the probes' per-epoch "
           "records: results/probes/")
    for model in sorted({r["model"] for r in trials} - learned):
        tested = [_f(r["test_acc"]) for r in trials if r["model"] == model and r["test_acc"]]
        best = f"best tested trial {sig(max(tested))}" if tested else "no trial reached a test"
        state = "missed its bar in every study run" if model in trained else "has no finished run in the study grid yet"
        lines.append(f"\n**{model}** {state} ({best} above; {why}).")
    return "\n".join(lines) + "\n"


def calibration(summary: Sequence[Mapping[str, Any]], sigma: float = 4.0) -> str:
    """Which motion measure is calibrated, and how far the paper's spatial bias tracks it: their rank correlation
    over the architectures at each context bias, and each architecture's change of both from context bias 0 to 1."""
    import torch  # deferred: the rank correlation only

    from motion_relevance.metrics.randomization import spearman

    at = _lookup(summary)
    pairs: dict[float, list[tuple[str, float, float]]] = defaultdict(list)
    for model, bias in sorted({(str(r["model"]), float(r["context_bias"])) for r in summary}):
        method = main_method(summary, model, bias)
        rel = at.get((model, bias, "model", "motion_reliance"))
        sb = at.get((model, bias, f"{method}@s{sigma:g}", "spatial_bias")) if method else None
        if rel is not None and sb is not None and math.isfinite(_f(rel["mean"])) and math.isfinite(_f(sb["mean"])):
            pairs[bias].append((model, _f(rel["mean"]), _f(sb["mean"])))
    lines = ["", "### Which motion measure is calibrated", "",
             "Motion reliance is: it has known answers (1 for a model that reads only frame differences, 0 for one "
             "that reads only each pixel's temporal mean; docs/method.md) and is a causal share of the score. Spatial "
             f"bias (the paper's, sigma {sigma:g}) is read off the explanation and has none."]
    for bias, items in sorted(pairs.items()):
        if len(items) >= 3:
            rho = float(spearman(torch.tensor([[i[1] for i in items]]), torch.tensor([[1 - i[2] for i in items]]))[0])
            lines.append(f"- Context bias {bias:g}: over {len(items)} architectures the rank correlation of the "
                         f"explanation's motion share (1 − spatial bias) with motion reliance is {sig(rho)} (1: the "
                         "explanations order the architectures as the causal share does).")
    both = {m: (r, b) for m, r, b in pairs.get(0.0, [])}
    changes = [(model, both[model], (rel, sb)) for model, rel, sb in pairs.get(1.0, []) if model in both]
    for model, (rel0, sb0), (rel1, sb1) in changes:
        lines.append(f"- {model}, context bias 0 → 1: motion reliance {sig(rel0)} → {sig(rel1)}, "
                     f"spatial bias {sig(sb0)} → {sig(sb1)}.")
    if changes:  # less motion used should read as more spatial bias
        agree = sum((rel1 - rel0) * (sb1 - sb0) < 0 for _, (rel0, sb0), (rel1, sb1) in changes)
        lines.append(f"- Where the context gives the class away, spatial bias moves against motion reliance (the way "
                     f"a calibrated reading would) for {agree} of {len(changes)} architectures.")
    return "\n".join(lines) + "\n"


def compute_line(path: Path) -> str:
    """How much wall and CPU time the finished jobs took (``compute.csv``), per step."""
    if not path.is_file():
        return ""
    rows = read_csv(path)
    parts = []
    for step, name in (("train", "training"), ("explain", "explanation")):
        items = [r for r in rows if r["step"] == step]
        timed = [_f(r["cpu_seconds"]) for r in items if r.get("cpu_seconds")]
        wall = sum(_f(r["seconds"]) for r in items) / 3600
        cpu = f"; CPU {sum(timed) / 3600:.2f} h over the {len(timed)} jobs that record it" if timed else ""
        parts.append(f"{name} {wall:.2f} h wall ({len(items)} jobs{cpu})")
    return (f"\nCompute so far (`compute.csv`: each job's wall and CPU seconds on the machine above, CPU counting "
            f"its data-loader workers): {', '.join(parts)}.\n")


def passes(row: Mapping[str, Any] | None) -> str:
    """Randomisation passes when the whole interval of the rank correlation lies below 0.5."""
    if row is None or not math.isfinite(_f(row["mean"])):
        return "–"
    hi = _f(row["hi"]) if math.isfinite(_f(row["hi"])) else _f(row["mean"])
    return "yes" if hi < 0.5 else "no"


def best_sigma(summary: Sequence[Mapping[str, Any]], model: str, bias: float, method: str
               ) -> tuple[float, Mapping[str, Any]] | None:
    """The sigma whose selective map's matched-budget advantage over random voxels is largest."""
    at = _lookup(summary)
    found = [(s, at[(model, bias, f"{method}@s{s:g}", "drop_advantage_random_freeze")]) for s in sigmas(summary, method)
             if (model, bias, f"{method}@s{s:g}", "drop_advantage_random_freeze") in at]
    found = [(s, r) for s, r in found if math.isfinite(_f(r["mean"]))]
    return max(found, key=lambda sr: _f(sr[1]["mean"])) if found else None


def _above(row: Mapping[str, Any] | None) -> str:
    """How a difference of drops compares with 0, by its interval."""
    if row is None or not math.isfinite(_f(row["mean"])):
        return "(undefined)"
    lo, hi = _f(row["lo"]), _f(row["hi"])
    if math.isfinite(lo) and lo > 0:
        return "more than"
    if math.isfinite(hi) and hi < 0:
        return "less than"
    return "no differently (interval across 0) from"


def verdict(runs: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], model: str, bias: float = 0.0
            ) -> str:
    """One sentence with its numbers: does the model use motion, does selective relevance mark it, at which sigma,
    do its explanations pass the randomisation check."""
    at = _lookup(summary)
    items = [r for r in runs if r["model"] == model and float(r["context_bias"]) == bias]
    if not items:
        return f"**{model}**: not trained at context bias {bias:g} yet."
    learned = sum(int(r["learned"]) for r in items)
    acc = fmt(at.get((model, bias, "model", "test_acc")))
    method = main_method(summary, model, bias)
    head = f"**{model}** (test accuracy {acc}, {learned}/{len(items)} seeds at or above {_f(items[0]['competence']):g})"
    if method is None:
        return f"{head}: missed its bar, so its explanations are not tabulated."
    reliance = at.get((model, bias, "model", "motion_reliance"))
    uses = "uses motion" if reliance and _f(reliance["lo"]) > 0.5 else (
        "does not use mainly motion" if reliance and _f(reliance["hi"]) < 0.5 else "uses motion and appearance")
    best = best_sigma(summary, model, bias, method)
    if best is None:
        return f"{head} {uses} (motion reliance {fmt(reliance)}); no faithfulness test yet."
    sigma, adv_random = best
    adv_top = at.get((model, bias, f"{method}@s{sigma:g}", "drop_advantage_topm_freeze"))
    rand = at.get((model, bias, method, "randomization_all"))
    rand_sel = at.get((model, bias, f"{method}_selective", "randomization_all"))
    return (f"{head} {uses} (motion reliance {fmt(reliance)}); freezing what {method}'s selective relevance keeps at "
            f"sigma {sigma:g} drops the score {_above(adv_random)} freezing as many random voxels "
            f"(difference {fmt(adv_random)}) and {_above(adv_top)} the baseline's top voxels ({fmt(adv_top)}); "
            f"randomisation check: baseline {passes(rand)} ({fmt(rand)}), selective {passes(rand_sel)} "
            f"({fmt(rand_sel)}).")


def figures(summary: Sequence[Mapping[str, Any]], folder: Path, sigma: float = 4.0) -> list[Path]:
    """Motion reliance against spatial bias per architecture (with intervals); temporal share and SlowFast's
    fast-pathway share side by side."""
    import matplotlib  # deferred: figures only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: figures only

    at = _lookup(summary)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    cells = sorted({(str(r["model"]), float(r["context_bias"])) for r in summary})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    models = sorted({m for m, _ in cells})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for model, bias in cells:
        method = main_method(summary, model, bias)
        rel = at.get((model, bias, "model", "motion_reliance"))
        sb = at.get((model, bias, f"{method}@s{sigma:g}", "spatial_bias")) if method else None
        if rel is None or sb is None or not math.isfinite(_f(rel["mean"])):
            continue
        x, y = _f(sb["mean"]), _f(rel["mean"])
        xerr = [[x - _f(sb["lo"])], [_f(sb["hi"]) - x]] if math.isfinite(_f(sb["lo"])) else None
        yerr = [[y - _f(rel["lo"])], [_f(rel["hi"]) - y]] if math.isfinite(_f(rel["lo"])) else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o" if bias == 0 else "s", color=colours[model], capsize=3,
                    label=f"{model} (cb {bias:g})")
    ax.set(xlabel=f"spatial bias (1 - mass ratio, sigma {sigma:g})", ylabel="motion reliance (share, causal)",
           xlim=(0, 1.02), ylim=(0, 1.02), title="Does the paper's measure track the causal one?")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = folder / "reliance_vs_spatial_bias.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    bars = []
    for model, bias in cells:
        method = main_method(summary, model, bias)
        for metric, label in (("temporal_share", "temporal share (attention)"),
                              ("pathway_share_fast", "fast-pathway share")):
            row = at.get((model, bias, method, metric)) if method else None
            if row is not None and math.isfinite(_f(row["mean"])):
                bars.append((f"{model}\ncb {bias:g}", label, row))
    for i, (_, label, row) in enumerate(bars):
        m = _f(row["mean"])
        err = [[m - _f(row["lo"])], [_f(row["hi"]) - m]] if math.isfinite(_f(row["lo"])) else None
        ax.bar(i, m, yerr=err, capsize=3, color="tab:orange" if "fast" in label else "tab:blue", label=label)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set(ylim=(0, 1), ylabel="share of relevance", title="Relevance through time: transformers and SlowFast")
    fig.tight_layout()
    path = folder / "temporal_and_fast_share.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def publish_readme(readme: Path, text: str) -> None:
    """Replace the README's block between the results markers by ``text``."""
    body = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in body or end not in body:
        raise ValueError(f"{readme} has no '{start}' ... '{end}' block; add the two markers where the tables go")
    readme.write_text(body[: body.index(start) + len(start)] + "\n" + text + body[body.index(end):])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outputs", type=Path, default=HERE / "outputs")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--no-collect", action="store_true", help="summarise the committed files only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.no_collect:
        runs = collect_train(args.outputs / "train")
        write_csv(args.results / "runs.csv", runs, RUN_COLUMNS)
        explained = collect_explain(args.outputs / "explain")
        for name, rows in explained.items():
            write_csv(args.results / "clips" / f"{name}.csv", rows, CLIP_COLUMNS)
        for stale in sorted((args.results / "clips").glob("*.csv")):  # generated folder: a run no longer explained
            if stale.stem not in explained:
                log.info("removing %s: no finished explanation of that run in %s", stale, args.outputs / "explain")
                stale.unlink()
        write_csv(args.results / "compute.csv", collect_compute(args.outputs), COMPUTE_COLUMNS)
        for line in missing_jobs(args.outputs):
            log.info("planned, not finished: %s", line)
    runs, clips = read_results(args.results)
    summary = summarise(runs, clips)
    write_csv(args.results / "summary.csv", summary, SUMMARY_COLUMNS)
    summary = read_csv(args.results / "summary.csv")  # the README is generated from the file as committed
    text = (tables(runs, summary) + calibration(summary) + trials_table(args.results / "recipe_trials.csv", runs)
            + compute_line(args.results / "compute.csv"))
    figures(summary, args.results / "figures")
    text += ("\n![motion reliance against spatial bias](results/figures/reliance_vs_spatial_bias.png)\n"
             "![temporal and fast-pathway share](results/figures/temporal_and_fast_share.png)\n")
    if args.readme.is_file():
        publish_readme(args.readme, text)
    print(text)
    print(f"{len(runs)} trainings, {len(clips)} explained runs; results in {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
