"""Train, checkpoint and test a clip classifier: ``python -m motion_relevance.train`` (or ``mr-train``).

Everything comes from ``motion_relevance/conf/train.yaml``; override on the command line, e.g.
``mr-train trainer.max_epochs=3 data.generator.videos_per_class=20 logger=csv``. Resume with ``ckpt_path=…/last.ckpt``.
The last line printed is ``Run folder: <path>``; the run folder holds ``checkpoints/`` (best and ``last.ckpt``),
``csv/metrics.csv`` (per-epoch train/val/test metrics), ``metrics.json`` (final numbers) and ``wandb/`` (the offline
W&B run); with the explanation callbacks (``callbacks=explain``) also what ``mr-explain`` writes: ``tables/`` (a
validation stage's in ``tables/val/``), ``explanations/`` and ``per_clip.csv`` (``per_clip=true``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from motion_relevance.conf import CONFIG_DIR
from motion_relevance.models.checkpoint import check_checkpoint, check_preprocessing, read_checkpoint, read_description
from motion_relevance.models.weights import check_run_model, check_same_model
from motion_relevance.pipeline.record import METRICS_FILE, read_metrics_file
from motion_relevance.utils.instantiate import instantiate_group
from motion_relevance.utils.loggers import default_wandb_offline
from motion_relevance.utils.run import loggable_config, metric_value, record_data_counts, run_and_record
from motion_relevance.utils.validation import validate_train_config

log = logging.getLogger(__name__)



#: Input settings a model config may declare in ``model.preprocessing`` (what its published weights expect, and
#: training augmentations the model needs).
MODEL_PREPROCESSING = ("mean", "std", "scale", "channel_order", "pathways", "channel_shuffle")


def apply_model_preprocessing(cfg: DictConfig) -> dict[str, Any]:
    """Copy ``model.preprocessing`` (mean, std, scale, channel order, pathways) into ``cfg.data``, except keys the
    command line sets (``data.mean=...``); returns what was applied (logged)."""
    declared = (cfg.get("model") or {}).get("preprocessing") or {}
    if "_target_" in declared:  # computed from files (model=hf: the folder's preprocessor_config.json)
        declared = hydra.utils.instantiate(declared, _convert_="all")
    given: set[str] = set()
    if HydraConfig.initialized():
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            if key.startswith("data."):
                given.add(key[len("data."):])
    applied = {k: declared[k] for k in MODEL_PREPROCESSING if k in declared and k not in given}
    with open_dict(cfg):
        for key, value in applied.items():
            cfg.data[key] = value
    if applied:
        log.info("Data preprocessing from the model config: %s", OmegaConf.to_container(OmegaConf.create(applied)))
    return applied


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """Instantiate ``cfg.data``."""
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    return hydra.utils.instantiate(cfg.data, _recursive_=False)


def build_model(cfg: DictConfig, datamodule: Any) -> pl.LightningModule:
    """Instantiate ``cfg.model``, taking the class count and preprocessing from the data.

    A model config's ``preprocessing`` block (the normalisation its published weights expect) went into the data
    config (:func:`apply_model_preprocessing`); the LightningModule records the data's actual preprocessing.
    """
    model_cfg = cfg.model.copy()
    with open_dict(model_cfg):
        model_cfg.pop("preprocessing", None)
        model_cfg.pop("path", None)  # model=hf: the folder, read by the net's own config
    num_classes = int(datamodule.num_classes)
    with open_dict(model_cfg):
        if model_cfg.net.get("num_classes") is None:
            model_cfg.net.num_classes = num_classes
    if int(model_cfg.net.num_classes) != num_classes:
        raise ValueError(
            f"model.net.num_classes={model_cfg.net.num_classes} but the data set has {num_classes} classes; "
            "set model.net.num_classes=null to take the class count from the data"
        )
    net_config = OmegaConf.to_container(model_cfg.net, resolve=True)
    check_run_model(net_config, datamodule.transform_config())  # size and pathways, before anything is allocated
    log.info("Instantiating model <%s> with net <%s>", model_cfg._target_, model_cfg.net._target_)
    # Instantiate as a partial so that the plain dicts below are not themselves instantiated by Hydra.
    build = hydra.utils.instantiate(model_cfg, _partial_=True)
    return build(
        net_config=net_config,
        preprocessing=datamodule.transform_config(),
        class_names=list(datamodule.class_names),
    )


def build_pretraining(cfg: DictConfig) -> Any:
    """The configured pre-training (``pretrain=mae``: :class:`~motion_relevance.pretraining.MaskedPretraining`), its
    settings checked, or ``None``; refused with a resumed or test-only run (no fresh weights to pre-train)."""
    node = cfg.get("pretrain")
    if not node:
        return None
    if cfg.get("ckpt_path"):
        raise ValueError(f"pretrain={node.get('_target_')} with ckpt_path={cfg.ckpt_path!r}: the checkpoint's weights "
                         "would replace the pre-trained ones; drop pretrain= when resuming")
    if not cfg.get("train"):
        raise ValueError("pretrain= with train=false: pre-trained weights would only be tested, never fine-tuned; "
                         "set train=true or drop pretrain=")
    log.info("Instantiating pre-training <%s>", node.get("_target_"))
    return hydra.utils.instantiate(node, _convert_="all")


def run_pretraining(pretrainer: Any, model: pl.LightningModule, datamodule: Any, trainer: pl.Trainer,
                    loggers: list[Any]) -> dict[str, Any]:
    """Pre-train ``model.net`` in place on the training clips, on the trainer's device; its numbers
    (``pretrain/*``) go to the loggers and the run record. Under DDP every process pre-trains on the whole training
    set, and DDP starts training from rank 0's weights."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    log.info("Pre-training <%s> on the training clips (labels unused)", type(pretrainer).__name__)
    numbers = pretrainer.fit(model.net, datamodule.train_dataloader(), device=trainer.strategy.root_device)
    for logger in loggers:
        logger.log_metrics(numbers, step=0)
    log.info("Pre-training done: %s", {k: round(v, 4) for k, v in numbers.items()})
    return dict(numbers)


def check_resume(ckpt_path: str, datamodule: Any, net: Any = None) -> dict[str, Any]:
    """Hold a checkpoint to resume from (or test) against this run before any work: read as data, its weights
    those its description gives (``models.checkpoint.check_checkpoint``), its model the one ``net`` (the run's
    ``model.net``) builds, its classes and preprocessing those of the data. Returns its description."""
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    meta = read_description(checkpoint, path)
    stored = check_checkpoint(checkpoint, meta, path)
    if net is not None:
        run = dict(OmegaConf.to_container(net, resolve=True) if isinstance(net, DictConfig) else net)
        run["num_classes"] = run.get("num_classes") or int(datamodule.num_classes)
        check_same_model(stored, run, f"ckpt_path={str(path)!r}")
    names = list(datamodule.class_names)
    if list(meta["class_names"]) != names:
        raise ValueError(f"ckpt_path={str(path)!r} was trained on other classes ({len(meta['class_names'])}: "
                         f"{list(meta['class_names'])[:5]} ...) than the data ({len(names)}: {names[:5]} ...)")
    check_preprocessing(meta["preprocessing"], datamodule.transform_config(), source=f"data ({cfg_target(datamodule)})")
    return meta


def cfg_target(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and/or test as configured; returns (metrics, objects). Raises before any work on a bad config."""
    default_wandb_offline()
    apply_model_preprocessing(cfg)
    validate_train_config(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    pretrainer = build_pretraining(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    resume = cfg.get("ckpt_path")
    if resume:
        check_resume(resume, datamodule, cfg.model.get("net"))
        log.info("Continuing from %s (its run folder: %s); this run's record goes to %s", resume,
                 Path(resume).resolve().parent.parent, cfg.paths.output_dir)
    model = build_model(cfg, datamodule)
    if pretrainer is not None:
        pretrainer.check_net(model.net)
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for logger in loggers:
        logger.log_hyperparams(loggable_config(cfg))

    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "loggers": loggers}
    metrics: dict[str, Any] = {}
    if resume:
        metrics["resumed_from"] = str(Path(resume).resolve())
    checkpoint_cb = trainer.checkpoint_callback
    # only inside this run's folder: a checkpoint folder configured elsewhere is the user's to manage
    ckpt_dir = Path(checkpoint_cb.dirpath) if checkpoint_cb is not None and checkpoint_cb.dirpath else None
    if cfg.get("train") and not resume and ckpt_dir and ckpt_dir.resolve().is_relative_to(
            Path(cfg.paths.output_dir).resolve()):
        set_aside_checkpoints(ckpt_dir)
    if pretrainer is not None:
        metrics.update(run_pretraining(pretrainer, model, datamodule, trainer, loggers))
    if cfg.get("train"):
        log.info("Starting training")
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        metrics.update(trainer.callback_metrics)
        # epochs run (early stopping may end before trainer.max_epochs), wall and main-process CPU seconds of fit
        metrics.update(epochs=trainer.current_epoch, train_seconds=time.perf_counter() - started,
                       train_cpu_seconds=time.process_time() - cpu_started)
        if checkpoint_cb is not None:  # read now: testing a checkpoint restores the callback's older state
            metrics["best_checkpoint"] = checkpoint_cb.best_model_path or None
            metrics["last_checkpoint"] = getattr(checkpoint_cb, "last_model_path", None) or None
    if cfg.get("test"):
        ckpt = _test_checkpoint(trainer, cfg)
        log.info("Testing with %s", ckpt or "the current weights")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update(trainer.callback_metrics)
    record_data_counts(datamodule, loggers, metrics)
    # what the explanation callback recorded in the run folder (faithfulness curves, randomisation stages) too
    metrics = {**read_metrics_file(Path(trainer.default_root_dir) / METRICS_FILE), **metrics}
    return metrics, objects


def set_aside_checkpoints(folder: Path) -> Path | None:
    """Move the ``*.ckpt`` files an earlier run left in ``folder`` to ``replaced_checkpoints/<UTC time>/`` beside it
    (in the run folder); returns where.

    A run that trains into a job folder of its own (a study job run again because its configuration or inputs
    changed) would otherwise find the old ``best.ckpt`` there, and Lightning would write its own as
    ``best-v1.ckpt`` beside it: what reads ``best.ckpt`` would get the earlier run's weights. Nothing is deleted.
    """
    old = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not old:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = folder.parent / "replaced_checkpoints" / stamp
    n = 1
    while aside.exists():  # two runs within one second: never rename onto a kept file
        n += 1
        aside = folder.parent / "replaced_checkpoints" / f"{stamp}_{n}"
    aside.mkdir(parents=True)
    for file in old:
        file.rename(aside / file.name)
    log.warning("%s held %d checkpoints of an earlier run (%s); moved to %s so that this run's are the ones there",
                folder, len(old), ", ".join(f.name for f in old), aside)
    return aside


def _test_checkpoint(trainer: pl.Trainer, cfg: DictConfig) -> str | None:
    """Best checkpoint of this run if training ran, else the given ckpt_path (test-only runs)."""
    if cfg.get("train"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            return best
        log.warning("No best checkpoint was saved (fast_dev_run?); testing the current weights")
        return None
    return cfg.get("ckpt_path")


def _print_summary(metrics: dict[str, Any]) -> None:
    """The headline numbers, plainly, just before the run folder."""
    for key, label in (("val/acc_best", "Best validation accuracy"), ("test/acc", "Test accuracy")):
        value = metric_value(metrics, key) if key in metrics else None
        if value is not None:
            print(f"{label}: {100 * float(value):.1f} %", flush=True)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    metrics = run_and_record(cfg, train, _print_summary)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
