"""Paper-style tables from a run folder, and a sigma report from a multirun folder: ``mr-report <folder>``.

A run folder (``mr-explain`` or ``mr-train`` with the explanation callbacks) holds ``metrics.json`` with flat keys
``<stage>/<metric>/<method>`` (means) and ``<stage>/<metric>_std|_n|_n_undefined/<method>``; its tables (written by
the run itself, see :mod:`motion_relevance.pipeline.tables`) are rebuilt from these into ``tables/``.

A multirun folder (jobs ``0/``, ``1/`` … each with ``metrics.json`` and ``.hydra/config.yaml``) is aggregated into
``sigma_report.{md,csv}`` (one row per sigma and method: selective precision, ground-truth F1, selectivity, the
job's objective), ``best_sigma.csv`` and ``sigma_report.png`` (metrics against sigma); an Optuna multirun's
``optimization_results.yaml`` is appended. Every job the sweep planned (its ``multirun.yaml``) that has no readable
result is named, also those that never started. A run folder of a sigma-list job (``selective.sigma=[1,2,3]``)
gets the same sigma report beside its tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from motion_relevance.metrics import keys
from motion_relevance.pipeline.record import METRICS_FILE
from motion_relevance.pipeline.report_page import write_report_page
from motion_relevance.pipeline.tables import (  # noqa: F401 - the table builders' former home re-exports them
    REFERENCES,
    TABLES,
    faithfulness_rows,
    methods_of,
    randomization_rows,
    table_rows,
    to_markdown,
    write_csv,
    write_faithfulness_figures,
    write_tables,
)
from motion_relevance.utils.mapping import flatten_mapping
from motion_relevance.viz.plots import plot_metric_vs_sigma


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


def _base_methods(metrics: Mapping[str, Any], stage: str) -> list[str]:
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
        for base in _base_methods(metrics, stage):
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
    return path.is_dir() and ((path / ".hydra").is_dir() or (path / METRICS_FILE).exists())


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


def planned_jobs(folder: str | Path) -> list[list[str]] | None:
    """The jobs a sweep planned, each as its overrides, from its ``multirun.yaml`` (Hydra's basic sweeper: the
    product of the sweep overrides and ``hydra.sweeper.params``; an Optuna sweeper: ``n_trials`` jobs, overrides
    unknown); ``None`` when the folder does not say."""
    path = Path(folder) / "multirun.yaml"
    if not path.exists():
        return None
    try:
        hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
        sweeper = hydra.get("sweeper") or {}
        if str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
            params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
            task = list((hydra.get("overrides") or {}).get("task") or [])
            choices = []
            for override in OverridesParser.create().parse_overrides(params + task):
                key = override.get_key_element()
                values = override.sweep_string_iterator() if override.is_sweep_override() else \
                    [override.get_value_element_as_str()]
                choices.append([f"{key}={v}" for v in values])
            return [list(job) for job in itertools.product(*choices)]
        trials = sweeper.get("n_trials")
        if isinstance(trials, int) and not isinstance(trials, bool) and trials > 0:
            return [[] for _ in range(trials)]
    except Exception as err:  # noqa: BLE001 - a report of the jobs that exist is still worth writing
        print(f"warning: {path} does not say which jobs the sweep planned ({type(err).__name__}: {err}); only the "
              "job folders present are reported", file=sys.stderr)
    return None


def _sweep_overrides(job: list[str]) -> str:
    return " ".join(job) if job else "overrides chosen by the sweeper"


def multirun_rows(folder: str | Path, stage: str = "test") -> tuple[list[dict[str, Any]], list[JobProblem]]:
    """One row per (job, sigma, method) of a multirun folder, with the job's overrides (``sigma_rows``), and the
    jobs whose results are missing or unreadable, including the planned jobs (:func:`planned_jobs`) that never
    started (no folder)."""
    rows, problems = [], []
    folder = Path(folder)
    present = {job.name for job in _job_dirs(folder)}
    for number, overrides in enumerate(planned_jobs(folder) or []):
        if str(number) not in present:
            problems.append(JobProblem(str(number), f"no job folder: the job never started "
                                                    f"({_sweep_overrides(overrides)})"))
    for job in _job_dirs(folder):
        if not (job / METRICS_FILE).exists():
            problems.append(JobProblem(job.name, f"no {METRICS_FILE} (the job failed or is still running)"))
            continue
        try:
            metrics = read_metrics(job / METRICS_FILE)
        except ValueError as err:
            problems.append(JobProblem(job.name, str(err)))
            continue
        config = _job_config(job)
        overrides = {k: v for k, v in _job_overrides(job).items() if k != "selective.sigma"}
        job_rows = sigma_rows(metrics, config.get("selective.sigma"), stage, extra={"job": job.name, **overrides},
                              objective_method=config.get("objective.method"))
        if not job_rows:
            problems.append(JobProblem(job.name, f"{METRICS_FILE} holds no selective-relevance metrics of stage "
                                                 f"{stage!r}"))
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
    problems = sorted(problems, key=lambda p: (not p.job.isdigit(), int(p.job) if p.job.isdigit() else 0, p.job))
    for problem in problems:
        print(f"warning: job {problem.job} left out: {problem.problem}", file=sys.stderr)
    if not rows:
        detail = "; ".join(f"job {p.job}: {p.problem}" for p in problems) or "no job folders"
        raise FileNotFoundError(f"{folder} holds no readable job results ({detail})")
    planned = len(planned_jobs(folder) or [])
    path = write_sigma_report(rows, folder, title=f"sigma sweep ({folder.name})", problems=problems,
                              jobs=max(planned, len(_job_dirs(folder))))
    results = folder / "optimization_results.yaml"
    if results.exists():
        with open(path, "a") as handle:
            handle.write("\n### Optuna search\n\n```yaml\n" + results.read_text() + "```\n")
    return path


def folder_kind(folder: Path) -> str:
    """``"run"`` (a ``metrics.json``), ``"multirun"`` (Hydra's ``multirun.yaml`` or job folders) or ``"none"``."""
    if (folder / METRICS_FILE).exists():
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
        parser.error(f"{folder} is neither a run folder (no {METRICS_FILE}) nor a multirun folder (no multirun.yaml, "
                     "no job folders with .hydra/): nothing was written. Pass logs/explain/runs/<run> or "
                     "logs/explain/multiruns/<sweep>")
    try:
        if kind == "run":
            metrics = read_metrics(folder / METRICS_FILE)
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
        print(f"Report page: {write_report_page(folder)}")
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"mr-report: error: {err}\n")


if __name__ == "__main__":
    main()
