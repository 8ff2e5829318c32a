"""Config checks that run before any work starts, so a typo fails in a second, not after data generation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig


def ensure_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and check we can write there; the error names ``what`` (a config key) and the path."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"{what} is not writable: {directory} ({err.strerror or err}); "
            f"point {what} to a folder you can write to, e.g. {what}=/tmp/motion_relevance"
        ) from err
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


def check_positive(value: Any, key: str, *, integer: bool = False, allow_none: bool = False) -> None:
    """Raise a ValueError naming ``key`` unless ``value`` is a positive (integer) number."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{key} must be {kind}, got {value!r}")


def validate_train_config(cfg: DictConfig) -> None:
    """Checks of the training config that the objects' own constructors cannot do early enough."""
    check_optimizer(cfg.model.get("optimizer"))
    net = cfg.model.get("net", {})
    if "width" in net:
        check_positive(net.width, "model.net.width")
    if "clip_len" in net:
        check_positive(net.clip_len, "model.net.clip_len", integer=True)
    if "num_classes" in net:
        check_positive(net.num_classes, "model.net.num_classes", integer=True, allow_none=True)
    fraction = cfg.model.get("max_failure_fraction", 0.0)
    if not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"model.max_failure_fraction must be in [0, 1], got {fraction!r}")
    ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")
