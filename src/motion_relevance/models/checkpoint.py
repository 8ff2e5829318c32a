"""Load a trained classifier back from a Lightning checkpoint written by ``mr-train``, safely.

A checkpoint is data, never code: it is read with ``torch.load(weights_only=True)`` (no pickled objects run), and
the model description it carries (``checkpoint["motion_relevance"]["model"]``) may only name the project's own
model classes (:mod:`motion_relevance.models.registry`), built with plain keyword arguments. The description also
holds the preprocessing of the model's input and the class names; :func:`check_preprocessing` is the one place
that holds a run's input pipeline against them (``mr-explain``, ``mr-live`` and resumed ``mr-train`` runs).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from motion_relevance.models.module import CHECKPOINT_KEY
from motion_relevance.models.registry import build_registered, registered_target
from motion_relevance.models.weights import check_alpha, check_description, check_finite, check_model_size

log = logging.getLogger(__name__)

__all__ = ["PREPROCESSING_KEYS", "LoadedClassifier", "check_checkpoint", "check_classes", "check_preprocessing",
           "load_classifier", "net_state", "read_checkpoint", "read_description"]

REQUIRED_KEYS = ("model", "preprocessing", "class_names")
#: Every preprocessing field that changes the model's input tensor (recorded in checkpoints by mr-train).
PREPROCESSING_KEYS = ("clip_len", "stride", "resize", "crop_size", "mean", "std", "scale", "channel_order",
                      "decoder", "pathways")


@dataclass
class LoadedClassifier:
    """A network rebuilt from a checkpoint, with what it needs to see its input as in training."""

    net: nn.Module
    preprocessing: dict[str, Any]
    class_names: list[str]
    net_config: dict[str, Any]
    path: Path
    explain_layer: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, read as data (``weights_only=True``); clear errors for missing or unsafe files."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"ckpt_path={str(file)!r} does not exist; pass ckpt_path=<run folder>/checkpoints/last.ckpt"
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"ckpt_path={str(file)!r} was refused: it holds Python objects that only run as code when loaded "
            f"({str(err).splitlines()[0][:300]}). A checkpoint is data: only tensors and plain values are read. "
            "Re-save it from a trusted session with torch.save of plain state (see 'What is safe to load')."
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds of errors on bad files
        raise ValueError(f"ckpt_path={str(file)!r} is not a readable PyTorch checkpoint: {err}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"ckpt_path={str(file)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def read_description(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """``checkpoint["motion_relevance"]`` with its required keys, or an error naming the missing ones."""
    meta = checkpoint.get(CHECKPOINT_KEY)
    missing = [k for k in REQUIRED_KEYS if not isinstance(meta, Mapping) or not meta.get(k)]
    if missing:
        raise ValueError(
            f"ckpt_path={str(path)!r} lacks the model description motion_relevance needs "
            f"(checkpoint['{CHECKPOINT_KEY}'] with keys {', '.join(REQUIRED_KEYS)}; missing: {', '.join(missing)}). "
            "Train it with mr-train, or add these keys."
        )
    assert isinstance(meta, Mapping)
    return dict(meta)


def net_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors of a Lightning checkpoint (``state_dict`` keys under ``net.``, prefix removed)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        return {}
    return {k[len("net."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("net.")}


def check_checkpoint(checkpoint: Mapping[str, Any], meta: Mapping[str, Any], path: str | os.PathLike[str]
                     ) -> dict[str, Any]:
    """Hold a checkpoint's weights against its own description before anything is built; returns its model config.

    Refused, each naming ``ckpt_path`` and the key: a model class outside the registry; a description whose
    parameters cannot fit in the memory available (e.g. ``model.width=1000``); non-finite tensors (the first one);
    tensors whose shapes the description does not give (``model.num_classes=7 gives fc.weight (7, 512)…``); a
    stored class count that disagrees with the class names; a two-pathway model whose stored preprocessing feeds
    another ``alpha``.
    """
    label = f"ckpt_path={str(path)!r}"
    net_config = dict(meta["model"])
    net_config.pop("pretrained", None)  # the checkpoint holds the trained weights
    registered_target(net_config.get("_target_"), where=f"{label} (checkpoint['{CHECKPOINT_KEY}']['model'])")
    check_model_size(net_config, "model", label=label)
    state_dict = checkpoint.get("state_dict")
    check_finite(state_dict if isinstance(state_dict, Mapping) else {}, label)
    check_description(net_config, net_state(checkpoint), "model", label)
    stored = net_config.get("num_classes")
    names = list(meta.get("class_names") or [])
    if stored is not None and names and stored != len(names):
        raise ValueError(f"{label}: model.num_classes={stored!r} but class_names lists {len(names)} classes; the "
                         "description contradicts itself: re-save the checkpoint with mr-train")
    check_alpha(net_config, meta.get("preprocessing"), "model.alpha", "preprocessing.pathways.alpha", label)
    return net_config


def load_classifier(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> LoadedClassifier:
    """Rebuild the trained network from ``path`` after :func:`check_checkpoint`; errors name the file, the key and
    the value."""
    checkpoint = read_checkpoint(path)
    meta = read_description(checkpoint, path)
    net_config = check_checkpoint(checkpoint, meta, path)
    net = build_registered(net_config, where=f"ckpt_path={str(path)!r} (checkpoint['{CHECKPOINT_KEY}']['model'])")
    state = net_state(checkpoint)
    result = net.load_state_dict(state, strict=False)
    mismatched = [k for k, v in state.items() if k in net.state_dict() and net.state_dict()[k].shape != v.shape]
    if result.missing_keys or result.unexpected_keys or mismatched:
        raise ValueError(
            f"ckpt_path={str(path)!r} does not fit its own model config {net_config.get('_target_')}: "
            f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}, "
            f"shape mismatches {mismatched[:8]}"
        )
    layer = meta.get("explain_layer")
    if layer:
        net.explain_layer = str(layer)
    net.to(map_location).eval()
    return LoadedClassifier(
        net=net, preprocessing=dict(meta["preprocessing"]), class_names=[str(c) for c in meta["class_names"]],
        net_config=net_config, path=Path(path), explain_layer=str(layer) if layer else None,
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


def _same(a: Any, b: Any) -> bool:
    """Equal preprocessing values: numbers to 1e-9 relative, sequences element-wise, tuples == lists."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str) and not isinstance(b, str):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _override(value: Any) -> str:
    """A value as Hydra's command line writes it (``null``, ``[128,171]``, ``RGB``)."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_override(v)}" for k, v in value.items()) + "}"
    return str(value)


def check_preprocessing(checkpoint: Mapping[str, Any], data: Mapping[str, Any], *,
                        source: str = "the data", prefix: str = "data.") -> None:
    """Refuse an input pipeline that differs from the checkpoint's in any field of :data:`PREPROCESSING_KEYS`.

    The error names every differing key with the values on both sides. A key the checkpoint does not record
    (written by an older version) cannot be compared: it is logged, not refused.
    """
    diffs, unknown, fixes = [], [], []
    for key in PREPROCESSING_KEYS:
        if key not in data:
            continue
        if key not in checkpoint:
            unknown.append(key)
            continue
        if not _same(_plain(checkpoint[key]), _plain(data[key])):
            diffs.append(f"{key}: checkpoint {_plain(checkpoint[key])!r} vs {source} {_plain(data[key])!r}")
            fixes.append(f"{prefix}{key}={_override(_plain(checkpoint[key]))}")
    if unknown:
        log.warning("the checkpoint records no %s; cannot check them against %s", ", ".join(unknown), source)
    if diffs:
        raise ValueError(
            f"the preprocessing of {source} differs from the checkpoint's (" + "; ".join(diffs) + "); "
            "the model only gives meaningful answers on input prepared as in training: override "
            + " ".join(fixes)
        )


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
