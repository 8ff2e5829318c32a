"""Line plots: metrics against the selectivity threshold ``sigma``, the timeline of a live stream, faithfulness
curves and randomisation curves.

Plain matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no global state) and no pandas: tables are
lists of dicts (e.g. rows of a CSV read with :mod:`csv`, values may be strings) or a dict of columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from motion_relevance.viz.colormaps import to_numpy

__all__ = ["plot_faithfulness_curves", "plot_metric_vs_sigma", "plot_randomization", "plot_timeline", "table_rows"]

_PRETTY = {
    "precision": "motion-selection precision",
    "selectivity_area": "selectivity (area ratio)",
    "selectivity_mass": "selectivity (mass ratio)",
    "sigma": "sigma (threshold in std of G)",
}


def _new_figure(width: float, height: float, dpi: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib, slow to import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _float(v: Any) -> float:
    """``float(v)`` or NaN for ``None`` / empty / non-numeric values (CSV cells arrive as strings)."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def table_rows(table: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Normalise a table to a list of row dicts: accepts a list of dicts or a dict of equal-length columns."""
    if isinstance(table, Mapping):
        cols = {k: list(v) for k, v in table.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns have different lengths: { {k: len(v) for k, v in cols.items()} }")
        n = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in cols.items()} for i in range(n)]
    return [dict(r) for r in table]


def plot_metric_vs_sigma(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    metrics: Sequence[str] = ("precision", "selectivity_area", "selectivity_mass"),
    group_by: str | None = "method",
    x: str = "sigma",
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """One subplot per metric (value against ``x``), one line per ``group_by`` value (e.g. method).

    ``rows``: list of dicts (or dict of columns) with keys ``x``, ``group_by`` and the metric names; error bars
    come from ``<metric>_std`` when present. Missing/non-numeric cells are skipped, points are sorted by ``x``,
    metrics absent from every row are left out (``ValueError`` if none is present). Writes a PNG (or any
    matplotlib format, by extension) and returns the path.
    """
    data = table_rows(rows)
    present = [m for m in metrics if any(not math.isnan(_float(r.get(m))) for r in data)]
    if not present:
        raise ValueError(f"none of the metrics {list(metrics)} has a numeric value in the {len(data)} rows")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in data:
        key = str(r.get(group_by, "")) if group_by else ""
        groups.setdefault(key, []).append(r)

    n = len(present)
    fig = _new_figure(4.2 * n, 3.4, dpi)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, metric in zip(axes, present):
        for gi, (name, grp) in enumerate(groups.items()):
            pts = []
            for r in grp:
                xv, yv = _float(r.get(x)), _float(r.get(metric))
                if not (math.isnan(xv) or math.isnan(yv)):
                    pts.append((xv, yv, _float(r.get(f"{metric}_std"))))
            if not pts:
                continue
            pts.sort()
            xs, ys, es = (np.array(v, dtype=float) for v in zip(*pts))
            colour = f"C{gi % 10}"
            if np.isfinite(es).any():
                ax.errorbar(xs, ys, yerr=np.nan_to_num(es), color=colour, marker="o", ms=4, capsize=3, lw=1.5,
                            label=name or None)
            else:
                ax.plot(xs, ys, color=colour, marker="o", ms=4, lw=1.5, label=name or None)
        ax.set_xlabel(_PRETTY.get(x, x))
        ax.set_title(_PRETTY.get(metric, metric), fontsize=10)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:
        axes[-1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_timeline(
    times_s: Any,
    confidence: Any,
    selective_share: Any,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 100,
    max_annotations: int = 30,
) -> Path:
    """Confidence (top row) and kept positive mass (bottom row) of a live stream over time.

    ``times_s``, ``confidence`` (predicted-class probability in ``[0, 1]``) and ``selective_share`` (the metric
    suite's ``selectivity_mass`` ``Σ R_sel⁺ / Σ R⁺``, the positive relevance mass selective relevance keeps,
    ``[0, 1]``; NaN = undefined, drawn as a gap) are 1-D sequences of equal length. ``labels`` (predicted class per
    time point): each change of class is marked with a dotted vertical line on both rows and the new class name on
    the top row (at most ``max_annotations`` names; further changes get lines only). Writes the figure and returns
    the path.
    """
    t = np.asarray(to_numpy(times_s), dtype=float).ravel()
    conf = np.asarray(to_numpy(confidence), dtype=float).ravel()
    share = np.asarray(to_numpy(selective_share), dtype=float).ravel()
    if not (len(t) == len(conf) == len(share)):
        raise ValueError(f"times_s, confidence, selective_share lengths differ: {len(t)}, {len(conf)}, {len(share)}")
    if labels is not None and len(labels) != len(t):
        raise ValueError(f"{len(labels)} labels for {len(t)} time points")

    fig = _new_figure(9.0, 4.8, dpi)
    ax_c, ax_m = fig.subplots(2, 1, sharex=True)
    ax_c.plot(t, conf, color="C0", lw=1.5)
    ax_c.set_ylabel("confidence")
    ax_m.plot(t, share, color="C3", lw=1.5)
    ax_m.set_ylabel("selectivity_mass ΣR_sel⁺/ΣR⁺")
    ax_m.set_xlabel("time (s)")
    for ax in (ax_c, ax_m):
        ax.set_ylim(-0.02, 1.08)
        ax.grid(True, alpha=0.3)
    if labels is not None and len(t):
        changes = [0] + [i for i in range(1, len(t)) if labels[i] != labels[i - 1]]
        for k, i in enumerate(changes):
            for ax in (ax_c, ax_m):
                if i > 0:
                    ax.axvline(t[i], color="0.35", ls=":", lw=1)
            if k < max_annotations:
                ax_c.annotate(str(labels[i]), xy=(t[i], 1.0), xycoords="data", xytext=(2, -2),
                              textcoords="offset points", fontsize=7, rotation=0, va="top", ha="left",
                              bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.6", "alpha": 0.85})
    if title:
        ax_c.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_faithfulness_curves(
    curves: Mapping[str, Sequence[float]], steps: int, path: str | Path, *, reference: str, title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Deletion (left) and insertion (right) curves of each method for one ``reference``, with the random floor.

    ``curves`` maps ``"<direction>/<reference>/<method>"`` to the mean target probability at each of the
    ``steps + 1`` steps (``random`` is the seeded random-order floor, drawn dashed and grey). The x axis is the
    fraction of voxels removed (deletion) or restored (insertion).
    """
    fig = _new_figure(10, 4, dpi)
    x = np.linspace(0.0, 1.0, int(steps) + 1)
    for i, direction in enumerate(("deletion", "insertion")):
        ax = fig.add_subplot(1, 2, i + 1)
        found = False
        for key, values in curves.items():
            d, ref, method = key.split("/", 2)
            if d != direction or ref != reference:
                continue
            y = np.asarray([_float(v) for v in values], dtype=float)
            if method == "random":
                ax.plot(x, y, "--", color="grey", label="random order (floor)")
            else:
                auc = float(np.trapezoid(y, x)) if np.isfinite(y).all() else math.nan
                ax.plot(x, y, marker="o", markersize=3, label=f"{method} (AUC {auc:.3f})")
            found = True
        ax.set_xlabel(f"fraction of voxels {'removed' if direction == 'deletion' else 'restored'}")
        ax.set_ylabel("target probability")
        ax.set_title(f"{direction} ({reference} reference)" + (": lower is better" if direction == "deletion"
                                                                  else ": higher is better"))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if found:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_randomization(
    stages: Sequence[str], correlations: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
    title: str | None = None, dpi: int = 100,
) -> Path:
    """Spearman correlation with the original explanation at each cascading-randomisation stage.

    ``correlations`` maps a method to ``(baseline per stage, selective per stage)``; solid lines are the baseline
    maps, dashed their selective maps. An explanation that depends on the model falls towards 0.
    """
    fig = _new_figure(max(6.0, 0.5 * len(stages) + 3), 4.5, dpi)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(stages))
    for i, (method, (base, sel)) in enumerate(correlations.items()):
        color = f"C{i % 10}"
        ax.plot(x, [_float(v) for v in base], marker="o", color=color, label=method)
        ax.plot(x, [_float(v) for v in sel], marker="x", linestyle="--", color=color, label=f"{method} selective")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels(list(stages), rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("randomised down to layer (output first)")
    ax.set_ylabel("Spearman correlation with the original map")
    ax.set_ylim(-1.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)
