"""Build lists of callbacks and loggers from config groups (each entry a node with ``_target_``)."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every ``_target_`` node of a config group (``callbacks``, ``logger``); empty if ``cfg`` is None."""
    objects: list[Any] = []
    if not cfg:
        return objects
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"{what} config must be a mapping of name -> object config, got {type(cfg).__name__}")
    for name, node in cfg.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("Instantiating %s <%s> (%s)", what, node._target_, name)
            objects.append(hydra.utils.instantiate(node))
    return objects
