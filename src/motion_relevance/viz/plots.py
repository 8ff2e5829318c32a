"""Line plots: metrics against the selectivity threshold ``sigma`` and the timeline of a live stream.

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

__all__ = ["plot_metric_vs_sigma", "plot_timeline", "table_rows"]

_PRETTY = {
    "precision": "motion-selection precision",
    "selectivity_area": "selectivity (area ratio)",
    "selectivity_mass": "selectivity (mass ratio)",
    "sigma": "sigma (threshold in std of G)",
}


def _new_figure(width: float, height: float, dpi: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
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
    """Confidence (top row) and selective share (bottom row) of a live stream over time.

    ``times_s``, ``confidence`` (predicted-class probability in ``[0, 1]``) and ``selective_share``
    (``Σ|R_sel| / Σ|R|``, the share of absolute relevance selective relevance keeps, ``[0, 1]``; NaN = undefined,
    drawn as a gap) are 1-D sequences of equal length. ``labels`` (predicted class per time point): each change of
    class is marked with a dotted vertical line on both rows and the new class name on the top row (at most
    ``max_annotations`` names; further changes get lines only). Writes the figure and returns the path.
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
    ax_m.set_ylabel("selective share Σ|R_sel|/Σ|R|")
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
