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
``.hydra/config.yaml``) is aggregated into ``sigma_report.{md,csv}`` plus ``sigma_report.png`` (metrics against
sigma).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TABLES: dict[str, tuple[str, ...]] = {
    "table1_precision": ("precision",),
    "table2_agreement": ("agreement",),
    "table3_selectivity": ("selectivity_area", "selectivity_mass"),
    "table4_overhead": ("overhead_ms",),
    "table5_ground_truth": ("gt_precision", "gt_recall", "gt_f1", "motion_share", "spatial_bias"),
}
_SUFFIXES = ("std", "n", "n_undefined")


def _methods(metrics: Mapping[str, Any], stage: str, metric: str) -> list[str]:
    prefix = f"{stage}/{metric}/"
    return [key[len(prefix):] for key in metrics if key.startswith(prefix)]


def table_rows(metrics: Mapping[str, Any], stage: str, metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method with ``<metric>``, ``<metric>_std``, ``<metric>_n`` … columns (None where missing)."""
    methods: list[str] = []
    for metric in metric_names:
        for method in _methods(metrics, stage, metric):
            if method not in methods:
                methods.append(method)
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for metric in metric_names:
            row[metric] = metrics.get(f"{stage}/{metric}/{method}")
            for suffix in _SUFFIXES:
                row[f"{metric}_{suffix}"] = metrics.get(f"{stage}/{metric}_{suffix}/{method}")
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
    columns = [c for c in rows[0] if not c.endswith("_std")]
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


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in columns})


def write_tables(metrics: Mapping[str, Any], out_dir: str | Path, stage: str = "test") -> dict[str, list[dict]]:
    """Write Tables 1–5 (markdown + CSV) of ``stage`` into ``out_dir``; returns name -> rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {name: table_rows(metrics, stage, names) for name, names in TABLES.items()}
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
def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _job_overrides(job: Path) -> dict[str, str]:
    overrides = job / ".hydra" / "overrides.yaml"
    if not overrides.exists():
        return {}
    import yaml

    items = yaml.safe_load(overrides.read_text()) or []
    return dict(item.split("=", 1) for item in items if "=" in item and not item.startswith("~"))


def _job_config(job: Path) -> dict[str, Any]:
    config = job / ".hydra" / "config.yaml"
    if not config.exists():
        return {}
    import yaml

    return _flatten(yaml.safe_load(config.read_text()) or {})


def multirun_rows(folder: str | Path, stage: str = "test") -> list[dict[str, Any]]:
    """One row per (job, method) with the job's overrides and every metric of that method."""
    rows = []
    jobs = sorted((p for p in Path(folder).iterdir() if (p / "metrics.json").exists()), key=lambda p: p.name)
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        config = _job_config(job)
        overrides = _job_overrides(job)
        sigma = config.get("selective.sigma")
        methods = sorted({k.split("/", 2)[2] for k in metrics if k.startswith(f"{stage}/") and k.count("/") == 2})
        for method in methods:
            row: dict[str, Any] = {"job": job.name, **overrides, "sigma": sigma, "method": method}
            for key, value in metrics.items():
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == stage and parts[2] == method:
                    row[parts[1]] = value
            rows.append(row)
    return rows


def write_multirun_report(folder: str | Path, stage: str = "test") -> Path:
    """Aggregate a multirun folder into ``sigma_report.{md,csv,png}`` inside it."""
    folder = Path(folder)
    rows = multirun_rows(folder, stage)
    if not rows:
        raise FileNotFoundError(f"{folder} holds no job folders with metrics.json (is it a multirun folder?)")
    write_csv(rows, folder / "sigma_report.csv")
    columns = ["job", "sigma", "method", "precision", "selectivity_area", "selectivity_mass", "gt_f1"]
    compact = [{c: row.get(c) for c in columns if any(c in r for r in rows)} for row in rows]
    (folder / "sigma_report.md").write_text(to_markdown(compact, title=f"sigma sweep ({folder.name})"))
    try:
        from motion_relevance.viz.plots import plot_metric_vs_sigma

        selective = [r for r in rows if "_selective" in str(r["method"]) and r.get("sigma") is not None]
        for r in selective:
            r["method"] = str(r["method"]).split("_selective")[0]
        plot_metric_vs_sigma(
            selective or rows, folder / "sigma_report.png",
            metrics=[m for m in ("precision", "selectivity_area", "selectivity_mass", "gt_f1")
                     if any(r.get(m) is not None for r in rows)],
        )
    except ImportError:  # pragma: no cover - viz is part of the package
        pass
    return folder / "sigma_report.md"


def main(argv: Sequence[str] | None = None) -> None:
    """``mr-report <run or multirun folder> [--stage test]``."""
    parser = argparse.ArgumentParser(prog="mr-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder (with metrics.json) or a multirun folder")
    parser.add_argument("--stage", default="test", help="metric prefix to report (test or val)")
    args = parser.parse_args(argv)
    folder: Path = args.folder
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder")
    if (folder / "metrics.json").exists():
        metrics = json.loads((folder / "metrics.json").read_text())
        write_tables(metrics, folder / "tables", stage=args.stage)
        print((folder / "tables" / "tables.md").read_text())
        print(f"Tables written to {folder / 'tables'}")
    else:
        path = write_multirun_report(folder, stage=args.stage)
        print(path.read_text())
        print(f"Report written to {path.parent}")


if __name__ == "__main__":
    main()
