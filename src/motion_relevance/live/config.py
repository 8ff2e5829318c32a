"""The structured config of ``mr-live`` (``motion_relevance/conf/live.yaml``) and the checks that run before any work.

:class:`LiveConfig` is the schema of ``live.yaml``, registered in Hydra's ConfigStore as ``live_schema``
(importing :mod:`motion_relevance.live` registers it; ``live.yaml`` lists it first in its defaults). It types
every key, so ``mr-live window=abc`` fails while Hydra composes the config, naming the key. The values (defaults)
are written once, in ``motion_relevance/conf/live.yaml``.

:func:`check_config` then refuses every value outside its range or choices (:data:`RULES`), a selective sigma list,
an unavailable device, a missing source file and an explainer or logger config that cannot be one, each with a
:class:`LiveConfigError` naming the key and the allowed values, before the checkpoint is read or the source
opened; it returns the typed :class:`LiveSettings` the run reads. :func:`fill_data_node` later fills ``data.*``
from the checkpoint, refusing user-given values that differ (:func:`~motion_relevance.models.checkpoint.
check_preprocessing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from motion_relevance.checks import check_float, check_positive, to_plain
from motion_relevance.conf import CONFIG_DIR
from motion_relevance.explain.selective import PADDINGS, check_sigma
from motion_relevance.live.source import check_resize, check_source
from motion_relevance.live.windows import POLICIES
from motion_relevance.models.checkpoint import PREPROCESSING_KEYS, check_preprocessing
from motion_relevance.utils.validation import check_groups
from motion_relevance.viz.colormaps import Mode
from motion_relevance.viz.video_writer import SUPPORTED_EXTENSIONS

__all__ = [
    "RULES",
    "SCHEMA_NAME",
    "CameraConfig",
    "DecodeConfig",
    "LiveConfig",
    "LiveConfigError",
    "LiveSettings",
    "OutputsConfig",
    "SelectiveConfig",
    "build_explainer",
    "check_config",
    "check_explainer",
    "fill_data_node",
    "register_schema",
    "resolve_device",
]

#: Name of :class:`LiveConfig` in Hydra's ConfigStore (the first entry of ``live.yaml``'s defaults).
SCHEMA_NAME = "live_schema"
DEVICE_TYPES = ("cpu", "cuda", "mps")
OVERLAY_MODES: tuple[str, ...] = get_args(Mode)


class LiveConfigError(ValueError):
    """A value of the live config is refused (the message names the key and the allowed values)."""


# ------------------------------------------------------------------------------------------------ schema
@dataclass
class SelectiveConfig:
    """``selective.*``: one threshold ``sigma`` (multiples of std(G)) and the padding of the temporal gradient."""

    sigma: Any = MISSING  # a number; typed Any so that a list gets the live-specific message
    padding: str = MISSING


@dataclass
class DecodeConfig:
    """``decode.*``: frames per decord call and decoder threads (files)."""

    chunk: int = MISSING
    threads: int = MISSING


@dataclass
class CameraConfig:
    """``camera.*``: frames buffered while a window is explained."""

    max_queue: int = MISSING


@dataclass
class OutputsConfig:
    """``outputs.*``: file names in the run folder (null = not written) and how the overlay video looks."""

    video: str | None = MISSING
    csv: str | None = MISSING
    timeline: str | None = MISSING
    min_height: int = MISSING
    alpha: float = MISSING
    mode: str = MISSING
    background: bool = MISSING


@dataclass
class LiveSettings:
    """The keys ``mr-live`` reads itself (documented in ``motion_relevance/conf/live.yaml``)."""

    source: Any = MISSING  # a video file path or a camera index
    ckpt_path: str = MISSING
    window: int = MISSING
    stride: int = MISSING
    policy: str | None = MISSING
    fps: float | None = MISSING
    default_fps: float = MISSING
    resize: Any = MISSING  # auto | native | int | [H, W]
    target: int | None = MISSING
    max_windows: int | None = MISSING
    max_seconds: float | None = MISSING
    device: str = MISSING
    threads: Any = MISSING  # null | auto | int
    display: bool = MISSING
    progress: bool = MISSING
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    selective: SelectiveConfig = field(default_factory=SelectiveConfig)


def _data_keys() -> dict[str, Any]:
    return dict.fromkeys(PREPROCESSING_KEYS)


@dataclass
class LiveConfig(LiveSettings):
    """Root schema of ``live.yaml``: :class:`LiveSettings` plus the nodes composed from other config groups
    (explainer, logger, paths, extras), the run's names, and ``data.*``: the checkpoint's preprocessing, filled at
    start (explainer configs interpolate ``${data.mean}`` …); a value the user sets must agree with it."""

    explainer: Any = MISSING
    logger: Any = None
    paths: Any = MISSING
    extras: Any = None
    data: dict[str, Any] = field(default_factory=_data_keys)
    task_name: str = MISSING
    tags: list[str] = MISSING
    group: str | None = None


def register_schema() -> None:
    """Store :class:`LiveConfig` in Hydra's ConfigStore as :data:`SCHEMA_NAME` (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=LiveConfig)


register_schema()


# ------------------------------------------------------------------------------------------------ rules
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _passes(check: Callable[..., Any], *args: Any) -> Callable[[Any], bool]:
    """A rule from a :mod:`motion_relevance.checks` function: true where it accepts the value."""
    def ok(v: Any) -> bool:
        try:
            check("", v, *args)
        except (ValueError, TypeError):
            return False
        return True

    return ok


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


_positive = _passes(check_positive)


def _optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _file_name(suffixes: tuple[str, ...] | None = None) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not isinstance(v, str) or not v.strip():
            return False
        return suffixes is None or Path(v).suffix.lower() in suffixes

    return ok


def _resize(v: Any) -> bool:
    try:
        check_resize(v)
    except ValueError:
        return False
    return True


def _threads(v: Any) -> bool:
    return v is None or v == "auto" or (_is_int(v) and v >= 1)


def _device(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    if v == "auto":
        return True
    try:
        return torch.device(v).type in DEVICE_TYPES
    except (RuntimeError, ValueError):
        return False


def _figure_suffixes() -> tuple[str, ...]:
    from matplotlib.backend_bases import FigureCanvasBase  # deferred: matplotlib, slow to import

    return tuple(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes())


def _alternatives(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


#: ``key -> (accepts(value), allowed values in words)``, checked by :func:`check_config`.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "window": (_int_at_least(1), "an integer >= 1 (frames per window; the model's clip length)"),
    "stride": (_int_at_least(1), "an integer >= 1 (frames between window starts)"),
    "policy": (_optional(_one_of(*POLICIES)), f"{', '.join(POLICIES)} or null (block for files, drop for cameras)"),
    "fps": (_optional(_positive), "a number > 0 (frames/s) or null (the source's frame rate)"),
    "default_fps": (_positive, "a number > 0 (frames/s)"),
    "resize": (_resize, "auto, native, an integer >= 1 (shorter side, pixels) or [H, W] with H, W >= 1"),
    "target": (_optional(_int_at_least(0)), "null (each window's predicted class) or a class index >= 0"),
    "max_windows": (_optional(_int_at_least(1)), "an integer >= 1 or null (the whole stream)"),
    "max_seconds": (_optional(_positive), "a number > 0 (seconds of stream) or null (the whole stream)"),
    "device": (_device, "auto, cpu, cuda, cuda:<index> or mps"),
    "threads": (_threads, "null (torch's default), auto or an integer >= 1"),
    "display": (_is_bool, "true or false"),
    "progress": (_is_bool, "true or false"),
    "decode.chunk": (_int_at_least(1), "an integer >= 1 (frames per decord call)"),
    "decode.threads": (_int_at_least(0), "an integer >= 0 (decoder threads; 0 = decord's choice)"),
    "camera.max_queue": (_int_at_least(1), "an integer >= 1 (frames)"),
    "outputs.video": (_optional(_file_name(SUPPORTED_EXTENSIONS)),
                      f"null or a file name ending in {_alternatives(SUPPORTED_EXTENSIONS)}"),
    "outputs.csv": (_optional(_file_name()), "null or a file name"),
    "outputs.timeline": (_optional(lambda v: _file_name(_figure_suffixes())(v)),
                         "null or an image file name (.png, .pdf, .svg, …)"),
    "outputs.min_height": (_int_at_least(1), "an integer >= 1 (pixels)"),
    "outputs.alpha": (_passes(check_float, 0.0, 1.0), "a number in [0, 1] (heatmap opacity)"),
    "outputs.mode": (_one_of(*OVERLAY_MODES), _alternatives(OVERLAY_MODES)),
    "outputs.background": (_is_bool, "true or false"),
    "selective.padding": (_one_of(*PADDINGS), _alternatives(PADDINGS)),
}
MISSING_HINTS = {
    "source": "give source=<video file> or source=<camera index> (0 = the first camera)",
    "ckpt_path": "give ckpt_path=<run folder>/checkpoints/last.ckpt",
}


def _value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _show(value: Any) -> str:
    """A value as the command line writes it: ``null``, ``true``, ``[1,2]``, ``'text'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def check_explainer(node: Any) -> None:
    """``explainer`` must be a config whose ``_target_`` imports as a subclass of
    :class:`motion_relevance.explain.Explainer`."""
    from motion_relevance.explain import Explainer  # deferred: loads Captum

    options = "|".join(sorted(p.stem for p in (CONFIG_DIR / "explainer").glob("*.yaml")))
    if not isinstance(node, DictConfig) or "_target_" not in node:
        shown = _show(OmegaConf.to_container(node) if OmegaConf.is_config(node) else node)
        raise LiveConfigError(f"explainer={shown} is not an explainer config: expected a mapping with _target_; "
                              f"choose one with explainer={options}")
    target = node.get("_target_")
    try:
        obj = hydra.utils.get_object(str(target))
    except Exception as err:  # noqa: BLE001 - hydra raises several error types here
        why = " ".join(str(err).split())
        raise LiveConfigError(f"explainer._target_={target!r} cannot be imported ({why}); choose an explainer "
                              f"with explainer={options}") from None
    if not (isinstance(obj, type) and issubclass(obj, Explainer)):
        raise LiveConfigError(f"explainer._target_={target!r} is not an explainer: expected a subclass of "
                              f"motion_relevance.explain.Explainer, e.g. explainer={options}")


def resolve_device(name: str) -> torch.device:
    """``device`` as a :class:`torch.device` (``auto``: cuda when available, else cpu); refuses an unknown or
    unavailable device."""
    if not _device(name):
        raise LiveConfigError(f"device={_show(name)}: allowed values are {RULES['device'][1]}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LiveConfigError(f"device={name}: CUDA is not available on this machine; use device=cpu or auto")
        if device.index is not None and device.index >= count:
            raise LiveConfigError(f"device={name}: this machine has CUDA devices 0..{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise LiveConfigError(f"device={name}: MPS is not available on this machine; use device=cpu or auto")
    return device


def check_config(cfg: DictConfig) -> LiveSettings:
    """Refuse every bad value of the live config before any work; returns the typed :class:`LiveSettings`.

    Checks, in order: the mandatory ``source`` and ``ckpt_path``, every key of :data:`RULES`, one
    ``selective.sigma``, the device, the explainer and logger configs, and that a file ``source`` exists.
    """
    for key, hint in MISSING_HINTS.items():
        if OmegaConf.is_missing(cfg, key) or _value(cfg, key) in (None, ""):
            raise LiveConfigError(f"{key} is missing: {hint}")
    if not isinstance(_value(cfg, "ckpt_path"), str):
        raise LiveConfigError(f"ckpt_path={_show(_value(cfg, 'ckpt_path'))}: {MISSING_HINTS['ckpt_path']}")
    for key, (accepts, allowed) in RULES.items():
        value = _value(cfg, key)
        if not accepts(value):
            raise LiveConfigError(f"{key}={_show(value)}: allowed values are {allowed}")
    sigma = _value(cfg, "selective.sigma")
    if isinstance(sigma, (list, tuple)):
        raise LiveConfigError(f"selective.sigma={_show(sigma)}: live explanations take one sigma, e.g. "
                              "selective.sigma=4")
    try:
        check_sigma(sigma)
    except ValueError as err:  # SigmaTypeError included
        raise LiveConfigError(str(err)) from None
    resolve_device(_value(cfg, "device"))
    check_explainer(cfg.get("explainer"))
    try:
        check_groups(cfg)
    except ValueError as err:
        raise LiveConfigError(str(err)) from None
    check_source(_value(cfg, "source"))
    names = [f.name for f in fields(LiveSettings)]
    typed = OmegaConf.merge(OmegaConf.structured(LiveSettings), {k: _value(cfg, k) for k in names})
    settings = OmegaConf.to_object(typed)
    assert isinstance(settings, LiveSettings)
    return settings


# ---------------------------------------------------------------------------------------- after the checkpoint
def fill_data_node(cfg: DictConfig, preprocessing: Mapping[str, Any]) -> None:
    """Fill ``cfg.data`` (what explainer configs interpolate: ``${data.mean}`` …) from the checkpoint's
    preprocessing; ``data.*`` values the user set must agree with it (the error names the differing keys)."""
    node = cfg.get("data")
    plain = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    given = {str(k): v for k, v in dict(plain).items() if v is not None}
    check_preprocessing(dict(preprocessing), given, source="data.* (command line)", prefix="data.")
    with open_dict(cfg):
        if cfg.get("data") is None:
            cfg.data = {}
        for key, value in preprocessing.items():
            cfg.data[key] = to_plain(value)


def build_explainer(node: DictConfig) -> Any:
    """Instantiate the explainer (after :func:`fill_data_node`: its config interpolates ``${data.*}``)."""
    check_explainer(node)
    explainer = hydra.utils.instantiate(node)
    if not callable(explainer):
        raise LiveConfigError(f"explainer._target_={node._target_!r} built a {type(explainer).__name__}, which is "
                              "not callable as explainer(model, clips, target)")
    return explainer
