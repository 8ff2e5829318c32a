"""Explain a trained checkpoint: ``python -m motion_relevance.explain_app ckpt_path=…`` (or ``mr-explain``).

Runs the test loop with the attribution and selective-relevance callbacks; at the end of the test stage the
explanation callback writes the run folder (:mod:`motion_relevance.pipeline.record`): ``metrics.json`` (every
number) first, then ``tables/table{1..7}_*.{md,csv}`` (the paper's Tables 1–4, the ground-truth table on synthetic
data, the faithfulness and randomisation tables), ``explanations/`` (the Figure-3 grid, overlay videos, curves)
and ``per_clip.csv`` (``per_clip=true``), and logs the same to W&B (offline by default). This entry point adds
the checkpoint, data counts and sweep objective to ``metrics.json``. The last line printed is
``Run folder: <path>``.

Sweeps: ``mr-explain -m selective.sigma=1,2,3,4,5 ckpt_path=…`` runs one job (one W&B run, grouped by the
multirun folder's name) per sigma; ``mr-report <multirun folder>`` compares them. ``selective.sigma=[1,2,3,4,5]``
evaluates every sigma in one job. ``hparams_search=sigma_optuna`` searches sigma with Optuna, maximising the
``objective`` this entry point returns (see :func:`objective_values`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, open_dict

from motion_relevance.checks import to_plain
from motion_relevance.classifier import VideoClassifier
from motion_relevance.conf import CONFIG_DIR
from motion_relevance.explain.selective import check_sigma
from motion_relevance.metrics import keys
from motion_relevance.models.checkpoint import check_classes, check_preprocessing, load_classifier
from motion_relevance.pipeline.record import METRICS_FILE, read_metrics_file
from motion_relevance.utils.instantiate import instantiate_group
from motion_relevance.utils.loggers import default_wandb_offline
from motion_relevance.utils.run import loggable_config, metric_value, record_data_counts, run_and_record
from motion_relevance.utils.validation import active_explainers, validate_run_config

log = logging.getLogger(__name__)

#: Objectives ``objective.name`` may take (see :func:`objective_values`).
OBJECTIVES = ("auto", "gt_f1", "flow_precision", "freeze_drop", "temporal_advantage")


def sigmas_of(value: Any) -> list[float]:
    """``selective.sigma`` as a list of floats; raises naming the bad entries (negative, NaN, not a number)."""
    if isinstance(value, ListConfig):
        value = list(value)
    return check_sigma(value)


def validate_objective(cfg: DictConfig) -> None:
    """Refuse an unknown objective name or method before any work, listing the valid ones."""
    objective = cfg.get("objective")
    if objective is None:
        return
    name = objective.get("name", "auto")
    if name not in OBJECTIVES:
        raise ValueError(f"objective.name={name!r} does not exist; valid objectives: {', '.join(OBJECTIVES)}")
    method = objective.get("method")
    explainers = active_explainers(cfg)
    if method not in explainers:
        raise ValueError(f"objective.method={method!r} is not a configured explainer; choose one of {explainers}")
    min_mass = float(objective.get("min_mass", 0.0))
    if math.isnan(min_mass) or not 0.0 <= min_mass <= 1.0:
        raise ValueError(f"objective.min_mass must be in [0, 1], got {min_mass}")
    faithfulness = cfg.get("faithfulness") or {}
    if name == "freeze_drop" and not (faithfulness.get("enabled", False) and faithfulness.get("matched_budget", True)
                                      and "freeze" in list(faithfulness.get("references") or [])):
        raise ValueError("objective.name=freeze_drop needs the matched-budget freeze test: faithfulness.enabled=true, "
                         "faithfulness.matched_budget=true and freeze in faithfulness.references")
    if name == "temporal_advantage" and not (faithfulness.get("enabled", False) and faithfulness.get("temporal", True)):
        raise ValueError("objective.name=temporal_advantage needs the temporal-window test: faithfulness.enabled=true "
                         "and faithfulness.temporal=true")


def objective_values(
    metrics: Mapping[str, Any], objective: Mapping[str, Any], sigmas: Sequence[float], stage: str = "test"
) -> dict[str, float]:
    """The sweep objective of the selective map of ``objective.method`` at each sigma.

    ``gt_f1``: ``<stage>/gt_f1/<method>_selective`` (F1/Dice against the ground-truth mask, synthetic data).
    ``freeze_drop``: ``<stage>/drop_advantage_random_freeze/<method>`` (how much more freezing the voxels the
    selective map keeps lowers the score than freezing as many random voxels: the faithfulness of the map).
    ``temporal_advantage``: ``<stage>/temporal_advantage/<method>`` (how much more freezing the frames around the
    selective map's top frame lowers the score than freezing a random window: whether it finds *when*).
    ``flow_precision``: ``<stage>/precision/<method>_selective`` if ``<stage>/selectivity_mass/<method>`` (the share
    of positive relevance the selective map keeps) is at least ``min_mass``, else ``penalty``. ``auto`` picks
    ``gt_f1`` when ground-truth metrics exist. Undefined values (NaN, missing) become ``penalty``.

    Returns ``{"objective": best, "objective_sigma": its sigma}`` plus ``objective/s<sigma>`` for a sigma list.
    Raises ``KeyError`` naming the missing metric when the objective cannot be computed at all.
    """
    name = objective.get("name", "auto")
    method = objective["method"]
    penalty = float(objective.get("penalty", -1.0))
    min_mass = float(objective.get("min_mass", 0.0))
    multi = len(sigmas) > 1
    if name == "auto":
        name = "gt_f1" if any(k.startswith(f"{stage}/gt_f1/") for k in metrics) else "flow_precision"
    out: dict[str, float] = {}
    best, best_sigma = -math.inf, math.nan
    for sigma in sigmas:
        if name == "freeze_drop":
            key = keys.metric_key(stage, "drop_advantage_random_freeze", keys.at_sigma(method, sigma, multi))
        elif name == "temporal_advantage":
            key = keys.metric_key(stage, keys.TEMPORAL_METRICS["advantage"], keys.at_sigma(method, sigma, multi))
        else:
            key = keys.metric_key(stage, "gt_f1" if name == "gt_f1" else "precision",
                                  keys.selective(method, sigma, multi))
        if key not in metrics:
            raise KeyError(f"objective {name!r} needs the metric {key!r}, which this run did not log "
                           f"(gt_f1 needs synthetic data with masks, flow_precision needs flow != none, "
                           f"freeze_drop needs faithfulness with the freeze reference, temporal_advantage needs "
                           f"faithfulness with temporal=true)")
        value = _finite(metrics[key])
        if name == "flow_precision":
            mass = _finite(metrics.get(keys.metric_key(stage, "selectivity_mass", keys.at_sigma(method, sigma, multi))))
            if mass is None or mass < min_mass:
                value = None
        value = penalty if value is None else value
        if multi:
            out[f"objective/s{sigma:g}"] = value
        if value > best:
            best, best_sigma = value, sigma
    out["objective"] = best
    out["objective_sigma"] = best_sigma
    return out


def _finite(value: Any) -> float | None:
    value = to_plain(value)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _sweep_bookkeeping(cfg: DictConfig) -> None:
    """In a multirun job: W&B group = the multirun folder's name, run name = task name + job number."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    with open_dict(cfg):
        if cfg.get("group") is None:
            cfg.group = Path(hydra_cfg.sweep.dir).name
        wandb = (cfg.get("logger") or {}).get("wandb")
        if wandb is not None and "name" in wandb:
            wandb.name = f"{cfg.task_name}-{hydra_cfg.job.num}"


def _test_batch_limit(cfg: DictConfig, datamodule: Any) -> dict[str, int]:
    """Stop the test loop once ``num_clips`` clips per process are explained (the rest would only be decoded
    and classified, then thrown away); ``test/acc`` then covers the explained clips. An explicit
    ``trainer.limit_test_batches`` wins."""
    num_clips = cfg.get("num_clips")
    batch_size = getattr(datamodule, "batch_size", None)
    if num_clips is None or not batch_size or cfg.trainer.get("limit_test_batches") is not None:
        return {}
    return {"limit_test_batches": max(1, math.ceil(int(num_clips) / int(batch_size)))}


def adopt_pathways(cfg: DictConfig, preprocessing: dict[str, Any]) -> None:
    """A multi-pathway checkpoint's input structure (``pathways``, e.g. SlowFast's ``{alpha: 4}``) is the model's,
    not a data choice: when ``data.pathways`` is unset it is taken from the checkpoint (logged); a value that is set
    and differs is still refused by the preprocessing check."""
    wanted = preprocessing.get("pathways")
    if wanted is None or "pathways" not in cfg.data or cfg.data.pathways is not None:
        return
    with open_dict(cfg):
        cfg.data.pathways = wanted
    log.info("data.pathways=%s taken from the checkpoint (its model takes several pathways)", wanted)


def explain(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Explain the test clips of ``cfg.data`` with the model in ``cfg.ckpt_path``; returns (metrics, objects)."""
    default_wandb_offline()
    validate_run_config(cfg)
    sigmas = sigmas_of(cfg.selective.sigma)
    validate_objective(cfg)
    _sweep_bookkeeping(cfg)
    loaded = load_classifier(cfg.ckpt_path)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    adopt_pathways(cfg, loaded.preprocessing)
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=False)
    check_classes(loaded, datamodule.class_names, what=f"data ({cfg.data._target_})")
    check_preprocessing(loaded.preprocessing, datamodule.transform_config(), source=f"data ({cfg.data._target_})")
    model = VideoClassifier(
        net=loaded.net, net_config=loaded.net_config, preprocessing=loaded.preprocessing,
        class_names=loaded.class_names, explain_layer=loaded.explain_layer,
    )
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **_test_batch_limit(cfg, datamodule)
    )
    for logger in loggers:
        logger.log_hyperparams(loggable_config(cfg))
    trainer.test(model=model, datamodule=datamodule)
    # the run folder's record (written by the explanation callback, also under DDP: rank zero's process) holds the
    # non-scalar results (faithfulness curves, randomisation stages) beside the logged numbers
    metrics: dict[str, Any] = {**read_metrics_file(Path(trainer.default_root_dir) / METRICS_FILE),
                               **trainer.callback_metrics}
    record_data_counts(datamodule, loggers, metrics)
    metrics["checkpoint"] = str(loaded.path)
    if cfg.get("objective") is not None:
        try:
            objective = objective_values(to_plain(metrics), cfg.objective, sigmas)
            metrics.update(objective)
            for logger in loggers:  # W&B sweeps read `objective` from the run
                if hasattr(logger, "log_table"):
                    logger.log_metrics({k: v for k, v in objective.items() if math.isfinite(v)})
        except KeyError as err:
            if cfg.get("optimized_metric") == "objective":
                raise
            log.info("No sweep objective for this run: %s", err)
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule, "loggers": loggers}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="explain")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    metrics = run_and_record(cfg, explain)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
