"""Paper-style tables and curve figures from a run's flat metrics (``<stage>/<metric>[_<stat>]/<method>`` keys).

The builders turn the metrics of one stage into rows (one per method, or per method and reference / stage) and
write them as markdown and CSV; :func:`write_tables` writes Tables 1-9 into a run folder's ``tables/``,
:func:`write_faithfulness_figures` the deletion/insertion, randomisation and per-frame relevance curves. The
explanation callback writes them at the end of each explained stage (``mr-explain`` and ``mr-train
callbacks=explain`` alike);
``mr-report`` rebuilds them from a run folder's ``metrics.json``. Plain code: no Lightning or Hydra.

- Table 1 ``table1_precision``: motion-selection precision against optical flow, per method (baseline and
  selective);
- Table 2 ``table2_agreement``: IoU of the positive-relevance voxels of every pair of methods;
- Table 3 ``table3_selectivity``: area and mass ratio kept by selective relevance, per method;
- Table 4 ``table4_overhead``: ms per clip of each explanation and of the selective step;
- ``table5_ground_truth`` (synthetic data): ground-truth precision, recall, F1, motion share and spatial bias;
- ``table6_faithfulness``: deletion/insertion AUCs and matched-budget drops; ``table7_randomization``: Spearman
  correlations of the cascading randomisation check;
- ``table8_temporal``: the temporal-window drops (selective, baseline, random top frame) and the selective - random
  advantage (:mod:`motion_relevance.pipeline.temporal`);
- ``table9_temporal_share``: the cross-frame share of the relevance through a video transformer's attention
  products, per AttnLRP explainer (models with a token -> frame map: VideoMAE).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from motion_relevance.metrics import keys
from motion_relevance.pipeline.temporal import TABLE, temporal_rows, write_temporal_figure
from motion_relevance.viz.plots import plot_faithfulness_curves, plot_randomization

__all__ = ["REFERENCES", "TABLES", "build_tables", "faithfulness_rows", "randomization_rows", "table_rows",
           "to_markdown", "write_csv", "write_faithfulness_figures", "write_tables"]

#: ``guard(writer, path, write)``: runs ``write()`` for the file ``path`` (a run record isolates and reports a
#: failing writer, see :class:`motion_relevance.pipeline.record.RunRecord`); the default just calls it.
Guard = Callable[[str, Path, Callable[[], Any]], Any]


def _call(writer: str, path: Path, write: Callable[[], Any]) -> Any:
    return write()


TABLES: dict[str, tuple[str, ...]] = {
    "table1_precision": ("precision",),
    "table2_agreement": ("agreement",),
    "table3_selectivity": ("selectivity_area", "selectivity_mass"),
    "table4_overhead": ("overhead_ms",),
    "table5_ground_truth": ("gt_precision", "gt_recall", "gt_f1", "motion_share", "spatial_bias"),
    "table6_motion_reliance": ("motion_reliance", "motion_reliance_lo", "motion_reliance_hi", "full_freeze_drop",
                               "full_static_drop", "full_mean_drop"),
    "table9_temporal_share": (keys.TEMPORAL_SHARE,),
}
#: Removal references of the faithfulness tests (``metrics.faithfulness.REFERENCES``).
REFERENCES = ("freeze", "mean", "blur")
_SUFFIXES = ("std", "n", "n_undefined")


def methods_of(metrics: Mapping[str, Any], stage: str, metric: str) -> list[str]:
    out = []
    for key in metrics:
        parsed = keys.parse_key(key)
        if parsed is not None and (parsed.stage, parsed.metric, parsed.stat) == (stage, metric, "mean"):
            out.append(parsed.method)
    return out


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


#: Significant figures of the numbers in markdown tables (the CSVs keep full precision).
SIGNIFICANT_FIGURES = 3


def _fmt(value: Any) -> str:
    """A cell of a markdown table: counts as integers, other numbers to three significant figures."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) < 10**SIGNIFICANT_FIGURES:
            return f"{value:.0f}"
        return f"{value:.{SIGNIFICANT_FIGURES}g}"
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


def randomization_rows(metrics: Mapping[str, Any], stage: str) -> list[dict[str, Any]]:
    """Table 7: one row per (method, stage) with the Spearman correlation of the baseline and the selective map."""
    stages = list(metrics.get(f"{stage}/randomization_stages") or [])
    rows = []
    for method in methods_of(metrics, stage, "randomization_s0"):
        if not keys.is_baseline(method):
            continue
        selective = next((m for m in methods_of(metrics, stage, "randomization_s0")
                          if (keys.split_selective(m) or ("",))[0] == method), None)
        k = 0
        while keys.metric_key(stage, f"randomization_s{k}", method) in metrics:
            row: dict[str, Any] = {"method": method, "stage": k, "layer": stages[k] if k < len(stages) else str(k)}
            for column, name in (("spearman", method), ("spearman_selective", selective)):
                row[column] = metrics.get(keys.metric_key(stage, f"randomization_s{k}", name)) if name else None
                row[f"{column}_std"] = (metrics.get(keys.metric_key(stage, f"randomization_s{k}", name, "std"))
                                        if name else None)
            rows.append(row)
            k += 1
    return rows


def randomization_markdown(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> str:
    """Table 7 for reading: one row per randomisation stage (and the layer randomised last), one column per map
    (each baseline and its selective map), ``mean ± std`` of the Spearman correlation. The CSV keeps the long rows
    of :func:`randomization_rows`."""
    stages: dict[Any, dict[str, Any]] = {}
    columns: list[str] = []
    for row in rows:
        line = stages.setdefault(row["stage"], {"stage": row["stage"], "layer": row.get("layer")})
        for column, suffix in (("spearman", ""), ("spearman_selective", "_selective")):
            name = f"{row['method']}{suffix}"
            if row.get(column) is None:
                continue
            line[name] = row[column]
            line[f"{name}_std"] = row.get(f"{column}_std")
            if name not in columns:
                columns.append(name)
    wide = []
    for line in stages.values():
        cells: dict[str, Any] = {"stage": line["stage"], "layer": line["layer"]}
        for name in columns:
            cells[name] = line.get(name)
            cells[f"{name}_std"] = line.get(f"{name}_std")
        wide.append(cells)
    return to_markdown(wide, title=title)


def write_faithfulness_figures(metrics: Mapping[str, Any], out_dir: str | Path, stage: str = "test",
                               guard: Guard = _call) -> list[Path]:
    """The deletion/insertion curves (one figure per reference, random floor dashed), the randomisation curves and
    the per-frame relevance curves (``<stage>_temporal.png``) of ``stage`` from a run's metrics
    (``<stage>/faithfulness_curves``, ``<stage>/randomization_s<k>/…``, ``<stage>/temporal_curves``); returns
    the figures written (a figure whose ``guard`` reports a failure is left out)."""
    out = Path(out_dir)
    paths: list[Path] = []

    def draw(name: str, path: Path, plot: Callable[[], Path]) -> None:
        written = guard(name, path, plot)
        if written is not None:
            paths.append(Path(written))

    curves = metrics.get(f"{stage}/faithfulness_curves") or {}
    steps = metrics.get(f"{stage}/faithfulness_steps")
    for ref in REFERENCES:
        if steps and any(k.split("/")[1] == ref for k in curves):
            path = out / f"{stage}_faithfulness_{ref}.png"
            draw("faithfulness figure", path, lambda path=path, ref=ref: plot_faithfulness_curves(
                curves, int(steps), path, reference=ref))
    rows = randomization_rows(metrics, stage)
    if rows:
        by_method: dict[str, tuple[list, list]] = {}
        for row in rows:
            base, sel = by_method.setdefault(row["method"], ([], []))
            base.append(row["spearman"])
            sel.append(row["spearman_selective"])
        layers = [row["layer"] for row in rows if row["method"] == rows[0]["method"]]
        path = out / f"{stage}_randomization.png"
        draw("randomisation figure", path, lambda: plot_randomization(layers, by_method, path,
                                                                      title="cascading model randomisation"))
    if metrics.get(f"{stage}/temporal_curves"):
        draw("per-frame relevance figure", out / f"{stage}_temporal.png",
             lambda: write_temporal_figure(metrics, out, stage))
    return paths


def build_tables(metrics: Mapping[str, Any], stage: str = "test") -> dict[str, list[dict[str, Any]]]:
    """Tables 1–9 of ``stage``: name -> rows (empty where the run has no such metrics)."""
    tables = {name: table_rows(metrics, stage, names) for name, names in TABLES.items()}
    tables["table6_faithfulness"] = faithfulness_rows(metrics, stage)
    tables["table7_randomization"] = randomization_rows(metrics, stage)
    tables[TABLE] = temporal_rows(metrics, stage)
    tables["table9_temporal_share"] = tables.pop("table9_temporal_share")  # listed after Table 8
    return tables


def write_tables(metrics: Mapping[str, Any], out_dir: str | Path, stage: str = "test",
                 guard: Guard = _call) -> dict[str, list[dict]]:
    """Write Tables 1–9 (markdown + CSV) of ``stage`` into ``out_dir``, and all of them in ``tables.md``; returns
    name -> rows. Each file is written through ``guard`` (one failing file leaves the others written)."""
    out = Path(out_dir)
    guard("tables folder", out, lambda: out.mkdir(parents=True, exist_ok=True))
    tables = build_tables(metrics, stage)
    markdown = []
    for name, rows in tables.items():
        if not rows:
            continue
        guard("table", out / f"{name}.csv", lambda rows=rows, name=name: write_csv(rows, out / f"{name}.csv"))
        text = (randomization_markdown(rows, title=name) if name == "table7_randomization"
                else to_markdown(rows, title=name))
        guard("table", out / f"{name}.md", lambda text=text, name=name: (out / f"{name}.md").write_text(text))
        markdown.append(text)
    summary = "\n".join(markdown) if markdown else "(no explanation metrics in this run)\n"
    guard("table", out / "tables.md", lambda: (out / "tables.md").write_text(summary))
    return tables
