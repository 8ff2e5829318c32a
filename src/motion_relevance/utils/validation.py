"""Config checks that run before any work starts, so a typo fails in a second, not after data generation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from motion_relevance.checks import check_pair, check_positive, check_unique, writable_problem
from motion_relevance.explain.selective import check_padding, check_sigma
from motion_relevance.metrics.keys import NOT_EXPLAINERS
from motion_relevance.pipeline.faithfulness import FaithfulnessStage, RandomizationStage, available_memory, build_stage


def ensure_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and check we can write there; the error names ``what`` (a config key) and the path."""
    directory = Path(path)
    problem = writable_problem(directory)
    if problem is not None:
        raise PermissionError(
            f"{what} is not writable: {directory} ({problem}); "
            f"point {what} to a folder you can write to, e.g. {what}=/tmp/motion_relevance"
        )
    return directory


def check_optimizer(cfg: DictConfig | dict[str, Any] | None, key: str = "model.optimizer") -> None:
    """The optimiser's ``_target_`` must name a ``torch.optim.Optimizer`` subclass."""
    if cfg is None or "_target_" not in cfg:
        raise ValueError(f"{key}._target_ is missing; set it to e.g. torch.optim.SGD or torch.optim.Adam")
    target = cfg["_target_"]
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - hydra raises several error types here
        raise ValueError(
            f"{key}._target_={target!r} is not an importable optimizer class; use a torch.optim optimizer such as "
            f"{', '.join(sorted(_optimizer_names())[:6])} …"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"{key}._target_={target!r} is not a torch.optim.Optimizer subclass")


def _optimizer_names() -> list[str]:
    return [
        f"torch.optim.{name}"
        for name in dir(torch.optim)
        if isinstance(getattr(torch.optim, name), type)
        and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
        and name != "Optimizer"
    ]


def _node(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _target_class(node: Any, key: str, what: str) -> Any:
    """The object a config node's ``_target_`` names; errors name the key and the fix."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ValueError(f"{key}={_show(node)} is not a {what} config: expected a mapping with _target_ "
                         f"(e.g. +explainer@{key}=dtd for an explainer)")
    try:
        return get_object(node._target_)
    except Exception as err:  # noqa: BLE001 - hydra raises several error types here
        raise ValueError(f"{key}._target_={node._target_!r} cannot be imported ({err})") from err


def _show(value: Any) -> str:
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def active_explainers(cfg: DictConfig) -> list[str]:
    """Names of the configured explainers; ``explainers.<name>: null`` switches one off (as for callbacks)."""
    explainers = _node(cfg, "explainers")
    if not isinstance(explainers, DictConfig):
        return []
    return [str(name) for name, node in explainers.items() if node is not None]


def check_explainers(cfg: DictConfig) -> None:
    """Every ``explainers.<name>`` is an explainer config whose ``_target_`` is callable, or null (off)."""
    explainers = _node(cfg, "explainers")
    if explainers is None:
        return
    if not isinstance(explainers, DictConfig) or not explainers:
        raise ValueError(f"explainers={_show(explainers)}: expected a mapping name -> explainer config")
    if not active_explainers(cfg):
        raise ValueError(f"explainers: every one of {list(explainers)} is null (switched off); configure at least "
                         "one, e.g. +explainer@explainers.dtd=dtd")
    for name, node in explainers.items():
        if node is None:
            continue
        if name in NOT_EXPLAINERS or "~" in name or "@" in name or "_selective" in name:
            raise ValueError(f"explainers.{name}: the name is reserved in metric keys (reserved: "
                             f"{', '.join(NOT_EXPLAINERS)}, and names with '~', '@' or '_selective'); rename it, "
                             f"e.g. explainers.my_{name.replace('~', '_').replace('@', '_')}")
        target = _target_class(node, f"explainers.{name}", "explainer")
        if not callable(target):
            raise ValueError(f"explainers.{name}._target_={node._target_!r} is not callable")


def check_trainer(cfg: DictConfig) -> None:
    """``trainer.max_epochs`` >= 1, or -1/None with ``trainer.max_steps`` >= 1 (Lightning's 'until max_steps')."""
    trainer = _node(cfg, "trainer")
    if trainer is None or not cfg.get("train", False):
        return
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    steps_set = isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps >= 1
    if max_epochs is None or max_epochs == -1:
        if not steps_set:
            raise ValueError(f"trainer.max_epochs={max_epochs} trains forever unless trainer.max_steps is set; "
                             "give trainer.max_epochs >= 1 or trainer.max_steps >= 1")
        return
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"trainer.max_epochs={max_epochs!r} out of range: allowed an integer >= 1 "
                         "(or -1 together with trainer.max_steps >= 1)")


def check_groups(cfg: DictConfig) -> None:
    """Callbacks, loggers, flow and cache: null or ``_target_`` nodes whose class imports."""
    for group in ("callbacks", "logger"):
        node = _node(cfg, group)
        if node is None:
            continue
        if not isinstance(node, DictConfig):
            raise ValueError(f"{group}={_show(node)}: expected a mapping name -> object config")
        for name, entry in node.items():
            if entry is not None and isinstance(entry, DictConfig) and "_target_" in entry:
                _target_class(entry, f"{group}.{name}", group)
            elif entry is not None:
                raise ValueError(f"{group}.{name}={_show(entry)}: expected an object config with _target_ or null")
    for key in ("flow", "cache"):
        node = _node(cfg, key)
        if node is not None:
            _target_class(node, key, key)


def check_explanation_settings(cfg: DictConfig) -> None:
    """``selective``, ``num_clips`` and ``target`` of the explanation runs."""
    selective = _node(cfg, "selective")
    if selective is not None:
        sigma = selective.get("sigma")
        check_sigma(list(sigma) if isinstance(sigma, ListConfig) else sigma)
        check_padding(selective.get("padding", "replicate"))
    num_clips = cfg.get("num_clips")
    if num_clips is not None and (isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1):
        raise ValueError(f"num_clips={num_clips!r}: expected an integer >= 1 or null (every clip)")
    target = cfg.get("target")
    if target is not None and target not in ("predicted", "label"):
        raise ValueError(f"target={target!r}: allowed values are ['predicted', 'label']")
    check_stages(cfg)


def check_stages(cfg: DictConfig) -> None:
    """``faithfulness`` and ``randomization`` settings: the stages are built once (cheap) to check every value."""
    explainers = active_explainers(cfg) or ["explainer"]
    sigma = OmegaConf.select(cfg, "selective.sigma", default=4.0)
    sigmas = list(sigma) if isinstance(sigma, ListConfig) else [sigma]
    for key, cls, fixed in (("faithfulness", FaithfulnessStage, {"methods": explainers, "sigmas": sigmas}),
                            ("randomization", RandomizationStage, {"explainers": dict.fromkeys(explainers),
                                                                   "sigma": float(sigmas[0])})):
        node = _node(cfg, key)
        if node is None:
            continue
        settings = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        if not isinstance(settings, dict):
            raise ValueError(f"{key}={settings!r}: expected a mapping of settings "
                             f"(see motion_relevance/conf/{key}/default.yaml)")
        build_stage(cls, settings, key, **fixed)
    check_steps_fit_the_clips(cfg)
    check_batch_fits_memory(cfg)


def _configured_clip(cfg: DictConfig) -> tuple[int, int, int] | None:
    """``(T, H, W)`` of the clips the config asks for (``data.clip_len`` x ``data.crop_size``), or ``None`` where
    either is unset (the size is then known only from the data)."""
    clip_len = OmegaConf.select(cfg, "data.clip_len", default=None)
    crop = OmegaConf.select(cfg, "data.crop_size", default=None)
    if clip_len is None or crop is None:
        return None
    h, w = check_pair("data.crop_size", OmegaConf.to_container(crop) if OmegaConf.is_config(crop) else crop)
    return check_positive("data.clip_len", clip_len, integer=True), h, w


def check_steps_fit_the_clips(cfg: DictConfig) -> None:
    """``faithfulness.steps`` at most the voxels ``T*H*W`` of the configured clips (``data.clip_len`` x
    ``data.crop_size``), before any data is read: each step removes at least one voxel, and a huge count would only
    exhaust memory. (The stage checks again on the first batch, where the clip's real shape is known.)"""
    steps = OmegaConf.select(cfg, "faithfulness.steps", default=None)
    enabled = OmegaConf.select(cfg, "faithfulness.enabled", default=True)
    clip = _configured_clip(cfg)
    if not enabled or not isinstance(steps, int) or isinstance(steps, bool) or clip is None:
        return
    t, h, w = clip
    voxels = t * h * w
    if steps > voxels:
        raise ValueError(f"faithfulness.steps={steps} exceeds the {voxels} voxels (T*H*W = {t}x{h}x{w}) of "
                         f"the configured clips: each step removes at least one voxel; set faithfulness.steps <= "
                         f"{voxels}")


def check_batch_fits_memory(cfg: DictConfig, available: int | None = None) -> None:
    """``data.batch_size`` clips of ``3 x data.clip_len x data.crop_size`` float32 values must fit in the memory at
    hand (``available`` bytes, default: measured), before any data is read. It is a lower bound of what a batch
    needs (the model's activations come on top), so only settings that cannot work are refused."""
    batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    clip = _configured_clip(cfg)
    if batch is None or clip is None:
        return
    batch = check_positive("data.batch_size", batch, integer=True)
    t, h, w = clip
    need = batch * 3 * t * h * w * 4
    free = available_memory("cpu") if available is None else available
    if free is not None and need > free:
        fit = max(1, free // (need // batch))
        raise ValueError(f"data.batch_size={batch} needs at least {need / 2**30:.1f} GiB for its clips alone "
                         f"(3 x {t} x {h} x {w} float32 each) but {free / 2**30:.1f} GiB are available; set "
                         f"data.batch_size <= {fit} (less, for the model's activations)")


#: List settings whose elements each mean one thing: a repeat would run (and count) that element twice.
UNIQUE_LISTS = ("selective.sigma", "faithfulness.references", "randomization.layers", "callbacks.explanations.stages",
                "data.generator.classes")


def check_repeats(cfg: DictConfig) -> None:
    """Refuse a repeated element in each list of :data:`UNIQUE_LISTS` (the error names the key and the value)."""
    for key in UNIQUE_LISTS:
        value = _node(cfg, key)
        if isinstance(value, ListConfig):
            check_unique(key, OmegaConf.to_container(value, resolve=True))


def validate_run_config(cfg: DictConfig) -> None:
    """Checks shared by the entry points, before any data or model is loaded."""
    check_repeats(cfg)
    check_trainer(cfg)
    check_groups(cfg)
    check_explainers(cfg)
    check_explanation_settings(cfg)
    ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")


def validate_train_config(cfg: DictConfig) -> None:
    """Checks of the training config that the objects' own constructors cannot do early enough."""
    check_optimizer(cfg.model.get("optimizer"))
    net = cfg.model.get("net", {})
    if "width" in net:
        check_positive("model.net.width", net.width)
    if "clip_len" in net:
        check_positive("model.net.clip_len", net.clip_len, integer=True)
    if "num_classes" in net:
        check_positive("model.net.num_classes", net.num_classes, integer=True, allow_none=True)
    fraction = cfg.model.get("max_failure_fraction", 0.0)
    if not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"model.max_failure_fraction must be in [0, 1], got {fraction!r}")
    validate_run_config(cfg)
