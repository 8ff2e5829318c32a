"""One suite that creates, names and reduces every explanation metric of a run.

:class:`ExplanationMetrics` holds a :class:`torchmetrics.MetricCollection` with one metric per (measure, method):
flow precision, ground truth, agreement and overhead of each baseline explanation; flow precision, ground truth,
selectivity and spatial bias of each selective map; the selective step's time; and counters (explained clips,
cache hits …) as :class:`~torchmetrics.SumMetric`. Every state is a sum, so ``compute()`` under DDP gives exactly
the one-process numbers. ``compute()`` returns flat keys named by :mod:`motion_relevance.metrics.keys`.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection, SumMetric

from motion_relevance.checks import check_unique
from motion_relevance.metrics import functional, keys
from motion_relevance.metrics.classes import (
    Agreement,
    GroundTruthMetrics,
    MotionPrecision,
    Overhead,
    PathwayShare,
    Selectivity,
    SpatialBias,
    TemporalShare,
)

__all__ = ["COUNTERS", "ClipRecords", "ExplanationMetrics"]

#: Counters the suite sums over processes (logged as ``<stage>/<name>``).
COUNTERS = ("explained_clips", "cache_hits", "cache_misses", "cache_corrupt", "flow_skipped_clips")
#: Ground-truth quantities -> logged metric names.
_GT_NAMES = {"precision": "gt_precision", "recall": "gt_recall", "motion_share": "motion_share", "f1": "gt_f1"}


class ClipRecords:
    """Per-clip values in long format: rows ``{clip, metric, method, value}`` (``value`` NaN where undefined).

    ``offset`` is the epoch index of the current batch's first clip (set by the caller before each batch)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []
        self.offset = 0

    def add(self, metric: Metric, names: dict[str, str], method: str) -> None:
        """The last update of ``metric`` (its ``last_values``), each quantity under its logged metric name."""
        for quantity, name in names.items():
            values = getattr(metric, "last_values", {}).get(quantity)
            if values is not None:
                self.add_values(name, method, values)

    def add_values(self, name: str, method: str, values: Tensor) -> None:
        """One value per clip of the current batch ``(B,)`` under the metric ``name`` and ``method``."""
        self.rows += [{"clip": self.offset + i, "metric": name, "method": method, "value": float(v)}
                      for i, v in enumerate(values.tolist())]

    def clear(self) -> None:
        self.rows, self.offset = [], 0


@dataclass(frozen=True)
class _Entry:
    """How one metric's ``compute()`` is logged: quantity -> metric name, under ``method``."""

    names: dict[str, str]
    method: str


class ExplanationMetrics:
    """Metrics of the baseline explanations ``methods`` and their selective maps at ``sigmas``.

    Args:
        methods: explainer names (metric-key names).
        sigmas: the selective-relevance thresholds of the run (several: per-sigma names, see :mod:`.keys`).
        mode: positive-relevance rule, ``"positive"`` (``X.sum(C) > 0``) or ``"nonzero"``.
        flow: whether flow precision is measured (no flow: no precision metrics are created or logged).
        counters: the :data:`COUNTERS` this run logs (always logged, also when zero).
        record: keep every per-clip value (:class:`ClipRecords`, long format) besides the reductions.
        temporal_share: the methods (among ``methods``) whose cross-frame attention share is measured
            (:meth:`update_temporal_share`; logged as ``temporal_share/<method>``).
        pathways: names of the model's input pathways (multi-pathway models such as SlowFast: ``("slow",
            "fast")``): each pathway's share of the positive relevance, baseline and selective, is measured.

    The ``update_*`` methods take channel sums ``(B, 1, T, H, W)`` (the selective mask is shared by the channels,
    so every metric reads the same numbers from the sum), motion ``(B, T, H, W)`` bool and frames with flow
    ``(B, T)`` bool, ground-truth masks ``(B, T, H, W)`` bool.
    """

    def __init__(self, methods: Sequence[str], sigmas: Sequence[float] = (), *, mode: str = "positive",
                 flow: bool = True, counters: Sequence[str] = ("explained_clips",),
                 pathways: Sequence[str] = (), record: bool = False, temporal_share: Sequence[str] = ()) -> None:
        unknown = [c for c in counters if c not in COUNTERS]
        if unknown:
            raise KeyError(f"unknown counters {unknown}; counters: {COUNTERS}")
        self.methods = check_unique("explainers", methods)
        self.sigmas = [float(s) for s in check_unique("selective.sigma", sigmas)]
        self.multi = len(self.sigmas) > 1
        self.flow = bool(flow)
        metrics: dict[str, Metric] = {}
        self._entries: dict[str, _Entry] = {}

        def add(group: str, method: str, metric: Metric, names: dict[str, str], logged: str | None = None) -> None:
            slot = f"{group}|{method}".replace(".", "_")
            metrics[slot] = metric
            self._entries[slot] = _Entry(names, logged if logged is not None else method)

        for name in self.methods:
            if self.flow:
                add("precision", name, MotionPrecision(mode=mode), {"precision": "precision"})
            add("gt", name, GroundTruthMetrics(mode=mode), _GT_NAMES)
            add("overhead", name, Overhead(), {"ms": "overhead_ms"})
            for sigma in self.sigmas:
                method = self.selective_name(name, sigma)
                if self.flow:
                    add("precision", method, MotionPrecision(mode=mode), {"precision": "precision"})
                add("gt", method, GroundTruthMetrics(mode=mode), _GT_NAMES)
                base = keys.at_sigma(name, sigma, self.multi)
                add("selectivity", method, Selectivity(mode=mode),
                    {"area": "selectivity_area", "mass": "selectivity_mass"}, logged=base)
                add("bias", method, SpatialBias(), {"bias": "spatial_bias"}, logged=base)
        self.temporal_share = [m for m in self.methods if m in set(temporal_share)]
        unknown_share = sorted(set(temporal_share) - set(self.methods))
        if unknown_share:
            raise KeyError(f"temporal_share names {unknown_share}, which are not among the methods {self.methods}")
        for name in self.temporal_share:
            add(keys.TEMPORAL_SHARE, name, TemporalShare(), {"share": keys.TEMPORAL_SHARE})
        self.pathways = list(pathways)
        for name in self.methods if len(self.pathways) > 1 else []:
            for method in [name, *(self.selective_name(name, s) for s in self.sigmas)]:
                for pathway in self.pathways:
                    add(f"pathway_{pathway}", method, PathwayShare(), {"share": f"pathway_share_{pathway}"})
        for a, b in itertools.combinations(self.methods, 2):
            add("agreement", keys.pair(a, b), Agreement(mode=mode), {"iou": "agreement"})
        if self.sigmas:
            add("overhead", "selective", Overhead(), {"ms": "overhead_ms"})
        self.counters = list(counters)
        for counter in self.counters:
            metrics[f"count|{counter}"] = SumMetric(nan_strategy="error")
        self.collection = MetricCollection(metrics, compute_groups=False)
        self.records = ClipRecords() if record else None
        if record:
            for metric in self.collection.values(copy_state=False):
                metric.keep_last = True
        self.reset()

    def selective_name(self, method: str, sigma: float) -> str:
        """The method name of ``method``'s selective map at ``sigma`` in this run."""
        return keys.selective(method, sigma, self.multi)

    def _metric(self, group: str, method: str) -> Metric:
        return self.collection[f"{group}|{method}".replace(".", "_")]

    def _update(self, group: str, method: str, *args: Tensor | None) -> None:
        """Update one metric; with :attr:`records` set, keep its per-clip values under their logged names."""
        slot = f"{group}|{method}".replace(".", "_")
        metric = self.collection[slot]
        metric.update(*args)
        if self.records is not None:
            entry = self._entries[slot]
            self.records.add(metric, entry.names, entry.method)

    # ------------------------------------------------------------------ updates
    def to(self, device: torch.device | str) -> ExplanationMetrics:
        self.collection.to(device)
        return self

    def reset(self) -> None:
        """Zero every metric (counters start at 0, so every process computes the same metrics under DDP)."""
        self.collection.reset()
        for counter in self.counters:
            self.collection[f"count|{counter}"].update(0.0)

    def _per_map(self, method: str, rel_sum: Tensor, moves: Tensor | None, valid: Tensor | None,
                 mask: Tensor | None) -> None:
        if self.flow and moves is not None:
            device = rel_sum.device
            self._update("precision", method, rel_sum, moves.to(device), valid.to(device)
                         if valid is not None else None)
        if mask is not None:
            self._update("gt", method, rel_sum, mask.to(rel_sum.device))

    def update_baseline(self, method: str, rel_sum: Tensor, *, moves: Tensor | None = None,
                        valid: Tensor | None = None, mask: Tensor | None = None) -> None:
        """Flow precision and ground truth of one baseline explanation of a batch."""
        self._per_map(method, rel_sum, moves, valid, mask)

    def update_selective(self, method: str, sigma: float, rel_sum: Tensor, sel_sum: Tensor, *,
                         moves: Tensor | None = None, valid: Tensor | None = None, mask: Tensor | None = None
                         ) -> None:
        """Flow precision, ground truth, selectivity and spatial bias of ``method``'s selective map at ``sigma``."""
        name = self.selective_name(method, sigma)
        self._per_map(name, sel_sum, moves, valid, mask)
        self._update("selectivity", name, rel_sum, sel_sum)
        self._update("bias", name, rel_sum, sel_sum)

    def update_agreement(self, sums: dict[str, Tensor]) -> None:
        """IoU of every pair of baseline explanations (channel sums of the same clips)."""
        for a, b in itertools.combinations(self.methods, 2):
            self._update("agreement", keys.pair(a, b), sums[a], sums[b])

    def update_pathways(self, method: str, relevance: Sequence[Tensor]) -> None:
        """Each pathway's share of the positive relevance of ``method`` (a baseline or selective map name); one
        ``(B, C, T_p, H, W)`` map per pathway, in :attr:`pathways` order, each at its own frame rate."""
        if len(relevance) != len(self.pathways):
            raise ValueError(f"{len(relevance)} pathway maps for pathways {self.pathways}")
        masses = [functional.positive_relevance(r).flatten(1).sum(1).double() for r in relevance]
        total = torch.stack(masses).sum(0)
        for pathway, rel in zip(self.pathways, relevance):
            self._update(f"pathway_{pathway}", method, rel, total)

    def update_temporal_share(self, method: str, share: Tensor) -> None:
        """Per-clip cross-frame attention shares ``(B,)`` of ``method`` (NaN: not measured, e.g. a cache hit)."""
        self._update(keys.TEMPORAL_SHARE, method, share)

    def update_overhead(self, method: str, ms: Iterable[float]) -> None:
        """Timed samples (ms per clip) of ``method`` or of ``"selective"``."""
        values = list(ms)
        if values:
            self._metric("overhead", method).update(values)

    def count(self, counter: str, value: float) -> None:
        """Add ``value`` to one of this run's counters."""
        if counter not in self.counters:
            raise KeyError(f"counter {counter!r} is not kept by this suite; it keeps {self.counters}")
        self.collection[f"count|{counter}"].update(float(value))

    # ------------------------------------------------------------------ results
    def compute(self, stage: str) -> dict[str, float]:
        """Every metric with updates, reduced over processes, as flat logged keys of ``stage``."""
        prefix = keys.stage_prefix(stage)
        values: dict[str, float] = {}
        for slot, metric in self.collection.items(keep_base=True, copy_state=False):
            if slot.startswith("count|"):
                values[f"{prefix}/{slot.split('|', 1)[1]}"] = float(metric.compute())
                continue
            entry = self._entries[slot]
            with warnings.catch_warnings():  # every process computes every metric (DDP), updated or not
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                result = metric.compute()
            if slot.startswith("gt|") and not any(int(result[f"{q}_n"]) + int(result[f"{q}_n_undefined"])
                                                  for q in entry.names):
                continue  # no ground-truth masks in this run (real data)
            for quantity, name in entry.names.items():
                for stat in keys.STATS:
                    value = result.get(f"{quantity}_{stat}")
                    if value is not None:
                        values[keys.metric_key(prefix, name, entry.method, stat)] = float(value)
        return values
