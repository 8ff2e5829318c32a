"""The Lightning adapter of the explanation pipeline: explain validation/test batches and log the numbers.

:class:`ExplanationCallback` hands every evaluation batch of the chosen stages (at most ``num_clips`` clips per
process and epoch, every ``every_n_epochs`` epochs for validation) to an
:class:`~motion_relevance.pipeline.ExplanationPipeline`, with gradients enabled and the network in eval mode, and
logs ``pipeline.results(stage)`` at the epoch's end: keys ``<stage>/<metric>/<method>`` (see
:mod:`motion_relevance.metrics.keys`), e.g. ``test/precision/dtd``, ``test/precision/dtd_selective``,
``test/selectivity_area/dtd``, ``test/agreement/dtd~gradcam``, ``test/overhead_ms/selective``, each mean with
``…_std``, ``…_n`` and ``…_n_undefined`` siblings.

At the end of each explained stage the callback writes the run folder (``trainer.default_root_dir``) through a
:class:`~motion_relevance.pipeline.record.RunRecord`, for ``mr-explain`` and ``mr-train`` alike: on rank zero
``metrics.json`` first (the stage's logged numbers and the non-scalar results: mean faithfulness curves,
randomisation stage names), then the tables (``tables/``; a validation stage's in ``tables/val/``) and the figures
(the explanation grid and overlay videos of the first ``keep_clips`` clips with their per-frame relevance strip,
the faithfulness, randomisation and per-frame relevance curves under ``explanations/``) and the per-frame curves as
W&B line plots; on every rank its per-clip values (``record_clips``: ``per_clip.csv``, see
:func:`~motion_relevance.pipeline.record.clip_file`) and the per-frame relevance shares of its clips
(``temporal.csv``, :mod:`motion_relevance.pipeline.temporal`). A failing writer is reported and the others still run; a
full disk ends the run (:class:`~motion_relevance.pipeline.record.RunFolderFull`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from motion_relevance.callbacks.figures import save_faithfulness_figures, save_kept_figures
from motion_relevance.checks import check_unique, to_plain
from motion_relevance.data.transforms import ClipTransform
from motion_relevance.explain.cache import AttributionCache
from motion_relevance.metrics.keys import stage_prefix
from motion_relevance.pipeline import ExplanationPipeline
from motion_relevance.pipeline.record import RunRecord, clip_file
from motion_relevance.pipeline.tables import write_csv, write_tables
from motion_relevance.pipeline.temporal import log_temporal_curves, temporal_file, write_temporal_csv

log = logging.getLogger(__name__)

__all__ = ["STAGES", "ExplanationCallback"]

STAGES = ("validate", "test")
_TRANSFORM_KEYS = ("crop_size", "mean", "std", "scale", "channel_order")


class ExplanationCallback(pl.Callback):
    """Explain clips during validation/test and log the explanation metrics.

    Args:
        explainers: name -> explainer; the names are the metric keys (``dtd``, ``gradcam`` …).
        selective: ``{"sigma": float or list, "padding": "replicate" | "zeros"}`` (``None``: no selective maps).
        flow: a :class:`~motion_relevance.metrics.flow.FlowEstimator`, or None to skip flow precision.
        stages: ``"validate"`` and/or ``"test"``.
        num_clips: clips explained per stage and epoch on each process (None = all).
        every_n_epochs: explain validation every N epochs (test always runs).
        target: ``"predicted"`` (the paper) or ``"label"``.
        mode: positive-relevance rule, ``"positive"`` (``X.sum(C) > 0``) or ``"nonzero"``.
        keep_clips: clips kept on rank zero for figures.
        cache: an :class:`~motion_relevance.explain.cache.AttributionCache`, or None.
        figures: save (and log) the explanation grid and overlay videos at each explained epoch.
        overlay_videos: how many kept clips get an overlay video.
        faithfulness: settings of the deletion/insertion, matched-budget and motion-reliance tests
            (:class:`~motion_relevance.pipeline.FaithfulnessStage`; ``enabled: false`` or None: off).
        randomization: settings of the cascading randomisation check
            (:class:`~motion_relevance.pipeline.RandomizationStage`; ``enabled: false`` or None: off).
        record_clips: keep every per-clip value and write them into the run folder (``per_clip.csv``).
    """

    def __init__(
        self,
        explainers: Mapping[str, Any],
        selective: Mapping[str, Any] | None = None,
        flow: Any | None = None,
        stages: Sequence[str] = ("test",),
        num_clips: int | None = 32,
        every_n_epochs: int = 1,
        target: str = "predicted",
        mode: str = "positive",
        keep_clips: int = 4,
        cache: AttributionCache | None = None,
        figures: bool = True,
        overlay_videos: int = 2,
        faithfulness: Mapping[str, Any] | None = None,
        randomization: Mapping[str, Any] | None = None,
        record_clips: bool = False,
    ) -> None:
        super().__init__()
        check_unique("callbacks.explanations.stages", stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"callbacks.explanations.stages={list(stages)}: allowed values are {list(STAGES)}")
        if num_clips is not None and (isinstance(num_clips, bool) or int(num_clips) < 1):
            raise ValueError(f"num_clips={num_clips!r}: expected an integer >= 1 or null (every clip)")
        if isinstance(every_n_epochs, bool) or int(every_n_epochs) < 1:
            raise ValueError(f"callbacks.explanations.every_n_epochs={every_n_epochs!r}: expected an integer >= 1")
        selective = dict(to_plain(selective or {}))
        extra = set(selective) - {"sigma", "padding"}
        if extra:
            raise ValueError(f"selective has unknown keys {sorted(extra)}; allowed: sigma, padding")
        self.pipeline_args = {
            "explainers": dict(explainers), "sigma": selective.get("sigma"),
            "padding": selective.get("padding", "replicate"), "flow": flow, "cache": cache, "target": target,
            "mode": mode, "keep_clips": int(keep_clips), "faithfulness": to_plain(faithfulness),
            "randomization": to_plain(randomization), "record_clips": bool(record_clips),
        }
        # Built without the data's transform to check every argument now; rebuilt in setup() with it.
        self.pipeline = ExplanationPipeline(**self.pipeline_args)
        self.stages = tuple(stages)
        self.num_clips = None if num_clips is None else int(num_clips)
        self.every_n_epochs = int(every_n_epochs)
        self.figures = bool(figures)
        self.overlay_videos = int(overlay_videos)
        self._active = False
        self._seen = 0
        self._values: dict[str, Any] = {}

    # ---------------------------------------------------------------- set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loops = {"validate": getattr(trainer, "validate_loop", None), "test": getattr(trainer, "test_loop", None)}
        if any(getattr(loops[s], "inference_mode", False) for s in self.stages):
            raise ValueError(
                "explanations need gradients in validation/test: set trainer.inference_mode=false "
                "(Lightning's default inference_mode=true disables torch.enable_grad())"
            )
        args = dict(self.pipeline_args, transform=self._transform(trainer, pl_module))
        if not trainer.is_global_zero:
            args["keep_clips"] = 0
        self.pipeline = ExplanationPipeline(**args)

    @staticmethod
    def _transform(trainer: pl.Trainer, pl_module: pl.LightningModule) -> ClipTransform | None:
        """The evaluation transform (model-input frames for flow and figures): the data's, else the checkpoint's."""
        datamodule = getattr(trainer, "datamodule", None)
        config = datamodule.transform_config() if hasattr(datamodule, "transform_config") else None
        config = config or to_plain(getattr(pl_module.hparams, "preprocessing", None) or {})
        if not config:
            log.warning("No preprocessing config found: flow metrics and figures are skipped")
            return None
        return ClipTransform(**{k: config[k] for k in _TRANSFORM_KEYS if k in config})

    # ---------------------------------------------------------------- epochs
    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = stage in self.stages and not trainer.sanity_checking and (
            stage == "test" or trainer.current_epoch % self.every_n_epochs == 0)
        self._seen = 0
        if self._active:
            self.pipeline.start(_net(pl_module), device=pl_module.device)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "validate")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._explain(pl_module, batch, "validate", outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._explain(pl_module, batch, "test", outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

    # the stage's logged numbers are in trainer.callback_metrics from here on
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_record(trainer, pl_module, "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_record(trainer, pl_module, "test")

    # --------------------------------------------------------------- batches
    def _explain(self, pl_module: pl.LightningModule, batch: Mapping[str, Any], stage: str, outputs: Any) -> None:
        clips = batch.get("clip") if self._active else None
        if clips is None:
            return
        n = int((clips if isinstance(clips, torch.Tensor) else clips[0]).shape[0])
        budget = n if self.num_clips is None else min(n, self.num_clips - self._seen)
        if budget <= 0:
            return
        device = pl_module.device
        clips = clips[:budget].to(device) if isinstance(clips, torch.Tensor) else [c[:budget].to(device)
                                                                                    for c in clips]
        mask = batch.get("mask")
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        self._seen += budget
        net = _net(pl_module)
        was_training = net.training
        net.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                self.pipeline.explain(
                    net, clips, batch["label"][:budget].to(device), stage=stage, logits=logits,
                    mask=None if mask is None else mask[:budget], videos=list(batch.get("video", [])),
                )
        finally:
            net.train(was_training)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active:
            return
        values = self.pipeline.results(stage)
        skipped = values.get(f"{stage_prefix(stage)}/flow_skipped_clips")
        if skipped:
            log.warning("%d clips have fewer than 2 frames: flow metrics skipped for them", int(skipped))
        # already reduced over processes (identical on every rank): NaN included, an undefined mean stays visible
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
        self._values = values

    def _write_record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The stage's run folder (see the module docstring): ``metrics.json`` first, then per-clip values, tables
        and figures, each writer isolated."""
        if not self._active:
            return
        self._active = False
        prefix = stage_prefix(stage)
        artifacts = {f"{prefix}/{k}": v for k, v in self.pipeline.artifacts().items()}
        record = RunRecord(trainer.default_root_dir)
        metrics = {**dict(trainer.callback_metrics), **artifacts}
        if trainer.is_global_zero:
            record.write_metrics(metrics)
        rows = self.pipeline.clip_rows()
        if rows:
            path = record.folder / clip_file(prefix, trainer.world_size, trainer.global_rank)
            record.guard("per-clip values", path, lambda: write_csv([{"stage": prefix, **r} for r in rows], path))
        frame_rows = self.pipeline.temporal_rows(stage)
        if frame_rows:
            path = record.folder / temporal_file(trainer.world_size, trainer.global_rank)
            record.guard("per-frame relevance", path, lambda: write_temporal_csv(frame_rows, path))
        if trainer.is_global_zero:
            tables_dir = record.folder / "tables" / ("" if prefix == "test" else prefix)
            tables = write_tables(to_plain(metrics), tables_dir, stage=prefix, guard=record.guard)
            _log_tables(trainer, tables, "tables" if prefix == "test" else f"tables/{prefix}", record)
            curves = artifacts.get(f"{prefix}/temporal_curves")
            if curves:
                record.guard("logged per-frame curves", f"{prefix}/temporal",
                             lambda: log_temporal_curves(trainer.loggers, to_plain(curves), prefix))
            if self.figures:
                self._draw(trainer, pl_module, prefix, {**self._values, **artifacts}, record)
        record.close()

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str, metrics: dict[str, Any],
              record: RunRecord) -> None:
        """The explanation grid and overlay videos of the kept clips, the faithfulness and randomisation curves."""
        out = record.folder / "explanations"  # each file is guarded inside; this catches the drawing around them
        if self.pipeline.kept:
            record.guard("explanation figures", out, lambda: save_kept_figures(
                trainer, self.pipeline, prefix, overlay_videos=self.overlay_videos,
                class_names=getattr(pl_module.hparams, "class_names", None), record=record))
        record.guard("curve figures", out, lambda: save_faithfulness_figures(trainer, metrics, prefix, record=record))


def _log_tables(trainer: pl.Trainer, tables: Mapping[str, list[dict[str, Any]]], key: str, record: RunRecord) -> None:
    """The tables to loggers that take tables (W&B); a logger that fails is reported like a writer."""
    for logger in trainer.loggers:
        if not hasattr(logger, "log_table"):
            continue
        for name, rows in tables.items():
            if not rows:
                continue
            columns = list(rows[0])
            data = [[row[c] for c in columns] for row in rows]
            record.guard("logged table", f"{key}/{name}", functools.partial(
                logger.log_table, key=f"{key}/{name}", columns=columns, data=data))


def _net(pl_module: pl.LightningModule) -> torch.nn.Module:
    return getattr(pl_module, "net", pl_module)
