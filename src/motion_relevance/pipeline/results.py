"""Rows and figures of a run's metrics that both mr-report and the figures callback make: the methods of a metric,
Table 7's randomisation rows and the deletion/insertion and randomisation curves (plain code, no Lightning)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from motion_relevance.metrics import keys
from motion_relevance.viz.plots import plot_faithfulness_curves, plot_randomization

__all__ = ["REFERENCES", "methods_of", "randomization_rows", "write_faithfulness_figures"]

#: Removal references of the faithfulness tests (``metrics.faithfulness.REFERENCES``).
REFERENCES = ("freeze", "mean", "blur")


def methods_of(metrics: Mapping[str, Any], stage: str, metric: str) -> list[str]:
    """The methods with a ``<stage>/<metric>/<method>`` mean in ``metrics``, in key order."""
    out = []
    for key in metrics:
        parsed = keys.parse_key(key)
        if parsed is not None and (parsed.stage, parsed.metric, parsed.stat) == (stage, metric, "mean"):
            out.append(parsed.method)
    return out


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


def write_faithfulness_figures(metrics: Mapping[str, Any], out_dir: str | Path, stage: str = "test") -> list[Path]:
    """The deletion/insertion curves (one figure per reference, random floor dashed) and the randomisation curves
    of ``stage`` from a run's metrics (``<stage>/faithfulness_curves``, ``<stage>/randomization_s<k>/…``)."""
    out = Path(out_dir)
    paths = []
    curves = metrics.get(f"{stage}/faithfulness_curves") or {}
    steps = metrics.get(f"{stage}/faithfulness_steps")
    for ref in REFERENCES:
        if steps and any(k.split("/")[1] == ref for k in curves):
            paths.append(plot_faithfulness_curves(curves, int(steps), out / f"{stage}_faithfulness_{ref}.png",
                                                  reference=ref))
    rows = randomization_rows(metrics, stage)
    if rows:
        by_method: dict[str, tuple[list, list]] = {}
        for row in rows:
            base, sel = by_method.setdefault(row["method"], ([], []))
            base.append(row["spearman"])
            sel.append(row["spearman_selective"])
        layers = [row["layer"] for row in rows if row["method"] == rows[0]["method"]]
        paths.append(plot_randomization(layers, by_method, out / f"{stage}_randomization.png",
                                        title="cascading model randomisation"))
    return paths
