"""Causal tests of the explanations inside the pipeline (docs/method.md, "Faithfulness and sanity checks").

:class:`FaithfulnessStage` measures, on the first ``num_clips`` explained clips of an epoch, for every explainer and
reference (``freeze``, ``mean``, ``blur``): the deletion and insertion curves and their AUC, the random-order floor
(once per reference), the matched-budget drops (the voxels selective relevance keeps vs the baseline's top ``m`` vs
``m`` random voxels) and, once per clip, the model's motion reliance. :class:`RandomizationStage` runs the
cascading model-parameter randomisation on the first ``num_clips`` clips. Both keep their numbers in
:class:`torchmetrics.MetricCollection` objects of sum states (exact under DDP) and name them with
:mod:`motion_relevance.metrics.keys`:

=====================================  ==========================================================================
key (``<stage>/<name>/<method>``)      meaning
=====================================  ==========================================================================
``deletion_auc_<ref>/<m>``             AUC of the deletion curve of explainer ``m`` (``random``: the floor)
``insertion_auc_<ref>/<m>``            AUC of the insertion curve
``freeze_drop_<ref>/<m>_selective``    drop from replacing the voxels the selective map keeps (``m_sel`` voxels)
``topm_drop_<ref>/<m>``                drop from replacing the baseline's top ``m_sel`` voxels
``random_drop_<ref>/<m>``              drop from replacing ``m_sel`` random voxels
``drop_advantage_random_<ref>/<m>``    paired per-clip difference selective − random (the sigma objective)
``drop_advantage_topm_<ref>/<m>``      paired per-clip difference selective − top-m
``drop_budget/<m>``                    ``m_sel``: voxels the selective map keeps
``motion_reliance/model``              share ``sum D_m+ / sum (D_m+ + D_a+)`` in [0, 1] (``motion_reliance_lo`` /
                                       ``_hi``: its seeded percentile bootstrap interval over clips)
``full_freeze_drop/model``             ``D_m = s(x) - s(freeze(x))``; ``full_static_drop/model``:
                                       ``D_a = s(x) - s(static_removed(x))``; ``full_mean_drop/model``:
                                       ``s(x) - s(mean(x))``
``randomization_s<k>/<m>``             Spearman correlation at randomisation stage ``k`` (``m_selective``: its
                                       selective map); the stage names are in :meth:`RandomizationStage.artifacts`
``temporal_drop_selective/<m>``        drop from freezing ``temporal_window`` frames around the selective map's
                                       top frame (``temporal_drop_baseline``: the baseline's, ``_random``: a
                                       seeded random frame); ``temporal_advantage/<m>``: selective − random
=====================================  ==========================================================================

With several sigmas per run the per-sigma names of :mod:`.keys` apply (``dtd_selective_s2``, ``dtd@s2``).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from motion_relevance.checks import check_int, check_positive, check_unique
from motion_relevance.digests import tensor_digest
from motion_relevance.explain.selective import selective_relevance
from motion_relevance.metrics import keys
from motion_relevance.metrics.faithfulness import (
    DEFAULT_BATCH_SIZE,
    REFERENCES,
    deletion_curve,
    matched_budget_drops,
    motion_reliance,
    random_curve,
)
from motion_relevance.metrics.faithfulness.scoring import batch_bytes
from motion_relevance.metrics.faithfulness_metrics import (
    DeletionAUC,
    FreezeDrop,
    InsertionAUC,
    MotionReliance,
    RandomizationCorrelation,
)
from motion_relevance.metrics.randomization import RandomizationResult, cascading_randomization, randomization_stages
from motion_relevance.metrics.suite import ClipRecords
from motion_relevance.pipeline.temporal import TemporalWindowTest

__all__ = ["FaithfulnessStage", "RandomizationStage", "available_memory", "build_stage"]

_STATS = keys.STATS
InputBuilder = Callable[[Tensor], Any]


def build_stage(cls: Any, settings: Mapping[str, Any] | None, key: str, **fixed: Any) -> Any:
    """An optional stage from its config node ``key`` (None or ``enabled: false``: off); unknown keys are named."""
    if not settings:
        return None
    settings = dict(settings)
    if not settings.pop("enabled", True):
        return None
    allowed = set(inspect.signature(cls).parameters) - set(fixed)
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"{key} has unknown keys {unknown}; allowed: enabled, {', '.join(sorted(allowed))}")
    return cls(**fixed, **settings)


def available_memory(device: torch.device | str | None) -> int | None:
    """Bytes available for new tensors on ``device``: the free memory of a CUDA device, else the host's
    ``MemAvailable`` (``/proc/meminfo``; the physical pages free where that file is missing); None when unknown."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _check_clip_count(key: str, value: int, available_clips: int | None) -> None:
    if available_clips is not None and value > available_clips:
        raise ValueError(f"{key}={value} exceeds the {available_clips} clips the data holds (per process); "
                         f"set {key} <= {available_clips}")


def _check_memory(stage: str, need: Mapping[str, int], keys_by_term: Mapping[str, str], values: Mapping[str, Any],
                  device: torch.device | str | None, available: int | None, what: str) -> None:
    """Refuse before any work when the estimate ``need`` (bytes by term) exceeds the available memory, naming the
    key of the largest term to lower."""
    free = available_memory(device) if available is None else available
    total = sum(need.values())
    if free is None or total <= free:
        return
    term = max(need, key=lambda k: need[k])
    key = keys_by_term[term]
    parts = ", ".join(f"{k}: {_gib(v)}" for k, v in need.items())
    raise ValueError(f"{stage} needs about {_gib(total)} for {what} ({parts}) but {device or 'cpu'} has "
                     f"{_gib(free)} available; lower {key} (now {values[term]})")


def _log_stats(values: dict[str, float], prefix: str, name: str, method: str, result: Mapping[str, Tensor],
               quantity: str) -> None:
    for stat in _STATS:
        value = result.get(f"{quantity}_{stat}")
        if value is not None and value.dim() == 0:
            values[keys.metric_key(prefix, name, method, stat)] = float(value)


@dataclass
class _Budget:
    """How many clips of the epoch a stage still takes."""

    limit: int
    seen: int = 0

    def take(self, n: int) -> int:
        k = max(0, min(n, self.limit - self.seen))
        self.seen += k
        return k


def clip_seeds(clips: Tensor, base: int) -> list[int]:
    """One seed per clip of ``clips`` ``(B, C, T, H, W)``: ``base`` plus the first 6 bytes of the clip's content
    digest, so equal clips get equal random orders in every batch and process."""
    return [base + int(tensor_digest(clip)[:12], 16) for clip in clips]


class FaithfulnessStage:
    """Deletion/insertion curves, random floor, matched-budget drops and motion reliance of explained clips.

    Args:
        methods: explainer names of the run.
        sigmas: the run's selective-relevance thresholds (a matched-budget test per sigma).
        references: removal references among ``freeze``, ``mean``, ``blur``.
        steps: steps ``K`` of the deletion and insertion curves.
        num_clips: clips per epoch and process that are tested (the first ones explained).
        batch_size: perturbed inputs per forward pass.
        blur_sigma: the ``blur`` reference's Gaussian std in pixels.
        seed: base seed of the random orders; a clip's order is seeded with ``seed`` plus a number taken from the
            digest of its pixels (:func:`clip_seeds`), so it is the same whatever the batch, epoch or process the
            clip lands in.
        random_floor, matched_budget, reliance, temporal: switch the parts on or off (``temporal``: the
            temporal-window test, :class:`~motion_relevance.pipeline.temporal.TemporalWindowTest`).
        temporal_window: frames the temporal-window test freezes; None: a quarter of the clip (``T // 4``).
    """

    def __init__(
        self,
        methods: Sequence[str],
        sigmas: Sequence[float],
        *,
        references: Sequence[str] = REFERENCES,
        steps: int = 10,
        num_clips: int = 16,
        batch_size: int = 16,
        blur_sigma: float = 5.0,
        seed: int = 0,
        random_floor: bool = True,
        matched_budget: bool = True,
        reliance: bool = True,
        temporal: bool = True,
        temporal_window: int | None = None,
    ) -> None:
        self.references = check_unique("faithfulness.references", references)
        bad = [r for r in self.references if r not in REFERENCES]
        if bad or not self.references:
            raise ValueError(f"faithfulness.references={list(references)}: allowed values are {list(REFERENCES)}")
        self.steps = check_int("faithfulness.steps", steps, 1)
        self.num_clips = check_int("faithfulness.num_clips", num_clips, 1)
        self.batch_size = check_int("faithfulness.batch_size", batch_size, 1)
        self.blur_sigma = float(check_positive("faithfulness.blur_sigma", blur_sigma))
        if not math.isfinite(self.blur_sigma):
            raise ValueError(f"faithfulness.blur_sigma={blur_sigma!r}: expected a finite number of pixels > 0")
        self.seed = check_int("faithfulness.seed", seed, 0)
        self.random_floor, self.matched_budget, self.reliance = bool(random_floor), bool(matched_budget), \
            bool(reliance)
        self.methods = check_unique("explainers", methods)
        self.sigmas = list(sigmas)
        self.multi = len(self.sigmas) > 1
        self.temporal = TemporalWindowTest(self.methods, self.sigmas, window=temporal_window,
                                           batch_size=self.batch_size) if temporal else None
        #: built at the first data batch (:meth:`check_data`): the per-step curve states scale with ``steps``,
        #: which is bounded by the data's clip shape
        self.collection: MetricCollection | None = None
        self._device: torch.device | str | None = None
        self._budget = _Budget(self.num_clips)
        self.records: ClipRecords | None = None
        self._checked: tuple[Any, ...] | None = None

    def _build(self) -> MetricCollection:
        metrics: dict[str, Metric] = {}
        for ref in self.references:
            for method in [*self.methods, *(["random"] if self.random_floor else [])]:
                metrics[f"deletion|{ref}|{method}"] = DeletionAUC(self.steps)
                metrics[f"insertion|{ref}|{method}"] = InsertionAUC(self.steps)
            if self.matched_budget:
                for method in self.methods:
                    for sigma in self.sigmas:
                        metrics[f"drop|{ref}|{method}|{sigma:g}"] = FreezeDrop()
        if self.reliance:
            metrics["reliance"] = MotionReliance(seed=self.seed)
        collection = MetricCollection({k.replace(".", "_"): v for k, v in metrics.items()}, compute_groups=False)
        if self._device is not None:
            collection.to(self._device)
        for metric in collection.values(copy_state=False):
            metric.keep_last = self.records is not None
        return collection

    def check_data(self, clip_shape: Sequence[int], *, batch: int | None = None, itemsize: int = 4,
                   device: torch.device | str | None = None, available_clips: int | None = None,
                   available: int | None = None) -> None:
        """Refuse settings the data cannot carry, before any forward pass: ``steps`` above the voxels ``T*H*W`` of a
        clip ``clip_shape`` ``(C, T, H, W)``; ``batch_size`` above the perturbed inputs one update builds;
        ``num_clips`` above ``available_clips`` (when known); and an estimate of the batched deletion/insertion
        tensors (:func:`~motion_relevance.metrics.faithfulness.scoring.batch_bytes`) above the memory available on
        ``device`` (``available`` bytes, default: measured). ``batch``: clips of the data batch at hand."""
        c, t, h, w = (int(v) for v in clip_shape)
        voxels = t * h * w
        if self.steps > voxels:
            raise ValueError(f"faithfulness.steps={self.steps} exceeds the {voxels} voxels (T*H*W = {t}x{h}x{w}) "
                             f"of the data's clips: each step removes at least one voxel; set faithfulness.steps <= "
                             f"{voxels}")
        clips = self.num_clips if batch is None else min(self.num_clips, int(batch))
        _check_clip_count("faithfulness.num_clips", self.num_clips, available_clips)
        inputs = self.num_clips * max(self.steps, 3)
        if self.batch_size > max(DEFAULT_BATCH_SIZE, inputs):
            raise ValueError(f"faithfulness.batch_size={self.batch_size} exceeds the {inputs} perturbed inputs one "
                             f"update builds (num_clips x max(steps, 3)); set faithfulness.batch_size <= {inputs}")
        need = batch_bytes((c, t, h, w), itemsize, clips, self.steps, self.batch_size, "blur" in self.references,
                           full_copy=self.reliance)
        _check_memory("faithfulness", need, {"batch_size": "faithfulness.batch_size", "steps": "faithfulness.steps",
                                             "clips": "faithfulness.num_clips"},
                      {"batch_size": self.batch_size, "steps": self.steps, "clips": self.num_clips}, device,
                      available, f"{clips} clips of shape {(c, t, h, w)}")
        if self.temporal is not None:
            self.temporal.check_frames(t)
        if self.collection is None:
            self.collection = self._build()

    def record_into(self, records: ClipRecords) -> None:
        """Keep every per-clip value (AUCs, drops, reliance) in ``records`` too."""
        self.records = records
        for metric in self.collection.values(copy_state=False) if self.collection is not None else ():
            metric.keep_last = True
        for metric in self.temporal.collection.values(copy_state=False) if self.temporal is not None else ():
            metric.keep_last = True

    def _record(self, metric: Metric, names: dict[str, str], method: str) -> None:
        if self.records is not None:
            self.records.add(metric, names, method)

    def _metric(self, *parts: Any) -> Metric:
        assert self.collection is not None
        return self.collection["|".join(str(p) for p in parts).replace(".", "_")]

    def start(self, device: torch.device | str | None = None) -> None:
        if device is not None:
            self._device = device
        if self.collection is not None:
            if self._device is not None:
                self.collection.to(self._device)
            self.collection.reset()
        if self.temporal is not None:
            self.temporal.collection.to(self._device or "cpu")
            self.temporal.collection.reset()
        self._budget = _Budget(self.num_clips)

    def update(self, net: nn.Module, clips: Tensor, targets: Tensor, relevance: Mapping[str, Tensor],
               selective: Mapping[str, Tensor], input_builder: InputBuilder | None = None) -> None:
        """Test the first clips of a batch: ``clips`` ``(B, C, T, H, W)`` at the full frame rate, the relevance of
        each method and its selective maps on them (names of :mod:`.keys`)."""
        k = self._budget.take(clips.shape[0])
        if k == 0:
            return
        x, target = clips[:k].detach(), targets[:k]
        checked = (tuple(x.shape), x.dtype, x.device)
        if checked != self._checked:
            self.check_data(x.shape[1:], batch=k, itemsize=x.element_size(), device=x.device)
            self._checked = checked
        seeds = clip_seeds(x, self.seed)
        common = {"batch_size": self.batch_size, "input_builder": input_builder}
        for ref in self.references:
            args = {**common, "steps": self.steps, "reference": ref, "blur_sigma": self.blur_sigma}
            for method in self.methods:
                rel = relevance[method][:k]
                for direction in ("deletion", "insertion"):
                    metric = self._metric(direction, ref, method)
                    metric.update(deletion_curve(net, x, rel, target, insertion=direction == "insertion", **args))
                    self._record(metric, {"auc": f"{direction}_auc_{ref}"}, method)
                if self.matched_budget:
                    for sigma in self.sigmas:
                        name = keys.selective(method, sigma, self.multi)
                        drops = matched_budget_drops(net, x, rel, selective[name][:k], target, reference=ref,
                                                     blur_sigma=self.blur_sigma, seed=seeds, **common)
                        metric = self._metric("drop", ref, method, f"{sigma:g}")
                        metric.update(**drops)
                        self._record(metric, {"selective": f"freeze_drop_{ref}"}, name)
                        self._record(metric, {"baseline": f"topm_drop_{ref}", "random": f"random_drop_{ref}",
                                              "selective_minus_random": f"drop_advantage_random_{ref}",
                                              "budget": "drop_budget"}, keys.at_sigma(method, sigma, self.multi))
            if self.random_floor:
                for direction in ("deletion", "insertion"):
                    metric = self._metric(direction, ref, "random")
                    metric.update(random_curve(net, x, target, insertion=direction == "insertion", seed=seeds,
                                               **args))
                    self._record(metric, {"auc": f"{direction}_auc_{ref}"}, "random")
        if self.reliance:
            metric = self._metric("reliance")
            metric.update(motion_reliance(net, x, target, **common))
            self._record(metric, {"freeze_drop": "full_freeze_drop", "static_drop": "full_static_drop",
                                  "mean_drop": "full_mean_drop", "clip_share": "motion_reliance"}, "model")
        if self.temporal is not None:
            self.temporal.update(net, x, target, relevance, selective, seeds, input_builder, self.records)

    def results(self, stage: str) -> dict[str, float]:
        """The stage's numbers under their logged keys (reduced over processes); none before the first batch."""
        prefix = keys.stage_prefix(stage)
        values: dict[str, float] = {}
        if self.collection is None:
            return values
        for ref in self.references:
            for method in [*self.methods, *(["random"] if self.random_floor else [])]:
                for direction in ("deletion", "insertion"):
                    result = self._metric(direction, ref, method).compute()
                    _log_stats(values, prefix, f"{direction}_auc_{ref}", method, result, "auc")
            if not self.matched_budget:
                continue
            for method in self.methods:
                for sigma in self.sigmas:
                    r = self._metric("drop", ref, method, f"{sigma:g}").compute()
                    base = keys.at_sigma(method, sigma, self.multi)
                    for quantity, name, logged in (
                        ("selective", f"freeze_drop_{ref}", keys.selective(method, sigma, self.multi)),
                        ("baseline", f"topm_drop_{ref}", base), ("random", f"random_drop_{ref}", base),
                        ("selective_minus_random", f"drop_advantage_random_{ref}", base),
                        ("selective_minus_baseline", f"drop_advantage_topm_{ref}", base),
                        ("budget", "drop_budget", base),
                    ):
                        _log_stats(values, prefix, name, logged, r, quantity)
        if self.reliance:
            r = self._metric("reliance").compute()
            _log_stats(values, prefix, "full_freeze_drop", "model", r, "freeze_drop")
            _log_stats(values, prefix, "full_static_drop", "model", r, "static_drop")
            _log_stats(values, prefix, "full_mean_drop", "model", r, "mean_drop")
            for name, quantity in (("motion_reliance", "share"), ("motion_reliance_lo", "share_lo"),
                                   ("motion_reliance_hi", "share_hi")):
                values[keys.metric_key(prefix, name, "model")] = float(r[quantity])
            values[keys.metric_key(prefix, "motion_reliance", "model", "n")] = float(r["share_n"])
            values[keys.metric_key(prefix, "motion_reliance", "model", "n_undefined")] = float(r["share_n_undefined"])
        if self.temporal is not None:
            values.update(self.temporal.results(stage))
        return values

    def artifacts(self) -> dict[str, Any]:
        """Mean curves per step for the figures: ``{"<direction>/<ref>/<method>": [s_0, ..., s_K]}``."""
        if self.collection is None:
            return {}
        curves: dict[str, Any] = {}
        for ref in self.references:
            for method in [*self.methods, *(["random"] if self.random_floor else [])]:
                for direction in ("deletion", "insertion"):
                    mean = self._metric(direction, ref, method).compute()["curve_mean"]
                    curves[f"{direction}/{ref}/{method}"] = [float(v) for v in mean]
        return {"faithfulness_curves": curves, "faithfulness_steps": self.steps}


class RandomizationStage:
    """Cascading model-parameter randomisation of each explainer on the first ``num_clips`` clips of an epoch.

    Args:
        explainers: name -> explainer (called on randomised copies of the model; never cached).
        sigma: threshold of the selective maps compared (the run's first sigma).
        padding: padding of the selective step.
        layers: ``"all"`` weighted layers, ``k`` / ``"top-k"`` nearest the output, or a list of module paths.
        num_clips: clips per epoch and process.
        seed: layer ``j`` is re-initialised under ``seed + j``.
    """

    def __init__(self, explainers: Mapping[str, Any], *, sigma: float, padding: str = "replicate",
                 layers: Any = "all", num_clips: int = 4, seed: int = 0) -> None:
        self.explainers = dict(explainers)
        if isinstance(layers, Sequence) and not isinstance(layers, str):
            layers = check_unique("randomization.layers", layers)
        self.sigma, self.padding, self.layers = float(sigma), padding, layers
        self.num_clips = check_int("randomization.num_clips", num_clips, 1)
        self.seed = check_int("randomization.seed", seed, 0)
        self.stages: list[str] | None = None
        self.collection: MetricCollection | None = None
        self._budget = _Budget(self.num_clips)
        self._device: torch.device | str | None = None
        self._checked: tuple[Any, ...] | None = None
        self.records: ClipRecords | None = None

    def check_data(self, clip_shape: Sequence[int], model: nn.Module, *, batch: int | None = None,
                   itemsize: int = 4, device: torch.device | str | None = None, available_clips: int | None = None,
                   available: int | None = None) -> None:
        """Refuse, before any work, ``num_clips`` above ``available_clips`` (when known) and a cascading
        randomisation whose memory estimate exceeds what ``device`` has available: the deep copy of ``model``
        (parameters and buffers) plus, per clip, the relevance and selective maps of the original and the current
        stage (``C x T*H*W`` each) and the float64 ranks of the Spearman correlations."""
        c, t, h, w = (int(v) for v in clip_shape)
        voxels = t * h * w
        _check_clip_count("randomization.num_clips", self.num_clips, available_clips)
        clips = self.num_clips if batch is None else min(self.num_clips, int(batch))
        copy = sum(p.numel() * p.element_size() for p in [*model.parameters(), *model.buffers()])
        need = {"model": copy, "clips": clips * (4 * c * voxels * itemsize + 12 * voxels * 8)}
        _check_memory("randomization", need, {"model": "randomization (enabled=false: the model copy alone)",
                                              "clips": "randomization.num_clips"},
                      {"model": f"{_gib(copy)} of weights", "clips": self.num_clips}, device, available,
                      f"a copy of the model and {clips} clips of shape {(c, t, h, w)}")

    def start(self, device: torch.device | str | None = None) -> None:
        self._device = device
        if self.collection is not None:
            self.collection.reset()
        self._budget = _Budget(self.num_clips)

    def _build(self, net: nn.Module, clips: Tensor, input_builder: InputBuilder | None) -> None:
        stages = randomization_stages(net, clips[:1], self.layers, input_builder=input_builder)
        self.stages = ["original", *(group[0] for group in stages)]
        self.collection = MetricCollection(
            {name: RandomizationCorrelation(self.stages) for name in self.explainers}, compute_groups=False)
        if self._device is not None:
            self.collection.to(self._device)

    def update(self, net: nn.Module, clips: Tensor, targets: Tensor, input_builder: InputBuilder | None = None,
               ) -> None:
        k = self._budget.take(clips.shape[0])
        if k == 0:
            return
        checked = (tuple(clips[:k].shape), clips.dtype, clips.device)
        if checked != self._checked:
            self.check_data(clips.shape[1:], net, batch=k, itemsize=clips.element_size(), device=clips.device)
            self._checked = checked
        if self.collection is None:
            self._build(net, clips, input_builder)
        assert self.collection is not None
        for name, explainer in self.explainers.items():
            select = functools.partial(selective_relevance, sigma=self.sigma, padding=self.padding)
            result = cascading_randomization(net, clips[:k].detach(), explainer, targets[:k], selective=select,
                                             layers=self.layers, seed=self.seed, input_builder=input_builder)
            self.collection[name].update(result)
            if self.records is not None:
                self._record(name, result)

    def record_into(self, records: ClipRecords) -> None:
        """Keep each clip's rank correlation at every stage in ``records`` too (``randomization_s<k>``)."""
        self.records = records

    def _record(self, name: str, result: RandomizationResult) -> None:
        assert self.records is not None
        for quantity, method in (("baseline", name), ("selective", keys.selective(name, self.sigma, False))):
            for k, values in enumerate(getattr(result, quantity)):  # (stages, clips)
                self.records.add_values(f"randomization_s{k}", method, values)

    def results(self, stage: str) -> dict[str, float]:
        prefix = keys.stage_prefix(stage)
        values: dict[str, float] = {}
        if self.collection is None or self.stages is None:
            return values
        for name in self.explainers:
            result = self.collection[name].compute()
            for quantity, method in (("baseline", name), ("selective", keys.selective(name, self.sigma, False))):
                for k in range(len(self.stages)):
                    for stat in _STATS:
                        values[keys.metric_key(prefix, f"randomization_s{k}", method, stat)] = \
                            float(result[f"{quantity}_{stat}"][k])
        return values

    def artifacts(self) -> dict[str, Any]:
        return {} if self.stages is None else {"randomization_stages": list(self.stages)}
