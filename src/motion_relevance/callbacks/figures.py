"""Figures of an explained epoch: the Figure-3 grid (PNG), per-clip overlay videos and the faithfulness curves,
saved (each file through a :class:`~motion_relevance.pipeline.record.RunRecord`) and logged."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from motion_relevance.metrics.keys import split_selective
from motion_relevance.metrics.temporal import frame_shares
from motion_relevance.pipeline.record import RunRecord
from motion_relevance.pipeline.report_page import ASSETS_DIR, write_clip_frames
from motion_relevance.pipeline.tables import write_faithfulness_figures
from motion_relevance.viz import render_explanation_grid, save_explanation_grid, write_overlay_video

log = logging.getLogger(__name__)

#: Methods whose maps are non-negative by construction are drawn with a sequential colour map.
POSITIVE_METHODS = ("gradcam",)


def _mode(name: str) -> str:
    split = split_selective(name)
    return "positive" if (split[0] if split else name) in POSITIVE_METHODS else "signed"


def grid_columns(
    relevance: dict[str, torch.Tensor], selective: dict[str, torch.Tensor], order: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Columns in the paper's order: each method followed by its selective map(s)."""
    columns: dict[str, torch.Tensor] = {}
    for name in order:
        columns[name] = relevance[name]
        for key, value in selective.items():
            split = split_selective(key)
            if split is not None and split[0] == name:
                columns[key] = value
    return columns


def save_epoch_figures(
    trainer: pl.Trainer,
    frames: torch.Tensor,
    columns: dict[str, torch.Tensor],
    prefix: str,
    *,
    overlay_videos: int = 2,
    fps: float = 8.0,
    captions: Sequence[str] | None = None,
    record: RunRecord | None = None,
    mask: torch.Tensor | None = None,
) -> list[Path]:
    """Save the grid and overlay videos under ``<run folder>/explanations`` and log them to loggers that can.

    Each overlay video has a strip under its frames with the clip's per-frame relevance share of every column (and,
    with the ground-truth ``mask`` ``(B, T, H, W)``, its motion frames shaded). Each file goes through ``record`` (a
    failing one is reported, the others are still written)."""
    record = record or RunRecord(trainer.default_root_dir)
    out = Path(trainer.default_root_dir) / "explanations"
    record.guard("figures folder", out, lambda: out.mkdir(parents=True, exist_ok=True))
    tag = f"{prefix}_epoch{trainer.current_epoch:03d}"
    modes = {name: _mode(name) for name in columns}
    frames_np = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    cols_np = {k: v.float().numpy() for k, v in columns.items()}
    grid = out / f"{tag}_grid.png"
    grid_path = record.guard("explanation grid", grid, lambda: save_explanation_grid(
        frames_np, cols_np, grid, row_labels=captions, mode=modes))
    videos: list[Path] = []
    for i in range(min(overlay_videos, frames_np.shape[0])):
        maps = {k: v[i] for k, v in cols_np.items()}
        curves = {k: frame_shares(v[i : i + 1].float())[0].tolist() for k, v in columns.items()}
        motion = None if mask is None else mask[i].flatten(1).any(1).tolist()
        path = out / f"{tag}_clip{i}.mp4"
        written = record.guard("overlay video", path, lambda maps=maps, curves=curves, motion=motion, i=i, path=path:
                               write_overlay_video(frames_np[i], maps, path, fps=fps, mode=modes, curves=curves,
                                                   motion=motion))
        if written is not None:
            videos.append(Path(written))
    for logger in trainer.loggers:
        if hasattr(logger, "log_image") and grid_path is not None:
            record.guard("logged explanation grid", f"{prefix}/explanation_grid", lambda logger=logger: (
                logger.log_image(key=f"{prefix}/explanation_grid", step=trainer.global_step, images=[
                    render_explanation_grid(frames_np, cols_np, row_labels=captions, mode=modes)])))
        if hasattr(logger, "log_video") and videos:
            record.guard("logged overlay video", f"{prefix}/explanation_video", lambda logger=logger: (
                logger.log_video(key=f"{prefix}/explanation_video", videos=[str(p) for p in videos],
                                 step=trainer.global_step)))
    log.info("Explanation figures written to %s", out)
    return ([Path(grid_path)] if grid_path is not None else []) + videos


def describe_rows(labels: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str] | None) -> list[str]:
    """Row labels ``true -> explained`` using class names when known."""
    def name(i: int) -> str:
        return class_names[i] if class_names and 0 <= i < len(class_names) else str(i)

    return [f"{name(int(a))}\npred {name(int(b))}" for a, b in zip(labels, targets)]


def concat_kept(batches: Sequence[Any], limit: int) -> dict[str, Any]:
    """Stack the first ``limit`` clips of kept :class:`~motion_relevance.pipeline.ExplainedBatch` objects."""
    frames = torch.cat([b.frames for b in batches])[:limit]
    labels = torch.cat([b.labels for b in batches])[:limit]
    targets = torch.cat([b.targets for b in batches])[:limit]
    relevance = {k: torch.cat([b.relevance[k] for b in batches])[:limit] for k in batches[0].relevance}
    selective = {k: torch.cat([b.selective[k] for b in batches])[:limit] for k in batches[0].selective}
    mask = torch.cat([b.mask for b in batches])[:limit] if all(b.mask is not None for b in batches) else None
    return {"frames": frames, "labels": labels, "targets": targets, "relevance": relevance, "selective": selective,
            "mask": mask}


def save_kept_figures(trainer: pl.Trainer, pipeline: Any, prefix: str, *, overlay_videos: int = 2,
                      class_names: Sequence[str] | None = None, record: RunRecord | None = None) -> list[Path]:
    """The grid and overlay videos of the clips an :class:`~motion_relevance.pipeline.ExplanationPipeline` kept."""
    if not pipeline.kept or pipeline.kept[0].frames is None:
        return []
    kept = concat_kept(pipeline.kept, pipeline.keep_clips)
    columns = grid_columns(kept["relevance"], kept["selective"], pipeline.names)
    captions = describe_rows(kept["labels"], kept["targets"], class_names)
    record = record or RunRecord(trainer.default_root_dir)
    assets = Path(trainer.default_root_dir) / ASSETS_DIR
    record.guard("report clip frames", assets, lambda: write_clip_frames(
        assets, kept["frames"], {k: v.float() for k, v in columns.items()}, prefix=prefix, captions=captions,
        mode={name: _mode(name) for name in columns},
        curves={k: frame_shares(v.float()) for k, v in columns.items()}))  # the documented a_t (positive part)
    return save_epoch_figures(trainer, kept["frames"], columns, prefix, overlay_videos=overlay_videos,
                              captions=captions, record=record, mask=kept["mask"])


def save_faithfulness_figures(trainer: pl.Trainer, metrics: dict[str, Any], prefix: str,
                              record: RunRecord | None = None) -> list[Path]:
    """Deletion/insertion and randomisation curves of an explained epoch under ``<run folder>/explanations``,
    also logged to loggers that take images."""
    record = record or RunRecord(trainer.default_root_dir)
    paths = write_faithfulness_figures(metrics, Path(trainer.default_root_dir) / "explanations", stage=prefix,
                                       guard=record.guard)
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            for path in paths:
                key = f"{prefix}/{path.stem.removeprefix(prefix + '_')}"
                record.guard("logged figure", key, lambda logger=logger, key=key, path=path: logger.log_image(
                    key=key, images=[str(path)], step=trainer.global_step))
    return paths
