"""Hugging Face ``transformers`` video classifiers as models of this project: ``(B, C, T, H, W)`` clips -> logits.

Supported classes (:data:`SUPPORTED`): ``VideoMAEForVideoClassification``, ``TimesformerForVideoClassification``,
``VivitForVideoClassification`` and ``VJEPA2ForVideoClassification``. :class:`HFVideoClassifier` wraps one of them:

* the wrapped model is the attribute ``hf``, so the adapter's ``state_dict`` keys are transformers' own keys under
  the one prefix ``hf.`` (the token views below hold no parameters);
* clips ``(B, C, T, H, W)`` are permuted to transformers' ``(B, T, C, H, W)`` (made contiguous) and passed as
  ``pixel_values`` (``pixel_values_videos`` for V-JEPA 2); the logits are those of transformers' forward, bit for bit;
* attention runs the eager implementation (explanations need the attention as tensor operations);
* clips of another frame count or size than the config's are refused before the forward pass (the position tables,
  TimeSformer's time attention and V-JEPA 2's rotary grid are built for exactly those sizes);
* every transformer block's patch tokens pass through a parameter-free :class:`TokenView` (``token_views.<i>``)
  that shows them as ``(B, N, D)`` in ``(T', H', W')`` order without class tokens, for token Grad-CAM; the block's
  own output is rebuilt from the view exactly (same values), so the logits do not change.

A checkpoint describes the adapter by plain data only: ``{"_target_": "motion_relevance.models.hf.HFVideoClassifier",
"architecture": <class name>, "config": <the transformers config as JSON>, "num_classes": N}``; it is rebuilt with
transformers' config class, never unpickled, and never with ``trust_remote_code``.

Local folders written by ``save_pretrained`` are read by :func:`from_folder`: ``config.json`` and ``*.safetensors``
only (see docs/training.md, "Hugging Face video transformers").
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.checks import check_clips, check_positive, resolve_inside, to_plain
from motion_relevance.models.weights import check_finite, read_safetensors

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED", "HFVideoClassifier", "TokenView", "folder_preprocessing", "from_folder",
           "from_transformers"]

TARGET = "motion_relevance.models.hf.HFVideoClassifier"
#: The prefix of the wrapped model's keys in the adapter's ``state_dict``.
PREFIX = "hf."
_EXTRA = "pip install 'motion_relevance[transformers]'"


@dataclass(frozen=True)
class _Spec:
    """Where one transformers class keeps its sizes, blocks and input name."""

    model_type: str
    input_name: str
    frames_key: str
    size_key: str
    blocks: str              # module path of the block list inside the transformers model
    prefix_tokens: int       # class tokens before the patch tokens
    order: str               # token order of the patch tokens: "thw" or "hwt" (TimeSformer)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float
    channels_key: str = "num_channels"


_IMAGENET_DEFAULT = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_IMAGENET_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

#: Supported transformers classes -> their layout; the preprocessing defaults are those of each model's
#: transformers video processor (ViViT's ``x / 127.5 - 1`` offset is folded into the mean: 1 + 0.5).
SUPPORTED: dict[str, _Spec] = {
    "VideoMAEForVideoClassification": _Spec("videomae", "pixel_values", "num_frames", "image_size",
                                            "videomae.encoder.layer", 0, "thw", *_IMAGENET_STANDARD, 255.0),
    "TimesformerForVideoClassification": _Spec("timesformer", "pixel_values", "num_frames", "image_size",
                                               "timesformer.encoder.layer", 1, "hwt", *_IMAGENET_DEFAULT, 255.0),
    "VivitForVideoClassification": _Spec("vivit", "pixel_values", "num_frames", "image_size", "vivit.layers", 1,
                                         "thw", (1.5, 1.5, 1.5), (0.5, 0.5, 0.5), 127.5),
    "VJEPA2ForVideoClassification": _Spec("vjepa2", "pixel_values_videos", "frames_per_clip", "crop_size",
                                          "vjepa2.encoder.layer", 0, "thw", *_IMAGENET_DEFAULT, 255.0,
                                          channels_key="in_chans"),
}
_BY_TYPE = {spec.model_type: name for name, spec in SUPPORTED.items()}


def _transformers() -> Any:
    try:
        import transformers  # deferred: optional heavy dependency (the transformers extra)
    except ImportError:
        raise ImportError(f"Hugging Face models need the transformers extra: {_EXTRA}") from None
    return transformers


def _supported_list() -> str:
    return ", ".join(SUPPORTED)


def _spec(architecture: Any, where: str) -> _Spec:
    if architecture not in SUPPORTED:
        raise ValueError(f"{where}={architecture!r} is not a supported video classifier; supported: "
                         f"{_supported_list()}")
    return SUPPORTED[architecture]


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _geometry(spec: _Spec, config: Any) -> tuple[int, tuple[int, int], int, tuple[int, int], int]:
    """(frames, (H, W), tubelet frames, (patch H, patch W), channels) of a transformers config."""
    frames = int(getattr(config, spec.frames_key))
    size = _pair(getattr(config, spec.size_key))
    if spec.model_type == "vivit":
        tubelet_t, patch_h, patch_w = (int(v) for v in config.tubelet_size)
        patch = (patch_h, patch_w)
        tubelet = tubelet_t
    elif spec.model_type == "timesformer":
        tubelet, patch = 1, _pair(config.patch_size)
    else:
        tubelet, patch = int(config.tubelet_size), _pair(config.patch_size)
    return frames, size, tubelet, patch, int(getattr(config, spec.channels_key))


def _plain_config(config: Any) -> dict[str, Any]:
    """The transformers config as JSON data, without the label names (the head is sized by ``num_classes``)."""
    data = json.loads(config.to_json_string(use_diff=False))
    for key in ("id2label", "label2id", "_name_or_path", "transformers_version", "architectures"):
        data.pop(key, None)
    data["num_labels"] = int(config.num_labels)
    return data


def _num_labels(config: Mapping[str, Any]) -> int | None:
    """The class count a config.json gives: ``num_labels``, else the length of ``id2label`` (transformers writes
    only the latter), else None (transformers' default)."""
    if config.get("num_labels") is not None:
        return int(config["num_labels"])
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, Mapping) and labels else None


def _check_no_remote_code(config: Mapping[str, Any], where: str) -> None:
    if "auto_map" in config:
        raise ValueError(f"{where} has the field auto_map ({config['auto_map']!r}): it asks for code from the model "
                         "repository (trust_remote_code), which is never run; use a folder of a supported class "
                         f"({_supported_list()}) without auto_map")


class TokenView(nn.Identity):
    """The patch tokens of one transformer block as ``(B, N, D)`` in ``(T', H', W')`` order: the module token
    Grad-CAM hooks (``token_views.<i>``). Parameter-free, so it adds no ``state_dict`` keys.

    ``grid`` is the token grid ``(T', H', W')`` of the running forward pass (set by the adapter; ``None`` outside
    it, when the block's output passes unchanged)."""

    def __init__(self, prefix: int = 0, order: str = "thw") -> None:
        super().__init__()
        self.prefix, self.order = int(prefix), order
        self.grid: tuple[int, int, int] | None = None

    def through(self, hidden: Tensor) -> Tensor:
        """A block's output ``(B, prefix + N, D)`` rebuilt from its patch tokens passed through this view."""
        p = self.prefix
        if p == 0 and self.order == "thw":
            return self(hidden)
        b, _, d = hidden.shape
        t, h, w = self.grid  # type: ignore[misc]
        tokens = hidden[:, p:]
        if self.order == "hwt":
            tokens = tokens.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4).reshape(b, t * h * w, d)
        tokens = self(tokens)
        if self.order == "hwt":
            tokens = tokens.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, t * h * w, d)
        return torch.cat((hidden[:, :p], tokens), dim=1) if p else tokens


def _view_hook(block: nn.Module, _inputs: Any, output: Any) -> Any:
    """Forward hook of a transformer block: its output through its ``token_view`` (module-level, so that model
    copies sharing hook functions reach their own view through the block)."""
    view = block._modules.get("token_view")
    hidden = output[0] if isinstance(output, tuple) else output
    if not isinstance(view, TokenView) or view.grid is None or not isinstance(hidden, Tensor) or hidden.dim() != 3:
        return None
    hidden = view.through(hidden)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class HFVideoClassifier(nn.Module):
    """A transformers video classifier taking ``(B, C, T, H, W)`` clips (module docstring).

    Args:
        architecture: the transformers class name (one of :data:`SUPPORTED`).
        config: the transformers config as plain data (``config.json``'s fields); ``model_type`` must match.
        num_classes: output classes; ``None`` keeps the config's ``num_labels``.
    """

    #: Canonization (``explain.canonize``) keeps :meth:`forward` as written and rewrites ``hf``: it holds no
    #: operation that needs a relevance rule (input checks, the token grid, a permute), only Python checks that
    #: torch.fx cannot trace.
    canonize_as_written = True

    def __init__(self, architecture: str, config: Mapping[str, Any], num_classes: int | None = None) -> None:
        super().__init__()
        spec = _spec(architecture, "architecture")
        config = to_plain(config)  # Hydra passes config nodes; transformers' configs check plain types
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping of transformers config fields, got {type(config).__name__}")
        _check_no_remote_code(config, "config")
        if config.get("model_type", spec.model_type) != spec.model_type:
            raise ValueError(f"config.model_type={config.get('model_type')!r} does not match architecture "
                             f"{architecture} (model_type {spec.model_type!r})")
        tf = _transformers()
        cls = getattr(tf, architecture)
        fields = {k: v for k, v in config.items() if k not in ("id2label", "label2id", "model_type", "num_labels")}
        if _num_labels(config) is not None:
            fields["num_labels"] = _num_labels(config)
        hf_config = cls.config_class(**fields)
        if num_classes is not None:
            hf_config.num_labels = int(check_positive("num_classes", num_classes, integer=True))
        hf_config._attn_implementation = "eager"
        self._setup(architecture, cls(hf_config))

    @classmethod
    def around(cls, model: nn.Module) -> HFVideoClassifier:
        """The adapter around an existing transformers model (its weights shared, not copied)."""
        name = type(model).__name__
        spec = SUPPORTED.get(name)
        tf = _transformers()
        if spec is None or not isinstance(model, getattr(tf, name)):
            raise ValueError(f"{name} is not a supported video classifier; supported: {_supported_list()}")
        _check_no_remote_code(model.config.to_dict(), f"{name}.config")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(name, model)
        return self

    def _setup(self, architecture: str, model: nn.Module) -> None:
        spec = SUPPORTED[architecture]
        self.architecture = architecture
        self.spec = spec
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        model.config._attn_implementation = "eager"
        blocks = model.get_submodule(spec.blocks)
        # Registered before ``hf``: the views' module paths are ``token_views.<i>`` (each is also the child
        # ``token_view`` of its block, so that model copies that copy children keep block and view together).
        # A model wrapped before keeps its views and hooks (a second hook would run each view twice).
        views = [block._modules.get("token_view") for block in blocks]
        self.token_views = nn.ModuleList(v if isinstance(v, TokenView) else TokenView(spec.prefix_tokens, spec.order)
                                         for v in views)
        self.hf = model
        for block, old, view in zip(blocks, views, self.token_views):
            if old is not view:
                block.add_module("token_view", view)
                block.register_forward_hook(_view_hook)
        frames, size, tubelet, patch, channels = _geometry(spec, model.config)
        self.num_frames, self.image_size, self.tubelet_size, self.patch_size = frames, size, tubelet, patch
        self.num_channels = channels
        self.num_prefix_tokens = spec.prefix_tokens
        self.num_classes = int(model.config.num_labels)
        #: The block token Grad-CAM explains by default: the last one, or with a class token the one before it (the
        #: head reads only the class token, so the last block's patch tokens get no gradient).
        self.explain_layer = f"token_views.{max(len(blocks) - 1 - (spec.prefix_tokens > 0), 0)}"

    @property
    def divided_attention(self) -> bool:
        """TimeSformer with divided space-time attention: each block runs a time attention, then a space one."""
        return (self.spec.model_type == "timesformer"
                and getattr(self.hf.config, "attention_type", None) == "divided_space_time")

    # ------------------------------------------------------------------ geometry
    def token_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T / tubelet, H / patch_h, W / patch_w)`` of a clip shape ``(..., T, H, W)``; ``ValueError``
        naming the sizes when the clip is not the one the config was built for."""
        t, h, w = (int(s) for s in tuple(shape)[-3:])
        if (t, h, w) != (self.num_frames, *self.image_size):
            key = self.spec
            raise ValueError(
                f"{self.architecture} takes clips of {self.num_frames} frames of {self.image_size[0]}x"
                f"{self.image_size[1]} pixels (config {key.frames_key}={self.num_frames}, {key.size_key}="
                f"{list(self.image_size)}, tubelet {self.tubelet_size}, patch {self.patch_size[0]}x"
                f"{self.patch_size[1]}), got {t} frames of {h}x{w}; set data.clip_len={self.num_frames} "
                f"data.crop_size={self.image_size[0]}"
            )
        return t // self.tubelet_size, h // self.patch_size[0], w // self.patch_size[1]

    def config_dict(self) -> dict[str, Any]:
        """The plain description a checkpoint stores (rebuilt by the model registry)."""
        return {"_target_": TARGET, "architecture": self.architecture, "config": _plain_config(self.hf.config),
                "num_classes": self.num_classes}

    # ------------------------------------------------------------------ forward
    def forward(self, clips: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of clips ``(B, C, T, H, W)``."""
        clips = check_clips("clips", clips)
        if clips.shape[1] != self.num_channels:
            raise ValueError(f"{self.architecture} was built for {self.num_channels} channels, got clips "
                             f"{tuple(clips.shape)} (expected (B, C, T, H, W))")
        grid = self.token_grid(clips.shape)
        for view in self.token_views:
            view.grid = grid
        try:
            out = self.hf(**{self.spec.input_name: clips.permute(0, 2, 1, 3, 4).contiguous()})
        finally:
            for view in self.token_views:
                view.grid = None
        return out.logits


def from_transformers(model: nn.Module) -> HFVideoClassifier:
    """The adapter around a transformers video classifier instance (one of :data:`SUPPORTED`; others are refused
    naming their class): takes ``(B, C, T, H, W)`` clips, returns transformers' logits. Attention is set to eager."""
    return HFVideoClassifier.around(model)


# ---------------------------------------------------------------------------------------------- local folders
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")


def _folder(path: Any) -> Path:
    if path is None or path == "":
        raise ValueError("model.path is not set; pass model.path=<folder written by save_pretrained> (config.json "
                         "and model.safetensors)")
    folder = Path(os.fspath(path))
    if not folder.is_dir():
        raise FileNotFoundError(f"model.path={str(folder)!r} is not a folder; pass the folder save_pretrained wrote "
                                "(config.json and model.safetensors)")
    return folder


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(file)!r} is not readable JSON ({err}); re-save the folder with save_pretrained") \
            from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(file)!r} holds a {type(data).__name__}, not a JSON object of config fields")
    return data


def read_folder_config(path: Any) -> tuple[str, dict[str, Any]]:
    """(architecture, config fields) of a ``save_pretrained`` folder; refuses ``auto_map`` and any architecture
    outside :data:`SUPPORTED`, naming the field."""
    folder = _folder(path)
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r} does not exist; model.path must be a folder written by "
                                "save_pretrained (config.json and model.safetensors)")
    config = _read_json(file)
    _check_no_remote_code(config, repr(str(file)))
    architectures = config.get("architectures")
    model_type = config.get("model_type")
    if architectures is not None:
        if not isinstance(architectures, list) or len(architectures) != 1:
            raise ValueError(f"{str(file)!r}: field architectures={architectures!r} must name one class; "
                             f"supported: {_supported_list()}")
        architecture = architectures[0]
        _spec(architecture, f"{str(file)!r}: field architectures")
    else:
        if model_type not in _BY_TYPE:
            raise ValueError(f"{str(file)!r}: field model_type={model_type!r} (and no architectures) is not a "
                             f"supported video classifier; supported: {_supported_list()}")
        architecture = _BY_TYPE[model_type]
    if model_type != SUPPORTED[architecture].model_type:
        raise ValueError(f"{str(file)!r}: field model_type={model_type!r} does not match architectures="
                         f"[{architecture!r}] (model_type {SUPPORTED[architecture].model_type!r})")
    return architecture, config


def _weight_files(folder: Path) -> list[Path]:
    """The folder's ``*.safetensors`` files (the index's shards when there is one); pickle files are refused."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, Mapping) or not weight_map:
            raise ValueError(f"{str(index)!r} has no weight_map; re-save the folder with save_pretrained")
        files = [resolve_inside(folder, str(name)) for name in sorted(set(map(str, weight_map.values())))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{str(index)!r} names missing shards {missing[:5]}; copy the whole folder")
        if any(f.suffix != ".safetensors" for f in files):
            raise ValueError(f"{str(index)!r} names files that are not .safetensors; only safetensors are read")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(f.name for f in folder.iterdir() if f.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{str(folder / pickles[0])!r} is a pickle file, which is never loaded (it can run code); "
                         "re-save the model with save_pretrained(safe_serialization=True) to get model.safetensors")
    raise FileNotFoundError(f"model.path={str(folder)!r} holds no *.safetensors weights; save the model with "
                            "save_pretrained (model.safetensors)")


def _read_weights(files: Sequence[Path]) -> dict[str, Tensor]:
    """The tensors of the folder's safetensors files (the project's own reader: no code runs), all finite."""
    state: dict[str, Tensor] = {}
    for file in files:
        for key, value in read_safetensors(file, where="model.path").items():
            if key in state:
                raise ValueError(f"{str(file)!r} repeats the tensor {key!r} of another shard; re-save the folder "
                                 "with save_pretrained")
            state[key] = value
        check_finite(state, f"model.path={str(file)!r}")
    return state


def _current_names(model: nn.Module, state: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """``state`` with the keys save_pretrained wrote in the published (legacy) naming renamed to the model's own,
    by transformers' conversion table for the class (renamings only; a key that needs a tensor converter is
    refused)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping  # deferred: optional extra
        from transformers.core_model_loading import (  # deferred: optional extra
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:  # another transformers layout: keys are taken as they are
        return dict(state)
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new, converter = rename_source_key(key, renamings, converters)
        if converter is not None:
            raise ValueError(f"{where}: tensor {key!r} needs transformers' weight converter {converter!r}, which is "
                             "not supported here; re-save the folder with this transformers version")
        out[new] = value
    return out


def from_folder(path: str | os.PathLike[str], num_classes: int | None = None) -> HFVideoClassifier:
    """The adapter built from a ``save_pretrained`` folder: ``config.json`` + ``*.safetensors`` only.

    The architecture is transformers' class named in ``config.json`` (never remote code); the weights are loaded
    strictly. ``num_classes`` (from the data; ``mr-train`` always gives it) replaces the head by a freshly initialised
    classifier for that many classes, even of the folder's size (its classes are another set's); ``None`` keeps the
    folder's head.
    """
    folder = _folder(path)
    architecture, config = read_folder_config(folder)
    state = _read_weights(_weight_files(folder))
    keep = num_classes is None
    net = HFVideoClassifier(architecture, config, None if keep else num_classes)
    state = _current_names(net.hf, state, f"model.path={str(folder)!r}")
    if not keep:
        dropped = [k for k in state if k.startswith("classifier.")]
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        log.info("%s: head replaced for %s classes (dropped %s)", folder, num_classes, dropped)
    own = net.hf.state_dict()
    missing = [k for k in own if k not in state and (keep or not k.startswith("classifier."))]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"the weights in {str(folder)!r} do not fit its config.json ({architecture}): missing "
                         f"{missing[:6]}, unexpected {unexpected[:6]}, shape mismatches {shapes[:6]}; re-save the "
                         "folder with save_pretrained")
    net.hf.load_state_dict(state, strict=False)
    return net


def folder_preprocessing(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The input a folder's model expects: ``mean``/``std``/``scale`` from ``preprocessor_config.json`` (or
    ``video_preprocessor_config.json``) when present, else the model's transformers defaults; ``clip_len`` and
    ``crop_size`` from ``config.json``. RGB channel order."""
    folder = _folder(path)
    architecture, config = read_folder_config(folder)
    spec = SUPPORTED[architecture]
    mean, std, scale = list(spec.mean), list(spec.std), spec.scale
    for name in _PREPROCESSOR_FILES:
        file = folder / name
        if not file.is_file():
            continue
        proc = _read_json(file)
        _check_no_remote_code(proc, repr(str(file)))
        base_mean = [float(v) for v in proc.get("image_mean", mean if spec.model_type != "vivit" else (0.5,) * 3)]
        std = [float(v) for v in proc.get("image_std", std)]
        if proc.get("do_normalize", True) is False:
            base_mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        factor = float(proc.get("rescale_factor", 1.0 / scale))
        if proc.get("do_rescale", True) is False:
            factor = 1.0
        scale = 1.0 / factor
        offset = bool(proc.get("offset", spec.model_type == "vivit"))  # ViViT rescales to x * factor - 1
        mean = [m + 1.0 for m in base_mean] if offset else base_mean
        break
    frames = int(config.get(spec.frames_key, getattr(_transformers(), architecture).config_class().to_dict()
                            [spec.frames_key]))
    size = config.get(spec.size_key, getattr(_transformers(), architecture).config_class().to_dict()[spec.size_key])
    return {"mean": mean, "std": std, "scale": scale, "channel_order": "RGB", "clip_len": frames,
            "crop_size": _pair(size)[0]}
