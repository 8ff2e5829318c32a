"""Paper-style tables from a run folder, and a sigma report from a multirun folder: ``mr-report <folder>``.

A run folder (``mr-explain`` or ``mr-train`` with the explanation callbacks) holds ``metrics.json`` with flat keys
``<stage>/<metric>/<method>`` (means) and ``<stage>/<metric>_std|_n|_n_undefined/<method>``. From these:

- Table 1 ``table1_precision``: motion-selection precision against optical flow, per method (baseline and
  selective);
- Table 2 ``table2_agreement``: IoU of the positive-relevance voxels of every pair of methods;
- Table 3 ``table3_selectivity``: area and mass ratio kept by selective relevance, per method;
- Table 4 ``table4_overhead``: ms per clip of each explanation and of the selective step;
- ``table5_ground_truth`` (synthetic data): ground-truth precision, recall, F1, motion share and spatial bias.

Each is written as markdown and CSV. A multirun folder (jobs ``0/``, ``1/`` … each with ``metrics.json`` and
``.hydra/config.yaml``) is aggregated into ``sigma_report.{md,csv}`` (one row per sigma and method: selective
precision, ground-truth F1, selectivity, the job's objective), ``best_sigma.csv`` and ``sigma_report.png``
(metrics against sigma); an Optuna multirun's ``optimization_results.yaml`` is appended. A run folder of a
sigma-list job (``selective.sigma=[1,2,3]``) gets the same sigma report beside its tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from motion_relevance.metrics import keys
from motion_relevance.pipeline.results import REFERENCES, methods_of, randomization_rows
from motion_relevance.utils.mapping import flatten_mapping
from motion_relevance.viz.plots import plot_metric_vs_sigma

METRICS = "metrics.json"

TABLES: dict[str, tuple[str, ...]] = {
    "table1_precision": ("precision",),
    "table2_agreement": ("agreement",),
    "table3_selectivity": ("selectivity_area", "selectivity_mass"),
    "table4_overhead": ("overhead_ms",),
    "table5_ground_truth": ("gt_precision", "gt_recall", "gt_f1", "motion_share", "spatial_bias"),
}
_SUFFIXES = ("std", "n", "n_undefined")


def table_rows(metrics: Mapping[str, Any], stage: str, metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method with ``<metric>``, ``<metric>_std``, ``<metric>_n`` … columns (None where missing)."""
    methods: list[str] = []
    for metric in metric_names:
        for method in methods_of(metrics, stage, metric):
            if method not in methods:
                methods.append(method)
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for metric in metric_names:
            row[metric] = metrics.get(keys.metric_key(stage, metric, method))
            for suffix in _SUFFIXES:
                row[f"{metric}_{suffix}"] = metrics.get(keys.metric_key(stage, metric, method, suffix))
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4g}"
    return str(value)


def to_markdown(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> str:
    """A GitHub markdown table; ``x`` with an ``x_std`` column is shown as ``mean ± std``."""
    if not rows:
        return f"### {title}\n\n(no data)\n" if title else "(no data)\n"
    columns = [c for c in _columns(rows) if not c.endswith("_std")]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for column in columns:
            cell = _fmt(row.get(column))
            std = row.get(f"{column}_std")
            if std is not None and row.get(column) is not None:
                cell = f"{cell} ± {_fmt(std)}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every row's columns, in order of first appearance (rows may have different columns)."""
    return list(dict.fromkeys(c for row in rows for c in row))


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    columns = _columns(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in columns})


def faithfulness_rows(metrics: Mapping[str, Any], stage: str) -> list[dict[str, Any]]:
    """Table 6: one row per (method, reference) with the deletion/insertion AUC, the random floor and the
    matched-budget drops of the selective map, the baseline's top-m voxels and m random voxels."""
    rows = []
    for ref in REFERENCES:
        methods = [m for m in methods_of(metrics, stage, f"deletion_auc_{ref}") if m != "random"]
        for method in methods:
            row: dict[str, Any] = {"method": method, "reference": ref}
            for column, metric, name in (
                ("deletion_auc", f"deletion_auc_{ref}", method), ("insertion_auc", f"insertion_auc_{ref}", method),
                ("deletion_auc_random", f"deletion_auc_{ref}", "random"),
                ("insertion_auc_random", f"insertion_auc_{ref}", "random"),
            ):
                row[column] = metrics.get(keys.metric_key(stage, metric, name))
                row[f"{column}_std"] = metrics.get(keys.metric_key(stage, metric, name, "std"))
            for selective in [m for m in methods_of(metrics, stage, f"freeze_drop_{ref}")
                              if (keys.split_selective(m) or ("",))[0] == method] or [None]:
                full = dict(row)
                if selective is not None:
                    sigma = keys.split_selective(selective)[1]
                    base = keys.at_sigma(method, sigma or 0.0, sigma is not None)
                    full["selective_map"] = selective
                    for column, metric, name in (
                        ("drop_selective", f"freeze_drop_{ref}", selective), ("drop_topm", f"topm_drop_{ref}", base),
                        ("drop_random", f"random_drop_{ref}", base),
                        ("advantage_vs_random", f"drop_advantage_random_{ref}", base),
                        ("budget_voxels", "drop_budget", base),
                    ):
                        full[column] = metrics.get(keys.metric_key(stage, metric, name))
                        full[f"{column}_std"] = metrics.get(keys.metric_key(stage, metric, name, "std"))
                rows.append(full)
    return rows


def write_tables(metrics: Mapping[str, Any], out_dir: str | Path, stage: str = "test") -> dict[str, list[dict]]:
    """Write Tables 1–7 (markdown + CSV) of ``stage`` into ``out_dir``; returns name -> rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {name: table_rows(metrics, stage, names) for name, names in TABLES.items()}
    tables["table6_faithfulness"] = faithfulness_rows(metrics, stage)
    tables["table7_randomization"] = randomization_rows(metrics, stage)
    markdown = []
    for name, rows in tables.items():
        if not rows:
            continue
        write_csv(rows, out / f"{name}.csv")
        text = to_markdown(rows, title=name)
        (out / f"{name}.md").write_text(text)
        markdown.append(text)
    (out / "tables.md").write_text("\n".join(markdown) if markdown else "(no explanation metrics in this run)\n")
    return tables


# ------------------------------------------------------------------ multirun
def _job_overrides(job: Path) -> dict[str, str]:
    overrides = job / ".hydra" / "overrides.yaml"
    if not overrides.exists():
        return {}
    items = yaml.safe_load(overrides.read_text()) or []
    return dict(item.split("=", 1) for item in items if "=" in item and not item.startswith("~"))


def _job_config(job: Path) -> dict[str, Any]:
    config = job / ".hydra" / "config.yaml"
    if not config.exists():
        return {}
    return flatten_mapping(yaml.safe_load(config.read_text()) or {})


#: Columns of the sigma report: baseline metric, the selective map's metrics, and selectivity at that sigma.
SIGMA_COLUMNS = (
    "precision", "precision_selective", "gt_f1", "gt_f1_selective", "gt_precision_selective",
    "gt_recall_selective", "motion_share_selective", "selectivity_area", "selectivity_mass", "spatial_bias",
    "freeze_drop_freeze_selective", "drop_advantage_random_freeze",
)
#: Plotted against sigma (those present).
SIGMA_PLOT = ("precision_selective", "gt_f1_selective", "selectivity_area", "selectivity_mass")


def _basemethods_of(metrics: Mapping[str, Any], stage: str) -> list[str]:
    """Baseline explainer names: methods with metrics that are neither selective maps, pairs nor per-sigma stats."""
    names = set()
    for key in metrics:
        parsed = keys.parse_key(key)
        if parsed is not None and parsed.stage == stage and keys.is_baseline(parsed.method):
            names.add(parsed.method)
    return sorted(names)


def _key_sigmas(metrics: Mapping[str, Any], stage: str) -> set[float]:
    """The sigmas of ``…_selective_s<sigma>`` keys (a sigma-list run)."""
    found = set()
    for key in metrics:
        parsed = keys.parse_key(key)
        if parsed is not None and parsed.stage == stage:
            split = keys.split_selective(parsed.method)
            if split is not None and split[1] is not None:
                found.add(split[1])
    return found


def run_sigmas(metrics: Mapping[str, Any], config_sigma: Any, stage: str = "test") -> list[float]:
    """The sigmas a run evaluated: parsed from ``…_selective_s<sigma>`` keys (a sigma list), else the config's."""
    found = _key_sigmas(metrics, stage)
    if found:
        return sorted(found)
    if isinstance(config_sigma, (int, float)):
        return [float(config_sigma)]
    return []


def sigma_rows(metrics: Mapping[str, Any], config_sigma: Any, stage: str = "test",
               extra: Mapping[str, Any] | None = None, objective_method: str | None = None) -> list[dict[str, Any]]:
    """One row per (sigma, baseline method) of one run, for single-sigma and sigma-list runs alike.

    The run's sweep ``objective`` goes on the row of ``objective_method`` (the config's ``objective.method``).
    """
    sigmas = run_sigmas(metrics, config_sigma, stage)
    multi = bool(_key_sigmas(metrics, stage))
    rows = []
    for sigma in sigmas:
        for base in _basemethods_of(metrics, stage):
            selective = keys.selective(base, sigma, multi)
            at_sigma = keys.at_sigma(base, sigma, multi)
            row: dict[str, Any] = {**(extra or {}), "sigma": sigma, "method": base}
            for column in SIGMA_COLUMNS:
                if column.endswith("_selective"):
                    metric, method = column[: -len("_selective")], selective
                elif column in ("selectivity_area", "selectivity_mass", "spatial_bias", "drop_advantage_random_freeze"):
                    metric, method = column, at_sigma
                else:
                    metric, method = column, base
                row[column] = metrics.get(keys.metric_key(stage, metric, method))
                std = metrics.get(keys.metric_key(stage, metric, method, "std"))
                if std is not None:
                    row[f"{column}_std"] = std
            if base == objective_method:
                row["objective"] = metrics.get(f"objective/s{sigma:g}") if multi else metrics.get("objective")
            rows.append(row)
    return rows


@dataclass
class JobProblem:
    """A job of a multirun folder whose results cannot be read."""

    job: str
    problem: str


def _is_job(path: Path) -> bool:
    return path.is_dir() and ((path / ".hydra").is_dir() or (path / METRICS).exists())


def _job_dirs(folder: Path) -> list[Path]:
    jobs = [p for p in folder.iterdir() if _is_job(p)]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def read_metrics(path: Path) -> dict[str, Any]:
    """A run's ``metrics.json``; ``ValueError`` naming the file and the position of a broken (e.g. truncated) one."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); the run "
                         "was probably interrupted while writing it") from None
    except OSError as err:
        raise ValueError(f"{path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a mapping of metric names to values")
    return data


def multirun_rows(folder: str | Path, stage: str = "test") -> tuple[list[dict[str, Any]], list[JobProblem]]:
    """One row per (job, sigma, method) of a multirun folder, with the job's overrides (``sigma_rows``), and the
    jobs whose results are missing or unreadable."""
    rows, problems = [], []
    for job in _job_dirs(Path(folder)):
        if not (job / METRICS).exists():
            problems.append(JobProblem(job.name, f"no {METRICS} (the job failed or is still running)"))
            continue
        try:
            metrics = read_metrics(job / METRICS)
        except ValueError as err:
            problems.append(JobProblem(job.name, str(err)))
            continue
        config = _job_config(job)
        overrides = {k: v for k, v in _job_overrides(job).items() if k != "selective.sigma"}
        job_rows = sigma_rows(metrics, config.get("selective.sigma"), stage, extra={"job": job.name, **overrides},
                              objective_method=config.get("objective.method"))
        if not job_rows:
            problems.append(JobProblem(job.name, f"{METRICS} holds no selective-relevance metrics of stage {stage!r}"))
        rows += job_rows
    return rows, problems


def _best_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method, the sigma with the highest objective-like value (gt F1 of the selective map, else precision)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        for metric in ("gt_f1_selective", "precision_selective"):
            value = row.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                break
        else:
            continue
        current = best.get(row["method"])
        if current is None or value > current["value"]:
            best[row["method"]] = {"method": row["method"], "criterion": metric, "best_sigma": row["sigma"],
                                   "value": value}
    return list(best.values())


def write_sigma_report(rows: Sequence[Mapping[str, Any]], folder: str | Path, title: str,
                       problems: Sequence[JobProblem] = (), jobs: int | None = None) -> Path:
    """``sigma_report.{md,csv,png}`` (and ``best_sigma.csv``) of ``rows`` into ``folder``; returns the md path.

    ``problems`` (jobs whose results are missing or broken) are listed in the report, and the best sigma is then
    marked as chosen from an incomplete sweep.
    """
    folder = Path(folder)
    if not rows:
        raise FileNotFoundError(f"{folder} holds no sigma results (no selective-relevance metrics)")
    rows = sorted(rows, key=lambda r: (str(r["method"]), float(r["sigma"]), str(r.get("job", ""))))
    write_csv(rows, folder / "sigma_report.csv")
    shown = ["job", "sigma", "method", "precision_selective", "gt_f1_selective", "selectivity_area",
             "selectivity_mass", "freeze_drop_freeze_selective", "drop_advantage_random_freeze", "objective"]
    shown = [c for c in shown if any(r.get(c) is not None for r in rows)]
    compact = [{c: r.get(c) for c in shown} | {f"{c}_std": r.get(f"{c}_std") for c in shown
                                               if r.get(f"{c}_std") is not None} for r in rows]
    best = _best_rows(rows)
    text = to_markdown(compact, title=title)
    if problems:
        text += (f"\n### Jobs left out ({len(problems)} of {jobs if jobs is not None else '?'})\n\n"
                 + "".join(f"- job {p.job}: {p.problem}\n" for p in problems))
        for row in best:
            row["complete_sweep"] = False
    if best:
        write_csv(best, folder / "best_sigma.csv")
        title_best = "best sigma per method" + (" (INCOMPLETE sweep: over the readable jobs only)" if problems else "")
        text += "\n" + to_markdown(best, title=title_best)
    (folder / "sigma_report.md").write_text(text)
    plotted = [m for m in SIGMA_PLOT if any(isinstance(r.get(m), (int, float)) for r in rows)]
    if plotted and len({r["sigma"] for r in rows}) > 1:
        plot_metric_vs_sigma(rows, folder / "sigma_report.png", metrics=plotted, title=title)
    return folder / "sigma_report.md"


def write_multirun_report(folder: str | Path, stage: str = "test") -> Path:
    """Aggregate a multirun folder into ``sigma_report.{md,csv,png}`` inside it; also lists Optuna trials.

    Jobs without a readable ``metrics.json`` are named in the report (and logged); a folder with no readable job
    raises ``FileNotFoundError`` naming them.
    """
    folder = Path(folder).resolve()
    rows, problems = multirun_rows(folder, stage)
    for problem in problems:
        print(f"warning: job {problem.job} left out: {problem.problem}", file=sys.stderr)
    if not rows:
        detail = "; ".join(f"job {p.job}: {p.problem}" for p in problems[:5]) or "no job folders"
        raise FileNotFoundError(f"{folder} holds no readable job results ({detail})")
    path = write_sigma_report(rows, folder, title=f"sigma sweep ({folder.name})", problems=problems,
                              jobs=len(_job_dirs(folder)))
    results = folder / "optimization_results.yaml"
    if results.exists():
        with open(path, "a") as handle:
            handle.write("\n### Optuna search\n\n```yaml\n" + results.read_text() + "```\n")
    return path


def folder_kind(folder: Path) -> str:
    """``"run"`` (a ``metrics.json``), ``"multirun"`` (Hydra's ``multirun.yaml`` or job folders) or ``"none"``."""
    if (folder / METRICS).exists():
        return "run"
    if (folder / "multirun.yaml").exists() or any(_is_job(p) for p in folder.iterdir()):
        return "multirun"
    return "none"


def main(argv: Sequence[str] | None = None) -> None:
    """``mr-report <run or multirun folder> [--stage test]``."""
    parser = argparse.ArgumentParser(prog="mr-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder (with metrics.json) or a multirun folder")
    parser.add_argument("--stage", default="test", help="metric prefix to report (test or val)")
    args = parser.parse_args(argv)
    folder: Path = args.folder
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder")
    kind = folder_kind(folder)
    if kind == "none":
        parser.error(f"{folder} is neither a run folder (no {METRICS}) nor a multirun folder (no multirun.yaml, no "
                     "job folders with .hydra/): nothing was written. Pass logs/explain/runs/<run> or "
                     "logs/explain/multiruns/<sweep>")
    try:
        if kind == "run":
            metrics = read_metrics(folder / METRICS)
            write_tables(metrics, folder / "tables", stage=args.stage)
            print((folder / "tables" / "tables.md").read_text())
            print(f"Tables written to {folder / 'tables'}")
            config = _job_config(folder)
            sigma = config.get("selective.sigma")
            if len(run_sigmas(metrics, sigma, args.stage)) > 1:  # a sigma-list run: compare its sigmas too
                rows = sigma_rows(metrics, sigma, args.stage, objective_method=config.get("objective.method"))
                path = write_sigma_report(rows, folder, title=f"sigma list ({folder.resolve().name})")
                print(path.read_text())
        else:
            path = write_multirun_report(folder, stage=args.stage)
            print(path.read_text())
            print(f"Report written to {path.parent}")
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"mr-report: error: {err}\n")


if __name__ == "__main__":
    main()
