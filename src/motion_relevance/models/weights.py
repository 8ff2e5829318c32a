"""The one place where weights enter a model: read as data, checked, loaded strictly.

Every weight reader of the project goes through here: ``model.pretrained`` files (C3D port, torchvision,
pytorchvideo, transformers' VideoMAE), state dicts handed over in code, and the Lightning checkpoints ``mr-train``
writes (``ckpt_path``, read by :mod:`motion_relevance.models.checkpoint`).

Reading (:func:`read_weights`):

- ``.safetensors`` is parsed here (8-byte little-endian header length, JSON header, raw data); every header field
  (dtype, shape, data offsets) is checked before a byte is interpreted, and an error names the file and the field.
- anything else goes through ``torch.load(..., weights_only=True)``: a weights file is data, and an unrestricted
  unpickle would run whatever it pickled. Files that pickle Python objects are refused.
- containers are unwrapped (pytorchvideo's ``model_state``, Lightning's ``state_dict``, ``model``, ``net``) and the
  wrapper prefixes every key shares are stripped (``module.``, ``model.``, ``net.``).
- every floating tensor must be finite: NaN or infinite weights are refused naming the file and the first tensor.

Loading (:func:`load_weights`): every key and shape must match, except the final linear layer (the model's
``head_name``) when only its class count differs; it is then re-initialised. A mismatch lists the first missing
keys, unexpected keys and shape mismatches and the known layout (:func:`known_layouts`) the file most resembles.

Model descriptions (``{"_target_": <registered model>, **kwargs}``, stored in checkpoints) are checked against
their tensors (:func:`check_description`), against the memory of this machine before anything is allocated
(:func:`check_model_size`, built on the ``meta`` device), and against the model of a run (:func:`check_same_model`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import math
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.models.registry import MODELS, registered_targets

log = logging.getLogger(__name__)

__all__ = [
    "CONTAINER_KEYS",
    "PREFIXES",
    "check_alpha",
    "check_description",
    "check_finite",
    "check_model_size",
    "check_same_model",
    "config_names_for",
    "describe_mismatch",
    "described_bytes",
    "known_layouts",
    "load_weights",
    "read_safetensors",
    "read_weights",
    "resembled_layout",
    "unwrap",
]

#: Key prefixes wrappers add around a state dict (DataParallel ``module.``, Lightning ``net.`` / ``model.``).
PREFIXES = ("module.", "model.", "net.")
#: Container keys that hold the state dict inside a checkpoint (pytorchvideo, Lightning, others).
CONTAINER_KEYS = ("model_state", "state_dict", "model", "net")
#: How many keys of each kind an error message lists.
SHOW = 6

StateDict = dict[str, Tensor]
Signature = dict[str, tuple[int, ...]]

_CONF_MODEL = Path(__file__).resolve().parents[3] / "conf" / "model"


def _name(source: Any) -> str:
    return repr(str(source))


# ------------------------------------------------------------------------------------------------- safetensors
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


def _nonneg_ints(value: Any, count: int | None = None) -> list[int] | None:
    """``value`` as a list of non-negative ints (``count`` of them if given), else None; booleans are no ints."""
    if not isinstance(value, list) or (count is not None and len(value) != count):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return [int(v) for v in value]


def read_safetensors(path: str | os.PathLike[str], where: str = "model.pretrained") -> StateDict:
    """Tensors of a ``.safetensors`` file, parsed here (no dependency, no code run).

    Each header entry's ``dtype`` must be known, its ``shape`` a list of non-negative integers and its
    ``data_offsets`` two integers inside the data that span exactly ``prod(shape) * itemsize`` bytes; errors name
    the file and the field (``<tensor>.shape``). Dtypes: float64/32/16, bfloat16, int64/32/16/8, uint8, bool.
    """
    file = Path(path)
    label = f"{where}={_name(file)}"
    fix = "the file is damaged or no safetensors file; re-download or re-export it"
    raw = bytearray(file.read_bytes())
    if len(raw) < 8:
        raise ValueError(f"{label} is not a safetensors file (header length: {len(raw)} bytes, need 8); {fix}")
    header_len = int.from_bytes(raw[:8], "little")
    if header_len <= 0 or header_len > min(_MAX_HEADER, len(raw) - 8):
        raise ValueError(f"{label} is not a safetensors file (header length {header_len}, file of {len(raw)} "
                         f"bytes); {fix}")
    try:
        header = json.loads(raw[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{label} has an unreadable safetensors header (header: {err}); {fix}") from err
    if not isinstance(header, dict):
        raise ValueError(f"{label}: the safetensors header is a {type(header).__name__}, not a JSON object; {fix}")
    data = memoryview(raw)[8 + header_len:]
    tensors: StateDict = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"{label}: safetensors field {name}={info!r} is not an object; {fix}")
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
        if dtype is None:
            raise ValueError(f"{label}: safetensors field {name}.dtype={info.get('dtype')!r} is not one of "
                             f"{', '.join(_SAFETENSORS_DTYPES)}; {fix}")
        shape = _nonneg_ints(info.get("shape"))
        if shape is None:
            raise ValueError(f"{label}: safetensors field {name}.shape={info.get('shape')!r} is not a list of "
                             f"non-negative integers; {fix}")
        offsets = _nonneg_ints(info.get("data_offsets"), 2)
        if offsets is None:
            raise ValueError(f"{label}: safetensors field {name}.data_offsets={info.get('data_offsets')!r} is not "
                             f"two non-negative integers; {fix}")
        begin, end = offsets
        count = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not begin <= end <= len(data) or end - begin != count * itemsize:
            raise ValueError(f"{label}: safetensors field {name}.data_offsets={offsets} do not fit its shape "
                             f"{shape} ({count * itemsize} bytes of {info['dtype']}; {len(data)} data bytes); {fix}")
        flat = torch.frombuffer(data[begin:end], dtype=dtype) if count else torch.empty(0, dtype=dtype)
        tensors[str(name)] = flat.reshape(shape).clone()
    return tensors


# ---------------------------------------------------------------------------------------------------- reading
def _unpickler_reason(err: BaseException) -> str:
    """The informative line of torch's weights-only unpickler error (``Unsupported global: GLOBAL ...``)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for line in lines:
        if "Unsupported" in line or "WeightsUnpickler error:" in line and len(line) > 25:
            return line.replace("WeightsUnpickler error:", "").strip()[:200]
    return (lines[0] if lines else type(err).__name__)[:200]


def _torch_load(file: Path, label: str) -> Any:
    """``torch.load(weights_only=True)``; pickled objects and unreadable files refused naming the file."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if "GLOBAL" in str(err):
            raise ValueError(
                f"{label} was refused: it holds Python objects that only run as code when loaded ({reason}); "
                "torch.load with weights_only=True reads only tensors and plain values. Re-save only the state "
                "dict (torch.save(model.state_dict(), path)) in a trusted session"
            ) from None
        raise ValueError(f"{label} is not a readable PyTorch state dict (torch.load with weights_only=True: "
                         f"{reason}); re-download the file or point to another") from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds of errors on bad files
        raise ValueError(f"{label} is not a readable PyTorch state dict (torch.load with weights_only=True: "
                         f"{_unpickler_reason(err)}); re-download the file or point to another") from err


def read_file(path: str | os.PathLike[str], where: str = "model.pretrained") -> Any:
    """The object stored in ``path`` (safetensors by suffix, else ``torch.load(weights_only=True)``), as data."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{where}={_name(file)} does not exist; point it to a weights file "
                                "(.pth/.pyth/.ckpt/.bin/.safetensors) or set it to null")
    label = f"{where}={_name(file)}"
    return read_safetensors(file, where) if file.suffix == ".safetensors" else _torch_load(file, label)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def strip_prefixes(state: Mapping[str, Tensor]) -> StateDict:
    """``state`` without the :data:`PREFIXES` that every key shares (repeatedly: ``module.net.`` too)."""
    out = {str(k): v for k, v in state.items()}
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def unwrap(obj: Any, label: str) -> StateDict:
    """The state dict inside ``obj`` (itself or under one of :data:`CONTAINER_KEYS`), prefixes stripped."""
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
        found = (f"a mapping with keys {sorted(map(str, obj))[:SHOW]}" if isinstance(obj, Mapping)
                 else type(obj).__name__)
        raise ValueError(f"{label} does not hold a state dict (name -> tensor, possibly under one of "
                         f"{', '.join(CONTAINER_KEYS)}); found {found}. Save one with torch.save(model.state_dict())")
    return strip_prefixes(obj)


def check_finite(state: Mapping[str, Any], label: str) -> None:
    """Refuse NaN or infinite values in any floating tensor of ``state``, naming ``label`` and the first tensor."""
    for key, value in state.items():
        if not isinstance(value, Tensor) or not (value.is_floating_point() or value.is_complex()):
            continue
        if value.device.type == "meta" or bool(torch.isfinite(value).all()):
            continue
        nan = int(torch.isnan(value).sum())
        inf = int(torch.isinf(value).sum())
        raise ValueError(
            f"{label}: tensor {key!r} {tuple(value.shape)} holds {nan} NaN and {inf} infinite values of "
            f"{value.numel()}; weights must be finite (the file is damaged or the run that wrote it diverged): "
            "use another file"
        )


def read_weights(source: str | os.PathLike[str] | Mapping[str, Any], where: str = "model.pretrained") -> StateDict:
    """A finite state dict from a weights file or a mapping: unwrapped, prefixes stripped, every tensor checked."""
    if isinstance(source, Mapping):
        label = f"{where} (a state dict)"
        state = unwrap(source, label)
    elif isinstance(source, (str, os.PathLike)):
        label = f"{where}={_name(source)}"
        state = unwrap(read_file(source, where), label)
    else:
        raise ValueError(f"{where} must be a path to a weights file or a state dict, got {type(source).__name__}")
    check_finite(state, label)
    return state


# ----------------------------------------------------------------------------------------- layout resemblance
def _constructor(short: str) -> Callable[..., nn.Module]:
    module_name, attr = MODELS[short].split(":")
    return getattr(importlib.import_module(module_name), attr)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the models' info logs while building throw-away models on the ``meta`` device."""
    logger = logging.getLogger("motion_relevance.models")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def known_layouts() -> dict[str, Signature]:
    """Key -> shape of every registered model built with its defaults on the ``meta`` device.

    Factories come before classes, so a class whose defaults equal a factory's layout is listed under the factory's
    name; models that cannot be built (a module not present) are left out.
    """
    entries = []
    for short in MODELS:
        try:
            ctor = _constructor(short)
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
                with torch.device("meta"), _quiet():
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
    _, _, name, signature = best
    shared = keys & set(signature)
    same_shape = sum(1 for k in shared if tuple(getattr(state[k], "shape", ())) == signature[k])
    text = (f"{name} ({len(shared)} of its {len(signature)} keys present, {len(keys) - len(shared)} others; "
            f"{same_shape} of the shared keys with its shapes at default arguments)")
    return name, text


def describe_mismatch(own: Mapping[str, Any], state: Mapping[str, Any],
                      skip_shape: set[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Missing keys (model order), unexpected keys (file order) and shape mismatches
    (``"key: file (..) vs model (..)"``)."""
    skip_shape = skip_shape or set()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and k not in skip_shape
                  and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, mismatched


def _listing(label: str, items: list[str]) -> str:
    """``label (n): a, b, c, d, … (k more), y, z``: the first and the last items (a layout's two ends)."""
    if len(items) <= SHOW:
        return f"{label} ({len(items)}): {', '.join(items)}"
    head, tail = items[:SHOW - 2], items[-2:]
    return f"{label} ({len(items)}): {', '.join(head)}, … ({len(items) - SHOW} more), {', '.join(tail)}"


# ---------------------------------------------------------------------------------------------------- loading
def load_weights(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any], *,
                 where: str = "model.pretrained", strict: bool = True, head: str | None = None,
                 head_std: float | None = None) -> nn.Module:
    """Copy the (finite) weights in ``source`` (a file or a state dict) into ``model`` and return it.

    The model may adapt the state dict first (``model.adapt_state_dict(state)``: VideoMAE's attention-bias names)
    and describe its expected layout for errors (``model.layout_hint``). ``head`` (default ``model.head_name``)
    names the final linear layer; when only its shapes differ (another class count) it gets a fresh
    N(0, ``head_std``) weight (default ``model.head_std`` or 0.01) and zero bias. With ``strict=False`` the keys
    that fit are loaded and the rest is logged; with ``strict=True`` any other mismatch raises ``ValueError``
    listing the first missing and unexpected keys, the shape mismatches and the known layout the file resembles.
    """
    label = f"{where} (a state dict)" if isinstance(source, Mapping) else f"{where}={_name(source)}"
    state = read_weights(source, where)
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)
    own = model.state_dict()
    head = head if head is not None else getattr(model, "head_name", None)
    head_keys = {k for k in own if head is not None and k.startswith(f"{head}.")}
    head_differs = bool(head_keys) and any(k in state and state[k].shape != own[k].shape for k in head_keys)
    missing, unexpected, mismatched = describe_mismatch(own, state, skip_shape=head_keys if head_differs else None)
    if missing or unexpected or mismatched:
        parts = [_listing(name, items) for name, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                 if items]
        resembled = resembled_layout(state)
        hint = (f" The file's keys most resemble the layout of {resembled[1]}." if resembled else
                " The file's keys resemble none of the known layouts.")
        expected = getattr(model, "layout_hint", None)
        message = (f"{label} does not fit {type(model).__name__} — " + " | ".join(parts) + "."
                   + (f" Expected {expected}." if expected else "") + hint
                   + f" Build the model that matches the file (same factory, width and depth), or set {where}=null.")
        if strict:
            raise ValueError(message)
        log.warning("%s Loading the %d matching tensors only.", message,
                    sum(1 for k in state if k in own and state[k].shape == own[k].shape))
    to_load = {k: v for k, v in state.items()
               if k in own and state[k].shape == own[k].shape and not (head_differs and k in head_keys)}
    model.load_state_dict(to_load, strict=False)
    if head_differs:
        layer = model.get_submodule(head)  # type: ignore[arg-type]
        std = float(head_std if head_std is not None else getattr(model, "head_std", 0.01))
        with torch.no_grad():
            nn.init.normal_(layer.weight, 0.0, std)
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)
        log.info("Loaded %s; %s re-initialised for %d outputs", label, head, layer.weight.shape[0])
    else:
        log.info("Loaded %s (%d tensors)", label, len(to_load))
    return model


# ---------------------------------------------------------------------------------------- model descriptions
def _kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in config.items() if k != "_target_" and k != "pretrained"}


def _meta_build(short: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """The registered model ``short`` built on the ``meta`` device (allocates nothing)."""
    ctor = _constructor(short)
    with torch.device("meta"), _quiet():
        return ctor(**dict(kwargs))


def _short(config: Mapping[str, Any]) -> str | None:
    """The registry's short name of ``config['_target_']``, or None for a target the registry does not know."""
    return registered_targets().get(config.get("_target_"))  # type: ignore[arg-type]


def _numeric_keys(kwargs: Mapping[str, Any]) -> list[str]:
    return [k for k, v in kwargs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _param_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def described_bytes(config: Mapping[str, Any]) -> int | None:
    """Bytes of the parameters and buffers of the registered model ``config`` describes (built on ``meta``);
    None for an unregistered target or a description the constructor refuses (it is refused later, when built)."""
    short = _short(config)
    if short is None:
        return None
    try:
        return _param_bytes(_meta_build(short, _kwargs(config)))
    except Exception:  # noqa: BLE001 - the real build reports a bad argument with its own message
        return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of ``/proc/meminfo``, else
    ``sysconf``), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_model_size(config: Mapping[str, Any], key: str, available: int | None = None, label: str = ""
                     ) -> int | None:
    """Refuse a model description whose parameters alone cannot fit in ``available`` bytes (default: the memory
    available now), before anything is allocated. The error names the argument that makes it large (``key`` +
    ``.width``: the one whose constructor default shrinks it most). Returns the estimate in bytes (None: unknown)."""
    estimate = described_bytes(config)
    available = available if available is not None else available_memory()
    if estimate is None or available is None or estimate <= available:
        return estimate
    short = _short(config)
    assert short is not None
    kwargs = _kwargs(config)
    defaults = {n: p.default for n, p in inspect.signature(_constructor(short)).parameters.items()
                if p.default is not inspect.Parameter.empty}
    culprit, smallest = None, estimate
    for name in _numeric_keys(kwargs):
        if name not in defaults or defaults[name] == kwargs[name]:
            continue
        size = described_bytes({**config, name: defaults[name]})
        if size is not None and size < smallest:
            culprit, smallest = name, size
    what = f"{key}.{culprit}={kwargs[culprit]!r}" if culprit else f"{key} ({short})"
    fix = (f"set {key}.{culprit} to a size this machine holds (default {defaults[culprit]!r})" if culprit
           else "describe a smaller model")
    prefix = f"{label}: " if label else ""
    raise ValueError(f"{prefix}{what} describes a network of {_gb(estimate)} of parameters, more than the "
                     f"{_gb(available)} of memory available; nothing was allocated: {fix}")


def _controlling_keys(short: str, kwargs: Mapping[str, Any], stored: Mapping[str, Tensor],
                      own: Mapping[str, Tensor]) -> list[str]:
    """The numeric arguments that set the shapes of the most mismatching tensors (each argument changed once,
    doubled or +1, and the model rebuilt on ``meta``)."""
    differ = [k for k in own if k in stored and tuple(stored[k].shape) != tuple(own[k].shape)]
    counts: dict[str, int] = {}
    for name in _numeric_keys(kwargs):
        value = kwargs[name]
        other = value * 2 if isinstance(value, float) else value + 1
        try:
            changed = _meta_build(short, {**kwargs, name: other}).state_dict()
        except Exception:  # noqa: BLE001 - an argument the constructor refuses when changed controls nothing here
            continue
        counts[name] = sum(1 for k in differ if k in changed and tuple(changed[k].shape) != tuple(own[k].shape))
    best = max(counts.values(), default=0)
    return [name for name, n in counts.items() if n == best and best > 0]


def check_description(config: Mapping[str, Any], state: Mapping[str, Tensor], key: str, label: str) -> None:
    """Refuse a stored model description (``config``) whose tensors ``state`` do not fit it.

    A shape mismatch names the argument of the description that sets the tensor's shape (``key.num_classes``),
    the shape it gives and the stored tensor's shape; other layouts name the layout the tensors resemble.
    """
    short = _short(config)
    if short is None:
        return
    kwargs = _kwargs(config)
    try:
        own = _meta_build(short, kwargs).state_dict()
    except Exception:  # noqa: BLE001 - the real build reports a bad argument with its own message
        return
    missing, unexpected, mismatched = describe_mismatch(own, state)
    if not (missing or unexpected or mismatched):
        return
    fix = "the description does not match its weights: re-save the checkpoint with mr-train"
    if mismatched and not (missing or unexpected):
        tensor = next(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
        ours, stored = tuple(own[tensor].shape), tuple(state[tensor].shape)
        names = _controlling_keys(short, kwargs, state, own)
        args = ", ".join(f"{key}.{n}={kwargs[n]!r}" for n in names) or f"{key} ({short})"
        raise ValueError(f"{label}: {args} gives {tensor} the shape {ours}, but the stored tensor is {stored} "
                         f"({len(mismatched)} tensors differ); {fix}")
    resembled = resembled_layout(state)
    parts = [_listing(n, items) for n, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                 ("shape mismatches", mismatched)) if items]
    holds = f"; its tensors resemble {resembled[0]}" if resembled else ""
    raise ValueError(f"{label}: {key} describes a {short} but its tensors do not fit it ("
                     + " | ".join(parts) + f"){holds}; {fix}")


def _arch(config: Mapping[str, Any]) -> str:
    """``r3d_18 (width=0.25)``: the registered name and its numeric arguments that differ from the defaults."""
    short = _short(config)
    if short is None:
        return str(config.get("_target_"))
    kwargs = _kwargs(config)
    params = inspect.signature(_constructor(short)).parameters
    shown = ", ".join(f"{k}={kwargs[k]!r}" for k in _numeric_keys(kwargs)
                      if k != "num_classes" and (k not in params or params[k].default != kwargs[k]))
    return f"{short} ({shown})" if shown else short


def config_names_for(config: Mapping[str, Any], conf_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the model configs (``conf/model/<name>.yaml``) whose net builds the model ``config`` describes:
    same registered class, and the most equal plain arguments (ties all listed)."""
    import yaml  # PyYAML comes with omegaconf

    folder = Path(conf_dir) if conf_dir is not None else _CONF_MODEL
    short = _short(config)
    if short is None or not folder.is_dir():
        return []
    kwargs = _kwargs(config)
    scored: list[tuple[int, str]] = []
    for file in sorted(folder.glob("*.yaml")):
        try:
            net = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get("net") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if not isinstance(net, Mapping) or registered_targets().get(net.get("_target_")) != short:
            continue
        same = sum(1 for k, v in net.items() if k in kwargs and not (isinstance(v, str) and "${" in v)
                   and kwargs[k] == v)
        differ = sum(1 for k, v in net.items() if k in kwargs and isinstance(v, (int, float)) and v is not None
                     and not isinstance(v, bool) and kwargs[k] != v)
        scored.append((same - 10 * differ, file.stem))
    if not scored:
        return []
    best = max(s for s, _ in scored)
    return [name for s, name in scored if s == best]


def check_same_model(stored: Mapping[str, Any], run: Mapping[str, Any], label: str, run_key: str = "model.net"
                     ) -> None:
    """Refuse a checkpoint (``label``) whose stored model (``stored``) is not the one the run builds (``run``):
    another architecture, or the same one with other shapes. The error names what the checkpoint holds and the
    model config that builds it (``model=<name>``)."""
    theirs, ours = _short(stored), _short(run)
    if theirs is None or ours is None:
        return
    names = config_names_for(stored)
    fix = f"pass model={'|'.join(names)}" if names else f"set {run_key} to the checkpoint's model"
    if theirs != ours:
        raise ValueError(f"{label} holds a {_arch(stored)} (checkpoint['motion_relevance']['model']['_target_']="
                         f"{stored.get('_target_')!r}) but {run_key} builds a {_arch(run)}; {fix}")
    try:
        a = {k: tuple(v.shape) for k, v in _meta_build(theirs, _kwargs(stored)).state_dict().items()}
        b = {k: tuple(v.shape) for k, v in _meta_build(ours, _kwargs(run)).state_dict().items()}
    except Exception:  # noqa: BLE001 - either build reports its own error when it happens for real
        return
    if a != b:
        differ = [f"{k}: checkpoint {_kwargs(stored).get(k)!r} vs run {_kwargs(run).get(k)!r}"
                  for k in sorted(set(_kwargs(stored)) | set(_kwargs(run)))
                  if k in _numeric_keys({**_kwargs(stored), **_kwargs(run)})
                  and _kwargs(stored).get(k) != _kwargs(run).get(k)]
        raise ValueError(f"{label} holds a {_arch(stored)} whose shapes differ from the {_arch(run)} that {run_key} "
                         f"builds ({'; '.join(differ) or 'other layout'}); {fix}")


def check_alpha(config: Mapping[str, Any], preprocessing: Mapping[str, Any] | None, model_key: str,
                data_key: str, label: str = "") -> None:
    """Refuse a two-pathway model (SlowFast: an ``alpha`` argument) whose data feeds pathways of another frame-rate
    ratio, or no pathways; both keys are named. Other models, and preprocessing without a ``pathways`` entry,
    pass."""
    short = _short(config)
    if short is None or "alpha" not in inspect.signature(_constructor(short)).parameters:
        return
    if preprocessing is None or "pathways" not in preprocessing:
        return  # not recorded (an older checkpoint): the preprocessing check compares what is recorded
    alpha = config.get("alpha", inspect.signature(_constructor(short)).parameters["alpha"].default)
    pathways = preprocessing.get("pathways")
    fed = pathways.get("alpha") if isinstance(pathways, Mapping) else None
    label = f"{label}: " if label else ""
    if fed is None:
        raise ValueError(f"{label}{model_key}={alpha!r} is a two-pathway model but {data_key.rsplit('.', 1)[0]}="
                         f"{pathways!r} feeds one clip; set {data_key}={alpha!r}")
    if fed != alpha:
        raise ValueError(f"{label}{model_key}={alpha!r} but {data_key}={fed!r}: the slow pathway would take every "
                         f"{fed}-th frame where the model's lateral connections expect every {alpha}-th; set "
                         f"{data_key}={alpha!r} (or {model_key}={fed!r})")



def check_run_model(config: Mapping[str, Any], preprocessing: Mapping[str, Any] | None, key: str = "model.net",
                    data_key: str = "data.pathways.alpha") -> None:
    """The checks of a run's own model config before it is built: its parameters fit in memory
    (:func:`check_model_size`), and a two-pathway model's ``alpha`` is the data's (:func:`check_alpha`)."""
    check_model_size(config, key)
    check_alpha(config, preprocessing, f"{key}.alpha", data_key)
