"""Explain a trained checkpoint: ``python -m motion_relevance.explain ckpt_path=…`` (or ``mr-explain``).

Runs the test loop with the attribution and selective-relevance callbacks, then writes into the run folder
``metrics.json`` (every number), ``tables/table{1..4}_*.{md,csv}`` (the paper's Tables 1–4, plus the ground-truth
table on synthetic data) and ``explanations/*.png`` (the Figure-3 grid) and logs the same to W&B (offline by
default). The last line printed is ``Run folder: <path>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from motion_relevance.models.checkpoint import check_classes, load_classifier
from motion_relevance.models.module import VideoClassifier
from motion_relevance.report import write_tables
from motion_relevance.utils.instantiate import instantiate_group
from motion_relevance.utils.loggers import default_wandb_offline
from motion_relevance.utils.run import (
    apply_extras,
    finish_wandb,
    loggable_config,
    metric_value,
    to_python,
    write_metrics,
)
from motion_relevance.utils.validation import ensure_writable_dir

log = logging.getLogger(__name__)

CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")
_COMPARED_PREPROCESSING = ("crop_size", "mean", "std", "scale", "channel_order", "clip_len")


def _check_preprocessing(checkpoint: dict[str, Any], data: dict[str, Any]) -> None:
    """The data must be preprocessed as in training; name every key that differs."""
    diffs = [
        f"{key}: checkpoint {checkpoint[key]!r} vs data {data[key]!r}"
        for key in _COMPARED_PREPROCESSING
        if key in checkpoint and key in data and to_python(checkpoint[key]) != to_python(data[key])
    ]
    if diffs:
        raise ValueError(
            "the data's preprocessing differs from the checkpoint's (" + "; ".join(diffs) + "); "
            "override data.<key> to match the checkpoint"
        )


def explain(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Explain the test clips of ``cfg.data`` with the model in ``cfg.ckpt_path``; returns (metrics, objects)."""
    default_wandb_offline()
    output_dir = ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    loaded = load_classifier(cfg.ckpt_path)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=False)
    check_classes(loaded, datamodule.class_names, what=f"data ({cfg.data._target_})")
    _check_preprocessing(loaded.preprocessing, datamodule.transform_config())
    model = VideoClassifier(
        net=loaded.net, net_config=loaded.net_config, preprocessing=loaded.preprocessing,
        class_names=loaded.class_names,
    )
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(loggable_config(cfg))
    trainer.test(model=model, datamodule=datamodule)
    metrics: dict[str, Any] = dict(trainer.callback_metrics)
    metrics["checkpoint"] = str(loaded.path)
    if trainer.is_global_zero:
        tables = write_tables(to_python(metrics), output_dir / "tables", stage="test")
        for logger in loggers:
            if hasattr(logger, "log_table"):
                for name, rows in tables.items():
                    if rows:
                        columns = list(rows[0])
                        logger.log_table(key=f"tables/{name}", columns=columns,
                                         data=[[row[c] for c in columns] for row in rows])
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule, "loggers": loggers}


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="explain")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    output_dir = Path(cfg.paths.output_dir)
    apply_extras(cfg)
    metrics: dict[str, Any] = {}
    try:
        metrics, _ = explain(cfg)
    finally:
        finish_wandb()
        if metrics:
            write_metrics(output_dir, metrics)
        print(f"Run folder: {output_dir}", flush=True)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
