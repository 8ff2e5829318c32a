"""Load a trained classifier back from a Lightning checkpoint written by ``mr-train``.

The checkpoint carries ``checkpoint["motion_relevance"]``: the net's config, the preprocessing of its input and
the class names (see :class:`~motion_relevance.models.module.VideoClassifier`). From these the model is rebuilt
without the training config, and data whose classes differ are refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from torch import nn

from motion_relevance.models.module import CHECKPOINT_KEY

REQUIRED_KEYS = ("model", "preprocessing", "class_names")


@dataclass
class LoadedClassifier:
    """A network rebuilt from a checkpoint, with what it needs to see its input as in training."""

    net: nn.Module
    preprocessing: dict[str, Any]
    class_names: list[str]
    net_config: dict[str, Any]
    path: Path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict; clear errors for a missing or unreadable file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"ckpt_path={str(file)!r} does not exist; pass ckpt_path=<run folder>/checkpoints/last.ckpt"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds of errors on bad files
        raise ValueError(f"ckpt_path={str(file)!r} is not a readable PyTorch checkpoint: {err}") from err


def load_classifier(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> LoadedClassifier:
    """Rebuild the trained network from ``path``; errors name the missing keys or the mismatching layers."""
    checkpoint = read_checkpoint(path)
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    missing = [k for k in REQUIRED_KEYS if not meta or not meta.get(k)]
    if missing:
        raise ValueError(
            f"ckpt_path={str(path)!r} lacks the model description motion_relevance needs "
            f"(checkpoint['{CHECKPOINT_KEY}'] with keys {', '.join(REQUIRED_KEYS)}; missing: {', '.join(missing)}). "
            "Train it with mr-train, or add these keys."
        )
    net_config = dict(meta["model"])
    net_config.pop("pretrained", None)  # the checkpoint holds the trained weights
    net = hydra.utils.instantiate(net_config)
    state = {k[len("net."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
    result = net.load_state_dict(state, strict=False)
    mismatched = [k for k, v in state.items() if k in net.state_dict() and net.state_dict()[k].shape != v.shape]
    if result.missing_keys or result.unexpected_keys or mismatched:
        raise ValueError(
            f"ckpt_path={str(path)!r} does not fit its own model config {net_config.get('_target_')}: "
            f"missing {result.missing_keys}, unexpected {result.unexpected_keys}, shape mismatches {mismatched}"
        )
    net.to(map_location).eval()
    return LoadedClassifier(
        net=net, preprocessing=dict(meta["preprocessing"]), class_names=list(meta["class_names"]),
        net_config=net_config, path=Path(path),
    )


def check_classes(loaded: LoadedClassifier, class_names: Sequence[str], what: str = "data") -> None:
    """Refuse data whose classes differ from the checkpoint's (count and names, in order)."""
    ours = list(class_names)
    if len(ours) != loaded.num_classes:
        raise ValueError(
            f"the checkpoint {loaded.path} has {loaded.num_classes} classes but {what} has {len(ours)}; "
            f"use the data set the model was trained on"
        )
    if ours != loaded.class_names:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(loaded.class_names, ours)) if a != b][:5]
        raise ValueError(
            f"the classes of {what} differ from the checkpoint {loaded.path}: first differences "
            + ", ".join(f"#{i}: checkpoint {a!r} vs data {b!r}" for i, a, b in diff)
        )
