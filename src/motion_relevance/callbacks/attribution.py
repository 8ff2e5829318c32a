"""Lightning callbacks that explain validation/test clips and measure the explanations (SPEC §2–4).

:class:`AttributionCallback` runs the configured explainers (DTD, Grad-CAM, Guided Backprop, Guided Grad-CAM by
default) on the batches of the chosen stages, with gradients enabled, on at most ``num_clips`` clips every
``every_n_epochs`` epochs. It measures each baseline explanation (flow precision, ground-truth metrics on synthetic
data, agreement between methods, time per clip) and hands every explained batch to its listeners.

:class:`SelectiveRelevanceCallback` listens to it: it applies selective relevance for one or several sigmas and
measures the selective maps (flow precision, selectivity, ground truth, spatial bias, the selective step's time).

With an :class:`~motion_relevance.explain.cache.AttributionCache` (``cache`` argument), each clip's baseline
relevance is read from disk when the same model weights, explainer config and clip (video file, first frame,
preprocessing, explained class) were explained before, so sigma-sweep jobs after the first skip Captum. The
counters are logged as ``<stage>/cache_hits``, ``<stage>/cache_misses`` (summed over processes) and
``<stage>/cache_bytes`` (the folder's size).

All numbers go through ``torchmetrics`` metrics with sum-type states, so they are exact under DDP. Logged keys are
``<stage>/<metric>/<method>``, e.g. ``test/precision/dtd``, ``test/precision/dtd_selective``,
``test/selectivity_area/dtd``, ``test/agreement/dtd~gradcam``, ``test/overhead_ms/selective``; each mean has
``…_std`` and ``…_n`` siblings (``test/precision_std/dtd``) and undefined clips are counted in ``…_n_undefined``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric

from motion_relevance.data.transforms import ClipTransform
from motion_relevance.explain.cache import AttributionCache, clip_identity, explainer_hash, state_hash
from motion_relevance.explain.selective import selective_relevance
from motion_relevance.metrics.classes import (
    Agreement,
    GroundTruthMetrics,
    MotionPrecision,
    Overhead,
    Selectivity,
    SpatialBias,
)
from motion_relevance.metrics.timing import OverheadTimer

log = logging.getLogger(__name__)

STAGES = ("validate", "test")
_TRANSFORM_KEYS = ("crop_size", "mean", "std", "scale", "channel_order")


@dataclass
class ExplainedBatch:
    """One explained batch, as handed to listeners. Tensors on the model's device unless noted."""

    stage: str
    clips: torch.Tensor  # (B, 3, T, H, W) normalised model input
    labels: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B,) explained class
    relevance: dict[str, torch.Tensor]  # method -> (B, C, T, H, W)
    moves: torch.Tensor | None = None  # (B, T, H, W) bool, CPU: optical-flow motion
    valid: torch.Tensor | None = None  # (B, T) bool, CPU: frames with flow
    mask: torch.Tensor | None = None  # (B, T, H, W) bool: ground-truth motion (synthetic data)
    frames: torch.Tensor | None = None  # (B, T, H, W, 3) uint8 RGB, CPU
    videos: list[str] = field(default_factory=list)

    @functools.cached_property
    def relevance_sum(self) -> dict[str, torch.Tensor]:
        """method -> channel sum ``(B, 1, T, H, W)``: every metric starts from it (SPEC §4: ``P(X) = X.sum(C) > 0``,
        ``R+ = max(X.sum(C), 0)``), so it is taken once per batch and method; a one-channel map sums to itself,
        so the metrics see the same numbers bit for bit."""
        return {name: rel.sum(dim=1, keepdim=True) for name, rel in self.relevance.items()}


def _metric_dict(factory: Callable[[], Metric], names: Sequence[str]) -> nn.ModuleDict:
    return nn.ModuleDict({name: factory() for name in names})


def _safe(name: str) -> str:
    """ModuleDict keys may not contain dots."""
    return name.replace(".", "_")


class AttributionCallback(pl.Callback):
    """Explain clips during validation/test and measure the baseline explanations.

    Args:
        explainers: mapping name -> explainer (``explainer(model, clips, target) -> (B, C, T, H, W)``); the names
            are the metric keys (``dtd``, ``gradcam`` …).
        flow: a :class:`~motion_relevance.metrics.flow.FlowEstimator` for flow precision, or None to skip it.
        stages: ``"validate"`` and/or ``"test"``.
        num_clips: clips explained per stage and epoch on each process (None = all).
        every_n_epochs: explain validation every N epochs (test always runs).
        target: ``"predicted"`` (default, as the paper) or ``"label"``.
        mode: positive-relevance rule of SPEC §4: ``"positive"`` (``X.sum(C) > 0``) or ``"nonzero"``.
        keep_clips: clips kept (on rank 0) for figures.
        cache: an :class:`~motion_relevance.explain.cache.AttributionCache` for the baseline explanations, or None.
    """

    def __init__(
        self,
        explainers: Mapping[str, Any],
        flow: Any | None = None,
        stages: Sequence[str] = ("test",),
        num_clips: int | None = 32,
        every_n_epochs: int = 1,
        target: str = "predicted",
        mode: str = "positive",
        keep_clips: int = 4,
        cache: AttributionCache | None = None,
    ) -> None:
        super().__init__()
        if not explainers:
            raise ValueError("callbacks.attribution.explainers is empty; configure at least one explainer")
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"callbacks.attribution.stages has {unknown}; allowed: {list(STAGES)}")
        if target not in ("predicted", "label"):
            raise ValueError(f"callbacks.attribution.target must be 'predicted' or 'label', got {target!r}")
        if num_clips is not None and num_clips < 1:
            raise ValueError(f"callbacks.attribution.num_clips must be >= 1 or null, got {num_clips}")
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.attribution.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.explainers = dict(explainers)
        self.flow = flow
        self.stages = tuple(stages)
        self.num_clips = num_clips
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.mode = mode
        self.keep_clips = keep_clips
        if cache is not None and not isinstance(cache, AttributionCache):
            raise TypeError(f"callbacks.attribution.cache must be an AttributionCache or null, got {type(cache)}")
        self.cache = cache
        self.listeners: list[Any] = []
        self.transform: ClipTransform | None = None
        self._preprocessing: dict[str, Any] = {}
        self._data_root: str | None = None
        self._model_hash: str | None = None
        self._explainer_keys: dict[str, str] = {}
        self.kept: list[ExplainedBatch] = []
        self.skipped_flow_clips = 0
        self._seen = 0
        self._active = False
        names = list(self.explainers)
        self.metrics = nn.ModuleDict(
            {
                "precision": _metric_dict(lambda: MotionPrecision(mode=mode), names),
                "gt": _metric_dict(lambda: GroundTruthMetrics(mode=mode), names),
                "overhead": _metric_dict(Overhead, names),
                "agreement": _metric_dict(
                    lambda: Agreement(mode=mode), [f"{a}~{b}" for a, b in itertools.combinations(names, 2)]
                ),
            }
        )

    # ---------------------------------------------------------------- set-up
    def add_listener(self, listener: Any) -> None:
        """``listener.on_explained(trainer, pl_module, batch: ExplainedBatch)`` is called for every batch."""
        self.listeners.append(listener)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.metrics.to(pl_module.device)
        self.transform = self._find_transform(trainer, pl_module)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "transform_config"):
            self._preprocessing = dict(datamodule.transform_config())
        elif getattr(pl_module.hparams, "preprocessing", None):
            self._preprocessing = dict(pl_module.hparams.preprocessing)
        root = getattr(datamodule, "root", None)
        self._data_root = str(root) if root is not None else None
        if self.cache is not None:
            self._explainer_keys = {name: explainer_hash(e) for name, e in self.explainers.items()}
        if getattr(trainer, "inference_mode", False) or getattr(trainer, "_inference_mode", False):
            raise ValueError(
                "explanations need gradients in validation/test: set trainer.inference_mode=false "
                "(Lightning's default inference_mode=true disables torch.enable_grad())"
            )

    @staticmethod
    def _find_transform(trainer: pl.Trainer, pl_module: pl.LightningModule) -> ClipTransform | None:
        config = None
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "transform_config"):
            config = datamodule.transform_config()
        elif getattr(pl_module.hparams, "preprocessing", None):
            config = dict(pl_module.hparams.preprocessing)
        if not config:
            log.warning("No preprocessing config found: flow metrics and figures are skipped")
            return None
        return ClipTransform(**{k: config[k] for k in _TRANSFORM_KEYS if k in config})

    # ---------------------------------------------------------------- epochs
    def _stage_active(self, trainer: pl.Trainer, stage: str) -> bool:
        if stage not in self.stages or trainer.sanity_checking:
            return False
        return stage == "test" or trainer.current_epoch % self.every_n_epochs == 0

    def _start(self, trainer: pl.Trainer, stage: str) -> None:
        self._active = self._stage_active(trainer, stage)
        self._seen = 0
        self.kept = []
        self.skipped_flow_clips = 0
        for group in self.metrics.values():
            for metric in group.values():
                metric.reset()
        if self.cache is not None:
            self.cache.reset_counters()
            if self._active and self.cache.enabled:
                # the weights may change between epochs (mr-train): hash them at every explained stage
                self._model_hash = state_hash(getattr(trainer.lightning_module, "net", trainer.lightning_module))
        for listener in self.listeners:
            listener.on_explain_start(trainer, stage, self._active)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "validate")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._explain(trainer, pl_module, batch, "validate", outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._explain(trainer, pl_module, batch, "test", outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

    # --------------------------------------------------------------- explain
    def _explain(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Mapping[str, Any], stage: str,
        outputs: Any = None,
    ) -> None:
        if not self._active or batch.get("clip") is None or batch["clip"].numel() == 0:
            return
        budget = None if self.num_clips is None else self.num_clips - self._seen
        if budget is not None and budget <= 0:
            return
        clips = batch["clip"][:budget].to(pl_module.device)
        labels = batch["label"][: clips.shape[0]].to(pl_module.device)
        self._seen += clips.shape[0]
        net = getattr(pl_module, "net", pl_module)
        was_training = net.training
        net.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                step_logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
                if self.target == "label":
                    targets = labels
                elif step_logits is not None and step_logits.shape[0] >= clips.shape[0]:
                    # the evaluation step's own prediction: no second forward pass
                    targets = step_logits[: clips.shape[0]].argmax(dim=1).to(clips.device)
                else:
                    with torch.no_grad():
                        targets = net(clips).argmax(dim=1)
                clip_ids = self._clip_ids(batch, clips.shape[0])
                relevance: dict[str, torch.Tensor] = {}
                for name, explainer in self.explainers.items():
                    relevance[name] = self._relevance(name, explainer, net, clips, targets, clip_ids, pl_module)
        finally:
            net.train(was_training)

        explained = ExplainedBatch(
            stage=stage, clips=clips.detach(), labels=labels, targets=targets, relevance=relevance,
            videos=list(batch.get("video", []))[: clips.shape[0]],
        )
        mask = batch.get("mask")
        if mask is not None:
            explained.mask = mask[: clips.shape[0]].to(pl_module.device).bool()
        if self.transform is not None:
            explained.frames = self.transform.denormalize(clips)
            if self.flow is not None:
                explained.moves, explained.valid = self._flow(explained, batch)
        self._measure(explained)
        if trainer.is_global_zero and sum(b.clips.shape[0] for b in self.kept) < self.keep_clips:
            self.kept.append(_to_cpu(explained))
        for listener in self.listeners:
            listener.on_explained(trainer, pl_module, explained)

    def _clip_ids(self, batch: Mapping[str, Any], n: int) -> list[str] | None:
        """Cache identities of the first ``n`` clips (None when the cache is off or the batch lacks video/start)."""
        if self.cache is None or not self.cache.enabled or self._model_hash is None:
            return None
        videos, starts = batch.get("video"), batch.get("start")
        if not videos or starts is None:
            return None
        ids = []
        for video, start in zip(list(videos)[:n], starts[:n]):
            stamp = ""
            if self._data_root is not None:
                # the file's size and mtime: a regenerated video in place never reuses entries
                try:
                    st = (Path(self._data_root) / str(video)).stat()
                    stamp = f"{self._data_root}|{st.st_size}|{st.st_mtime_ns}"
                except OSError:
                    stamp = self._data_root
            ids.append(clip_identity(f"{stamp}|{video}", int(start), self._preprocessing))
        return ids

    def _relevance(
        self, name: str, explainer: Any, net: nn.Module, clips: torch.Tensor, targets: torch.Tensor,
        clip_ids: list[str] | None, pl_module: pl.LightningModule,
    ) -> torch.Tensor:
        """Relevance ``(B, C, T, H, W)`` of one explainer: cached clips from disk, the others through Captum.

        The overhead metric gets each clip's explanation time (the stored one for cache hits).
        """
        n = clips.shape[0]
        entries: list[Any] = [None] * n
        keys: list[str] | None = None
        if clip_ids is not None and self.cache is not None:
            keys = [self.cache.key(self._model_hash or "", self._explainer_keys[name], cid, int(t))
                    for cid, t in zip(clip_ids, targets.tolist())]
            entries = self.cache.lookup(keys)
        missing = [i for i, e in enumerate(entries) if e is None]
        fresh: torch.Tensor | None = None
        per_clip = 0.0
        if missing:
            idx = torch.tensor(missing, device=clips.device)
            sub_clips = clips if len(missing) == n else clips[idx]
            sub_targets = targets if len(missing) == n else targets[idx]
            with OverheadTimer(pl_module.device) as timer:
                fresh = explainer(net, sub_clips, target=sub_targets).detach()
            per_clip = timer.ms / len(missing)
            if keys is not None and self.cache is not None:
                for j, i in enumerate(missing):
                    self.cache.put(keys[i], fresh[j], per_clip)
        if fresh is not None and len(missing) == n:
            out = fresh
        else:
            shape = entries[next(i for i, e in enumerate(entries) if e is not None)].relevance.shape
            out = torch.empty((n, *shape), dtype=clips.dtype, device=clips.device)
            for i, e in enumerate(entries):
                if e is not None:
                    out[i] = e.relevance.to(device=clips.device, dtype=clips.dtype)
            if fresh is not None:
                out[torch.tensor(missing, device=clips.device)] = fresh.to(out.dtype)
        # One value per timed batch (its time / its clips): clips of one batch share that value, so feeding it
        # per clip would fake a spread of 0. Cache hits carry the per-clip time of the batch that made them.
        times = [per_clip if e is None else e.ms for e in entries]
        self.metrics["overhead"][_safe(name)].update(list(dict.fromkeys(times)))
        return out

    def _flow(self, explained: ExplainedBatch, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        starts = batch.get("start")
        keys = None
        if explained.videos and starts is not None:
            crop = self.transform.crop_size if self.transform is not None else None
            keys = [f"{v}|{int(s)}|{crop}" for v, s in zip(explained.videos, starts)]
        moves, valid = self.flow(explained.frames, keys)
        n_without = int((~valid.any(dim=1)).sum())
        if n_without:
            self.skipped_flow_clips += n_without
        return moves, valid

    def _measure(self, b: ExplainedBatch) -> None:
        device = b.clips.device
        sums = b.relevance_sum
        for name, rel_sum in sums.items():
            key = _safe(name)
            if b.moves is not None:
                self.metrics["precision"][key].update(rel_sum, b.moves.to(device), b.valid.to(device))
            if b.mask is not None:
                self.metrics["gt"][key].update(rel_sum, b.mask)
        for a, c in itertools.combinations(sums, 2):
            self.metrics["agreement"][_safe(f"{a}~{c}")].update(sums[a], sums[c])

    # ---------------------------------------------------------------- finish
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active:
            return
        prefix = "val" if stage == "validate" else "test"
        values: dict[str, float] = {}
        names = list(self.explainers)
        for name in names:
            key = _safe(name)
            if self.flow is not None:
                _put(values, prefix, "precision", name, self.metrics["precision"][key].compute(), "precision")
            if self.metrics["gt"][key].update_called:
                gt = self.metrics["gt"][key].compute()
                for q, label in (("precision", "gt_precision"), ("recall", "gt_recall"),
                                 ("motion_share", "motion_share"), ("f1", "gt_f1")):
                    _put(values, prefix, label, name, gt, q)
            _put(values, prefix, "overhead_ms", name, self.metrics["overhead"][key].compute(), "ms")
        for a, c in itertools.combinations(names, 2):
            _put(values, prefix, "agreement", f"{a}~{c}", self.metrics["agreement"][_safe(f"{a}~{c}")].compute(),
                 "iou")
        values[f"{prefix}/explained_clips"] = float(_global_sum(self._seen, pl_module))
        if self.cache is not None:
            info = self.cache.info()
            values[f"{prefix}/cache_hits"] = float(_global_sum(info["hits"], pl_module))
            values[f"{prefix}/cache_misses"] = float(_global_sum(info["misses"], pl_module))
            values[f"{prefix}/cache_corrupt"] = float(_global_sum(info["corrupt"], pl_module))
            values[f"{prefix}/cache_bytes"] = float(info["bytes"])
            values[f"{prefix}/cache_enabled"] = float(self.cache.enabled)
        if self.flow is not None:
            values[f"{prefix}/flow_skipped_clips"] = float(_global_sum(self.skipped_flow_clips, pl_module))
            if self.skipped_flow_clips:
                log.warning("%d clips have fewer than 2 frames: flow metrics skipped for them", self.skipped_flow_clips)
        for listener in self.listeners:
            values.update(listener.on_explain_end(trainer, pl_module, stage, prefix))
        _log_values(pl_module, values)


class SelectiveRelevanceCallback(pl.Callback):
    """Selective relevance (SPEC §1) of every explanation the :class:`AttributionCallback` produces, measured.

    Args:
        sigma: threshold in standard deviations of the temporal gradient; a float or a list (all evaluated in one
            pass, the temporal gradient computed once).
        padding: ``"replicate"`` (default) or ``"zeros"`` (the authors' code).
        mode: positive-relevance rule (``"positive"`` or ``"nonzero"``).
        figures: save (and log) the Figure-3 grid and overlay videos of the kept clips at each explained epoch.
        overlay_videos: how many of the kept clips get an overlay video.
    """

    def __init__(
        self,
        sigma: float | Sequence[float] = 4.0,
        padding: str = "replicate",
        mode: str = "positive",
        figures: bool = True,
        overlay_videos: int = 2,
    ) -> None:
        super().__init__()
        sigmas = [float(s) for s in (sigma if isinstance(sigma, Sequence) and not isinstance(sigma, str) else [sigma])]
        if not sigmas or any(math.isnan(s) or s < 0 for s in sigmas):
            raise ValueError(f"selective.sigma must be a non-negative number or a list of them, got {sigma!r}")
        if padding not in ("replicate", "zeros"):
            raise ValueError(f"selective.padding must be 'replicate' or 'zeros', got {padding!r}")
        self.sigmas = sigmas
        self.padding = padding
        self.figures = figures
        self.overlay_videos = overlay_videos
        self.mode = mode
        self.kept: list[dict[str, torch.Tensor]] = []
        self._active = False
        self.metrics: nn.ModuleDict | None = None
        self.attribution: AttributionCallback | None = None

    def suffix(self, sigma: float) -> str:
        """Method-name suffix of the selective maps at ``sigma`` (``_selective`` when only one sigma)."""
        return "_selective" if len(self.sigmas) == 1 else f"_selective_s{sigma:g}"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        found = [cb for cb in trainer.callbacks if isinstance(cb, AttributionCallback)]
        if not found:
            raise ValueError("SelectiveRelevanceCallback needs an AttributionCallback in the callbacks config")
        self.attribution = found[0]
        if self not in self.attribution.listeners:
            self.attribution.add_listener(self)
        names = list(self.attribution.explainers)
        mode = self.mode
        keys = [_safe(n + self.suffix(s)) for n in names for s in self.sigmas]
        self.metrics = nn.ModuleDict(
            {
                "precision": _metric_dict(lambda: MotionPrecision(mode=mode), keys),
                "gt": _metric_dict(lambda: GroundTruthMetrics(mode=mode), keys),
                "selectivity": _metric_dict(lambda: Selectivity(mode=mode), keys),
                "bias": _metric_dict(SpatialBias, keys),
                "overhead": nn.ModuleDict({"selective": Overhead()}),
            }
        ).to(pl_module.device)

    def on_explain_start(self, trainer: pl.Trainer, stage: str, active: bool) -> None:
        self._active = active
        self.kept = []
        if self.metrics is not None:
            for group in self.metrics.values():
                for metric in group.values():
                    metric.reset()

    def on_explained(self, trainer: pl.Trainer, pl_module: pl.LightningModule, b: ExplainedBatch) -> None:
        assert self.metrics is not None
        device = b.clips.device
        kept_maps: dict[str, torch.Tensor] = {}
        for name, rel in b.relevance.items():
            with OverheadTimer(device) as timer:
                # a list of sigmas gives a leading sigma dimension; the temporal gradient is computed once
                sel = selective_relevance(rel, list(self.sigmas), padding=self.padding)
            # time per clip and sigma: the selective step's cost for one map
            per_map = timer.ms / (rel.shape[0] * len(self.sigmas))
            self.metrics["overhead"]["selective"].update([per_map])  # one timed call: one value
            # The selective mask is shared by the channels, so the selective maps also reach the metrics as
            # channel sums (see ExplainedBatch.relevance_sum).
            rel_sum = b.relevance_sum[name]
            for sigma, sel_map in zip(self.sigmas, sel):
                key = _safe(name + self.suffix(sigma))
                sel_sum = sel_map.sum(dim=1, keepdim=True)
                if b.moves is not None:
                    self.metrics["precision"][key].update(sel_sum, b.moves.to(device), b.valid.to(device))
                if b.mask is not None:
                    self.metrics["gt"][key].update(sel_sum, b.mask)
                self.metrics["selectivity"][key].update(rel_sum, sel_sum)
                self.metrics["bias"][key].update(rel_sum, sel_sum)
                kept_maps[name + self.suffix(sigma)] = sel_map.detach().cpu()
        limit = self.attribution.keep_clips if self.attribution else 0
        if trainer.is_global_zero and sum(next(iter(m.values())).shape[0] for m in self.kept) < limit:
            self.kept.append(kept_maps)

    def on_explain_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, prefix: str) -> dict:
        if not self._active or self.metrics is None or self.attribution is None:
            return {}
        values: dict[str, float] = {}
        for name in self.attribution.explainers:
            for sigma in self.sigmas:
                method = name + self.suffix(sigma)
                key = _safe(method)
                if self.attribution.flow is not None:
                    _put(values, prefix, "precision", method, self.metrics["precision"][key].compute(), "precision")
                if self.metrics["gt"][key].update_called:
                    gt = self.metrics["gt"][key].compute()
                    for q, label in (("precision", "gt_precision"), ("recall", "gt_recall"),
                                     ("motion_share", "motion_share"), ("f1", "gt_f1")):
                        _put(values, prefix, label, method, gt, q)
                sel = self.metrics["selectivity"][key].compute()
                # selectivity and spatial bias are properties of the baseline method at this sigma
                base = name if len(self.sigmas) == 1 else f"{name}@s{sigma:g}"
                _put(values, prefix, "selectivity_area", base, sel, "area")
                _put(values, prefix, "selectivity_mass", base, sel, "mass")
                _put(values, prefix, "spatial_bias", base, self.metrics["bias"][key].compute(), "bias")
        _put(values, prefix, "overhead_ms", "selective", self.metrics["overhead"]["selective"].compute(), "ms")
        if trainer.is_global_zero and self.figures and self.kept and self.attribution.kept:
            self._figures(trainer, pl_module, prefix)
        return values

    def _figures(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        """Figure-3 grid and overlay videos of the kept clips; a failure here never loses the numbers."""
        from motion_relevance.callbacks.figures import concat_kept, describe_rows, grid_columns, save_epoch_figures

        assert self.attribution is not None
        if self.attribution.kept[0].frames is None:
            return
        limit = self.attribution.keep_clips
        base = concat_kept(self.attribution.kept, limit)
        selective = {k: torch.cat([m[k] for m in self.kept])[:limit] for k in self.kept[0]}
        columns = grid_columns(base["relevance"], selective, list(self.attribution.explainers))
        class_names = getattr(pl_module.hparams, "class_names", None)
        try:
            save_epoch_figures(
                trainer, base["frames"], columns, prefix, overlay_videos=self.overlay_videos,
                captions=describe_rows(base["labels"], base["targets"], class_names),
            )
        except Exception as err:  # noqa: BLE001 - figures are a convenience, the metrics are the record
            log.error("Could not draw the explanation figures: %s: %s", type(err).__name__, err)


def _to_cpu(b: ExplainedBatch) -> ExplainedBatch:
    return ExplainedBatch(
        stage=b.stage, clips=b.clips.cpu(), labels=b.labels.cpu(), targets=b.targets.cpu(),
        relevance={k: v.cpu() for k, v in b.relevance.items()},
        moves=b.moves, valid=b.valid, mask=None if b.mask is None else b.mask.cpu(), frames=b.frames,
        videos=list(b.videos),
    )


def _put(values: dict[str, float], prefix: str, metric: str, method: str, stats: Mapping[str, torch.Tensor],
         quantity: str) -> None:
    """Flatten ``{q_mean, q_std, q_n, q_n_undefined}`` into ``prefix/metric[_std|_n|_n_undefined]/method``."""
    for suffix in ("mean", "std", "n", "n_undefined"):
        value = stats.get(f"{quantity}_{suffix}")
        if value is None:
            continue
        name = metric if suffix == "mean" else f"{metric}_{suffix}"
        values[f"{prefix}/{name}/{method}"] = float(value)


def _global_sum(value: int, pl_module: pl.LightningModule) -> int:
    tensor = torch.tensor(float(value), device=pl_module.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return int(tensor.item())


def _log_values(pl_module: pl.LightningModule, values: Mapping[str, float]) -> None:
    """Log already-reduced numbers (identical on every rank), NaN included: an undefined mean stays visible."""
    for key, value in values.items():
        pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)


