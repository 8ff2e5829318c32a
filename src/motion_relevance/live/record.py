"""The record of a live run: one :class:`WindowResult` per window, ``windows.csv``, the ``live/…`` summary metrics,
``timeline.png``, the captions of the overlay video and what goes to the loggers.

The number each window shows is the metric suite's ``selectivity_mass`` ``Σ R_sel⁺ / Σ R⁺``: the fraction of the
baseline's positive relevance mass that selective relevance keeps (:data:`motion_relevance.live.model.SHARE_METRIC`,
read from the suite of the window's :class:`~motion_relevance.pipeline.ExplanationPipeline`); its mean over the
windows is the suite's ``live/selectivity_mass/<explainer>`` in ``metrics.json``.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from motion_relevance.checks import to_plain
from motion_relevance.viz.plots import plot_timeline

__all__ = ["CSV_COLUMNS", "WindowResult", "caption", "log_summary", "log_window", "summarise", "write_csv",
           "write_timeline"]

CSV_COLUMNS = ("window", "start_s", "end_s", "status", "padded", "class", "confidence", "selectivity_mass",
               "latency_ms", "e2e_latency_ms")


@dataclass
class WindowResult:
    """One row of ``windows.csv`` (times in s, latencies in ms; ``status`` explained | dropped)."""

    window: int
    start_s: float
    end_s: float
    status: str
    padded: bool
    class_name: str = ""
    confidence: float = math.nan
    selectivity_mass: float = math.nan
    latency_ms: float = math.nan
    e2e_latency_ms: float = math.nan

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("class_name")
        return {k: ("" if isinstance(d[k], float) and math.isnan(d[k]) else d[k]) for k in CSV_COLUMNS}


def caption(t_s: float, res: WindowResult) -> str:
    """The caption of one overlay frame at ``t_s`` seconds: class, confidence and the kept positive mass."""
    if res.status != "explained":
        return f"{t_s:.2f}s  dropped (behind real time)"
    share = "n/a" if math.isnan(res.selectivity_mass) else f"{res.selectivity_mass:.0%}"
    return f"{t_s:.2f}s  {res.class_name} {res.confidence:.0%}  selective keeps {share}"


def write_csv(path: Path, rows: list[WindowResult]) -> Path:
    """``windows.csv``: one row per window, columns :data:`CSV_COLUMNS`."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow(r.row())
    return path


def summarise(rows: list[WindowResult], *, wall_s: float, work_s: float, fps: float, stride: int,
              frames: int) -> dict[str, Any]:
    """Summary metrics of a run (keys ``live/…``; latencies in ms, rates in windows/s). The means of the metric suite
    (``live/selectivity_mass/<explainer>`` …) come from the pipeline (:meth:`~motion_relevance.live.model.
    LiveExplainer.results`)."""
    done = [r for r in rows if r.status == "explained"]
    lat = [r.latency_ms for r in done]
    e2e = [r.e2e_latency_ms for r in done]
    required = fps / stride
    capacity = len(done) / work_s if work_s > 0 else math.nan
    out: dict[str, Any] = {
        "live/windows": len(rows),
        "live/windows_explained": len(done),
        "live/windows_dropped": len(rows) - len(done),
        "live/frames": frames,
        "live/source_fps": fps,
        "live/duration_s": frames / fps if fps else math.nan,
        "live/wall_s": wall_s,
        "live/windows_per_s": len(done) / wall_s if wall_s > 0 else math.nan,
        "live/capacity_windows_per_s": capacity,
        "live/required_windows_per_s": required,
        "live/real_time_factor": capacity / required if required > 0 else math.nan,
        "live/latency_ms_mean": statistics.fmean(lat) if lat else math.nan,
        "live/latency_ms_p95": float(np.percentile(lat, 95)) if lat else math.nan,
        "live/e2e_latency_ms_mean": statistics.fmean(e2e) if e2e else math.nan,
        "live/e2e_latency_ms_max": max(e2e) if e2e else math.nan,
        "live/confidence_mean": statistics.fmean(r.confidence for r in done) if done else math.nan,
    }
    out["live/keeps_up"] = bool(out["live/real_time_factor"] >= 1.0)
    return out


def write_timeline(path: Path, rows: list[WindowResult], title: str) -> Path | None:
    """``timeline.png``: confidence and selectivity_mass of the explained windows against time (None if none)."""
    done = [r for r in rows if r.status == "explained"]
    if not done:
        return None
    return plot_timeline([(r.start_s + r.end_s) / 2 for r in done], [r.confidence for r in done],
                         [r.selectivity_mass for r in done], path, labels=[r.class_name for r in done], title=title)


def log_window(loggers: list[Any], res: WindowResult, class_index: int) -> None:
    """Per-window metrics (``live/confidence``, ``live/selectivity_mass``, ``live/latency_ms``,
    ``live/class_index``) at step = window index."""
    for lg in loggers:
        lg.log_metrics({"live/confidence": res.confidence, "live/selectivity_mass": res.selectivity_mass,
                        "live/latency_ms": res.latency_ms, "live/class_index": class_index}, step=res.window)


def log_summary(loggers: list[Any], metrics: Mapping[str, Any], timeline: Path | None) -> None:
    """The numeric summary metrics and the timeline image to every logger, then close them."""
    numbers = {k: float(v) for k, v in to_plain(dict(metrics)).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
    for lg in loggers:
        lg.log_metrics(numbers)
        if timeline is not None and hasattr(lg, "log_image"):
            lg.log_image(key="live/timeline", images=[str(timeline)])
        lg.save()
        lg.finalize("success")
