"""The project's model classes: the only names a checkpoint's model description may ask to build.

A checkpoint is data from someone else. Its model description (``{"_target_": ..., **kwargs}``) is therefore never
handed to ``hydra.utils.instantiate`` (which calls whatever ``_target_`` names); :func:`build_registered` looks the
target up in :data:`MODELS` and calls that constructor with plain keyword arguments, refusing anything else.
Configs written by the user (``motion_relevance/conf/model/*.yaml``) are code and may name any class.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["MODELS", "build_registered", "registered_target", "registered_targets"]

#: Short name -> ``"module:attribute"`` of each model constructor. A checkpoint's ``_target_`` may be the
#: attribute's import path in its module or its export from ``motion_relevance.models``.
MODELS: dict[str, str] = {
    "c3d": "motion_relevance.models.c3d:C3D",
    "video_resnet": "motion_relevance.models.resnet3d:VideoResNet",
    "r3d_18": "motion_relevance.models.resnet3d:r3d_18",
    "mc3_18": "motion_relevance.models.resnet3d:mc3_18",
    "r2plus1d_18": "motion_relevance.models.resnet3d:r2plus1d_18",
    "slowfast": "motion_relevance.models.slowfast:SlowFast",
    "slowfast_r50": "motion_relevance.models.slowfast:slowfast_r50",
    "x3d": "motion_relevance.models.x3d:X3D",
    "x3d_xs": "motion_relevance.models.x3d:x3d_xs",
    "x3d_s": "motion_relevance.models.x3d:x3d_s",
    "videomae": "motion_relevance.models.videomae:VideoMAE",
    "hf": "motion_relevance.models.hf:HFVideoClassifier",
}

_PACKAGE = "motion_relevance.models"


def registered_targets() -> dict[str, str]:
    """Every accepted ``_target_`` string -> the registry's short name."""
    targets: dict[str, str] = {}
    for short, spec in MODELS.items():
        module, attr = spec.split(":")
        targets[f"{module}.{attr}"] = short
        targets[f"{_PACKAGE}.{attr}"] = short
    return targets


def registered_target(target: Any, where: str = "the model description") -> str:
    """The registry's short name for ``target``; ``ValueError`` naming the target and the allowed models."""
    targets = registered_targets()
    if not isinstance(target, str) or target not in targets:
        raise ValueError(
            f"{where} names _target_={target!r}, which is not one of the project's model classes "
            f"({', '.join(sorted(MODELS))}); a checkpoint is data and may only name these "
            "(see 'What is safe to load' in the README)"
        )
    return targets[target]


def _check_plain(value: Any, path: str, where: str) -> None:
    """Constructor arguments from a file must be plain data: numbers, strings, lists, mappings without targets."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if str(key).startswith("_") and str(key).endswith("_"):
                raise ValueError(f"{where}: argument {path}.{key} is a Hydra key ({key}); only plain values may "
                                 "be stored in a model description")
            _check_plain(item, f"{path}.{key}", where)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]", where)
        return
    raise ValueError(f"{where}: argument {path} is a {type(value).__name__}; only plain values are allowed")


def build_registered(config: Mapping[str, Any], where: str = "the model description") -> nn.Module:
    """Build the model that ``config`` (``{"_target_": <registered class>, **plain kwargs}``) describes."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping with _target_, got {type(config).__name__}")
    kwargs = {str(k): v for k, v in config.items() if k != "_target_"}
    short = registered_target(config.get("_target_"), where)
    for key, value in kwargs.items():
        if key.startswith("_") and key.endswith("_"):
            raise ValueError(f"{where} has the Hydra key {key!r}; only constructor arguments may be stored")
        _check_plain(value, key, where)
    module_name, attr = MODELS[short].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**kwargs)
