"""Load published weights strictly, and say which layout a state dict that does not fit resembles.

:func:`load_published` takes a file (read with ``torch.load(..., weights_only=True)`` only: a weights file is data,
and ``weights_only=False`` would run whatever it pickled) or a state dict. It unwraps the containers publishers and
trainers use (pytorchvideo's ``{"model_state": ...}``, Lightning's ``{"state_dict": ...}``, ``{"model": ...}``),
strips wrapper prefixes (``module.``, ``model.``, ``net.``) and loads with every key and shape checked. The final
linear layer (the model's ``head_name``: ``fc``, ``blocks.6.proj``, ``blocks.5.proj``) is the one exception: when
only its class count differs, it is skipped and re-initialised (N(0, 0.01) weights, zero bias, as C3D's loader and
the publishers' initialisation do), so Kinetics-400 weights start a model for another class set.

Anything else that does not fit raises ``ValueError`` with the first few missing keys, unexpected keys and shape
mismatches, and the known layout whose keys the file's most resemble (every registered model is built on the
``meta`` device, which allocates nothing, and compared key by key).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from motion_relevance.models.c3d import C3D
from motion_relevance.models.pretrained import load_pretrained
from motion_relevance.models.registry import MODELS

log = logging.getLogger(__name__)

__all__ = ["describe_mismatch", "known_layouts", "load_published", "load_weights", "read_weights", "resembled_layout"]

#: Key prefixes wrappers add around a state dict (DataParallel ``module.``, Lightning ``net.`` / ``model.``).
PREFIXES = ("module.", "model.", "net.")
#: Container keys that hold the state dict inside a checkpoint (pytorchvideo, Lightning, others).
CONTAINER_KEYS = ("model_state", "state_dict", "model", "net")
#: How many keys of each kind an error message lists.
SHOW = 6

StateDict = dict[str, torch.Tensor]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, where: str) -> StateDict:
    """The state dict inside ``obj`` (itself or one of :data:`CONTAINER_KEYS`), prefixes stripped."""
    for _ in range(3):
        if _is_state_dict(obj):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not _is_state_dict(obj):
        found = f"a mapping with keys {sorted(map(str, obj))[:SHOW]}" if isinstance(obj, Mapping) else \
            type(obj).__name__
        raise ValueError(f"{where} does not hold a state dict (name -> tensor, possibly under one of "
                         f"{', '.join(CONTAINER_KEYS)}); found {found}")
    state = {str(k): v for k, v in obj.items()}
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_weights(source: str | os.PathLike[str] | Mapping[str, Any], where: str = "model.pretrained") -> StateDict:
    """A state dict from a weights file (``torch.load(..., weights_only=True)``) or a mapping, unwrapped."""
    if isinstance(source, Mapping):
        return _unwrap(source, where)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"{where} must be a path to a weights file or a state dict, got {type(source).__name__}")
    file = Path(source)
    if not file.is_file():
        raise FileNotFoundError(f"{where}={str(file)!r} does not exist; point it to a weights file (.pth/.pyth/.ckpt) "
                                "or set it to null to train from scratch")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad or unsafe files
        raise ValueError(
            f"{where}={str(file)!r} could not be read as plain tensors (torch.load with weights_only=True): {err}. "
            "Files that pickle Python objects are refused because loading them runs code; re-save only the "
            "state dict (torch.save(model.state_dict(), path)) in a trusted environment"
        ) from err
    return _unwrap(obj, f"{where}={str(file)!r}")


# ----------------------------------------------------------------------------------------- layout resemblance
Signature = dict[str, tuple[int, ...]]


@functools.lru_cache(maxsize=1)
def known_layouts() -> dict[str, Signature]:
    """Key -> shape of every registered model built with its defaults on the ``meta`` device.

    Factories come before classes, so a class whose defaults equal a factory's layout is listed under the factory's
    name; models that cannot be built (a module not present) are left out.
    """
    entries = []
    for short, spec in MODELS.items():
        module_name, attr = spec.split(":")
        try:
            ctor = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
        entries.append((inspect.isclass(ctor), short, ctor))
    layouts: dict[str, Signature] = {}
    seen: set[tuple[tuple[str, tuple[int, ...]], ...]] = set()
    for _, short, ctor in sorted(entries, key=lambda e: e[0]):
        # PyTorch's default initialisation on the meta device is instant; others may import heavy machinery.
        kwargs = {"init": "default"} if "init" in inspect.signature(ctor).parameters else {}
        model = None
        for attempt in (kwargs, {}):
            try:
                with torch.device("meta"):
                    model = ctor(**attempt)
                break
            except Exception:  # noqa: BLE001 - a model that needs other arguments is simply not a candidate
                continue
        if model is None:
            continue
        signature = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        frozen = tuple(sorted(signature.items()))
        if frozen in seen:
            continue
        seen.add(frozen)
        layouts[short] = signature
    return layouts


def resembled_layout(state: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(name, description)`` of the known layout whose keys ``state``'s most resemble, or None.

    The score is the share of the union of both key sets that both have (Jaccard), ties broken by how many of the
    shared keys also have equal shapes.
    """
    keys = set(state)
    best: tuple[float, float, str, Signature] | None = None
    for name, signature in known_layouts().items():
        shared = keys & set(signature)
        union = keys | set(signature)
        jaccard = len(shared) / max(1, len(union))
        same_shape = sum(1 for k in shared if tuple(getattr(state[k], "shape", ())) == signature[k])
        score = (jaccard, same_shape / max(1, len(shared)), name, signature)
        if best is None or score[:2] > best[:2]:
            best = score
    if best is None or best[0] == 0:
        return None
    jaccard, _, name, signature = best
    shared = keys & set(signature)
    same_shape = sum(1 for k in shared if tuple(getattr(state[k], "shape", ())) == signature[k])
    text = (f"{name} ({len(shared)} of its {len(signature)} keys present, {len(keys) - len(shared)} others; "
            f"{same_shape} of the shared keys with its shapes at default arguments)")
    return name, text


def describe_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                      skip_shape: set[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and shape mismatches (``"key: file (..) vs model (..)"``), sorted."""
    skip_shape = skip_shape or set()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in own if k in state and k not in skip_shape and state[k].shape != own[k].shape)
    return missing, unexpected, mismatched


def _listing(label: str, items: list[str]) -> str:
    more = f", … ({len(items) - SHOW} more)" if len(items) > SHOW else ""
    return f"{label} ({len(items)}): {', '.join(items[:SHOW])}{more}"


def load_published(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True,
                   head: str | None = None) -> nn.Module:
    """Copy the weights in ``source`` (a file or a state dict) into ``model`` and return it.

    ``head`` (default: ``model.head_name``) names the final linear layer; when only its shapes differ (another
    class count) it keeps a fresh N(0, 0.01) initialisation. With ``strict=False`` the keys that fit are loaded and
    the rest is logged; with ``strict=True`` any other mismatch raises ``ValueError`` listing the first missing and
    unexpected keys, the shape mismatches and the known layout the file most resembles.
    """
    where = "the state dict" if isinstance(source, Mapping) else f"model.pretrained={str(source)!r}"
    state = read_weights(source, where="model.pretrained")
    own = model.state_dict()
    head = head if head is not None else getattr(model, "head_name", None)
    head_keys = {k for k in own if head is not None and k.startswith(f"{head}.")}
    head_differs = bool(head_keys) and any(k in state and state[k].shape != own[k].shape for k in head_keys)
    missing, unexpected, mismatched = describe_mismatch(own, state, skip_shape=head_keys if head_differs else None)
    if missing or unexpected or mismatched:
        parts = [_listing(label, items) for label, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                 if items]
        resembled = resembled_layout(state)
        hint = (f" The file's keys most resemble the layout of {resembled[1]}." if resembled else
                " The file's keys resemble none of the known layouts.")
        message = (f"{where} does not fit {type(model).__name__} — " + " | ".join(parts) + "." + hint
                   + " Build the model that matches the file (same factory, width and depth), or set "
                   "model.pretrained=null.")
        if strict:
            raise ValueError(message)
        log.warning("%s Loading the %d matching tensors only.", message,
                    sum(1 for k in state if k in own and state[k].shape == own[k].shape))
    to_load = {k: v for k, v in state.items()
               if k in own and state[k].shape == own[k].shape and not (head_differs and k in head_keys)}
    model.load_state_dict(to_load, strict=False)
    if head_differs:
        layer = model.get_submodule(head)  # type: ignore[arg-type]
        with torch.no_grad():
            nn.init.normal_(layer.weight, 0.0, 0.01)
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)
        log.info("Loaded %s; %s re-initialised for %d outputs", where, head, layer.weight.shape[0])
    else:
        log.info("Loaded %s (%d tensors)", where, len(to_load))
    return model


def load_weights(net: nn.Module, path: str) -> None:
    """Published weights into ``net`` (read as data): the model's own loader (VideoMAE: both bias namings), the C3D
    port's loader, or the strict layout loader of :mod:`motion_relevance.models.published` (torchvision and
    pytorchvideo layouts); a final layer of another class count is re-initialised."""
    if callable(getattr(net, "load_pretrained", None)):
        net.load_pretrained(path)
    elif isinstance(net, C3D):
        load_pretrained(net, path)
    else:
        load_published(net, path)
