"""Baseline explanations through Captum (SPEC §2): DTD, Grad-CAM, Guided Backprop, Guided Grad-CAM, any Captum class.

Every explainer is built from plain keyword arguments (Hydra ``_target_``) and called as
``explainer(model, clips, target=None) -> relevance (B, C, T, H, W)``:

* ``target=None`` explains the predicted class of each clip, an int or a tensor/sequence of ``B`` ints picks
  classes (e.g. ``target=labels``);
* the model is never modified: the explainer works on an eval-mode copy that shares the weights
  (:func:`motion_relevance.explain._copy.eval_copy`), so the caller's training flag, weights,
  ``requires_grad`` flags, ``.grad`` fields and hooks stay as they were, also when the call raises;
* every input check (clip shape/dtype/NaN, target range, layer names, ReLU modules, DTD layer types) runs
  before any hook is attached, and raises ``ValueError`` / ``TypeError`` naming the problem and the fix;
* the result is detached, on the clips' device, and checked for NaN/Inf.

They work on any 3-D CNN made of ``Conv3d``, ``MaxPool3d`` / ``AvgPool3d``, ``Linear``, ``Flatten``, ``Dropout`` and
separate ``nn.ReLU`` modules that returns logits ``(B, num_classes)``.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from captum.attr import (
    LRP,
    Attribution,
    GuidedGradCam,
    LayerAttribution,
    LayerGradCam,
)
from captum.attr import (
    GuidedBackprop as CaptumGuidedBackprop,
)
from captum.attr._core.guided_backprop_deconvnet import ModifiedReluGradientAttribution
from torch import Tensor, nn

from motion_relevance.explain._copy import TargetLogit, eval_copy, predicted_class
from motion_relevance.explain.lrp import DTD_LAYER_TYPES, assign_dtd_rules, zb_bounds_from_normalization
from motion_relevance.explain.validation import (
    ModelStructure,
    analyse_model,
    check_clips,
    check_finite,
    check_target_range,
    get_layer,
    normalise_target,
    require_relu_modules,
)

__all__ = ["CaptumExplainer", "DeepTaylor", "Explainer", "GradCAM", "GuidedBackprop", "GuidedGradCAM"]

_UPSAMPLE_MODES = ("trilinear", "nearest", "area")


class Explainer:
    """Base class: validation, the eval copy and output checks around one attribution (``_explain``)."""

    #: short name used for metric keys (``dtd``, ``gradcam``, ``gbp``, ``guided_gradcam``, …)
    name: str = "explainer"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"name must be a non-empty string, got {name!r}")
            self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def __call__(self, model: nn.Module, clips: Tensor, target: Any = None) -> Tensor:
        """Relevance ``(B, C, T, H, W)`` of ``target`` (default: the predicted class) for ``clips``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_clips(clips)
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs gradients but runs under torch.inference_mode(); in Lightning set "
                "Trainer(inference_mode=False) for explanation runs"
            )
        target_t = normalise_target(target, clips.shape[0])
        structure = analyse_model(model, clips)
        check_target_range(target_t, structure.num_outputs)
        self._validate(model, structure, clips)
        work = eval_copy(model)
        inputs = clips.detach()
        if inputs.is_inference():
            inputs = inputs.clone()
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            relevance = self._explain(work, inputs.requires_grad_(True), target_t, structure)
        relevance = relevance.detach()
        check_finite(relevance, f"the {self.name} relevance")
        return relevance

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        """Model checks of this method (before any hook); raise ``ValueError`` / ``TypeError``."""

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        raise NotImplementedError


def _check_single_use(structure: ModelStructure, layer: str, method: str) -> None:
    calls = structure.calls.get(layer, 0)
    if calls != 1:
        raise ValueError(
            f"{method} needs layer {layer!r} to run exactly once per forward pass, but it ran {calls} times; "
            "pick a layer that is used once"
        )
    shape = structure.output_shapes.get(layer)
    if shape is None or len(shape) != 5:
        raise ValueError(
            f"{method} needs a 3-D convolutional layer with output (B, C, T, H, W), but {layer!r} outputs "
            f"{shape}; pick a Conv3d layer such as 'conv5b'"
        )


def _check_upsample(mode: str) -> str:
    if mode not in _UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {mode!r}")
    return mode


class GradCAM(Explainer):
    """Grad-CAM (``captum.attr.LayerGradCam``) on ``layer``, ReLU on, upsampled to ``(T, H, W)``; ``C = 1``.

    Args:
        layer: name of the convolutional layer (``"conv5b"``, the last conv layer of C3D: 2x7x7 for 16x112x112).
        upsample: ``"trilinear"`` (SPEC; ``align_corners=False``), ``"nearest"`` or ``"area"``.
        name: metric-key name (default ``"gradcam"``).
    """

    name = "gradcam"

    def __init__(self, layer: str = "conv5b", upsample: str = "trilinear", name: str | None = None) -> None:
        super().__init__(name)
        self.layer = layer
        self.upsample = _check_upsample(upsample)

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        get_layer(model, self.layer)
        _check_single_use(structure, self.layer, "Grad-CAM")

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        cam = LayerGradCam(TargetLogit(model, target), get_layer(model, self.layer))
        maps = cam.attribute(clips, relu_attributions=True)
        return LayerAttribution.interpolate(maps, tuple(clips.shape[2:]), interpolate_mode=self.upsample)


class GuidedBackprop(Explainer):
    """Guided Backprop (``captum.attr.GuidedBackprop``): the input gradient with negative gradients zeroed at
    every ReLU; ``C = 3``. Needs one non-in-place ``nn.ReLU`` module per place."""

    name = "gbp"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        require_relu_modules(model, structure, "Guided Backprop")

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        return CaptumGuidedBackprop(TargetLogit(model, target)).attribute(clips)


class GuidedGradCAM(Explainer):
    """Guided Grad-CAM (``captum.attr.GuidedGradCam`` on ``layer``): Guided Backprop times the Grad-CAM map
    upsampled to ``(T, H, W)``; ``C = 3``.

    Captum's ``GuidedGradCam`` handles 5-D inputs once it is given ``interpolate_mode="trilinear"`` (its
    default ``"nearest"`` would also run); the map is the same ``LayerGradCam`` map as :class:`GradCAM`.
    """

    name = "guided_gradcam"

    def __init__(self, layer: str = "conv5b", upsample: str = "trilinear", name: str | None = None) -> None:
        super().__init__(name)
        self.layer = layer
        self.upsample = _check_upsample(upsample)

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        get_layer(model, self.layer)
        _check_single_use(structure, self.layer, "Guided Grad-CAM")
        require_relu_modules(model, structure, "Guided Grad-CAM")

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        ggc = GuidedGradCam(TargetLogit(model, target), get_layer(model, self.layer))
        relevance = ggc.attribute(clips, interpolate_mode=self.upsample)
        if relevance.shape != clips.shape:  # Captum warns and returns an empty tensor if upsampling fails
            raise RuntimeError(f"Guided Grad-CAM could not upsample the {self.layer!r} map to {tuple(clips.shape)}")
        return relevance


def _as_bound(value: Any, what: str) -> Tensor:
    try:
        tensor = torch.as_tensor(list(value) if isinstance(value, Sequence) else value, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"DeepTaylor {what} must be a number or a sequence of numbers, got {value!r}") from err
    tensor = tensor.flatten()
    if tensor.numel() == 0 or not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"DeepTaylor {what} must be finite numbers, got {value!r}")
    return tensor


class DeepTaylor(Explainer):
    """Deep Taylor Decomposition through ``captum.attr.LRP`` (SPEC §2); ``C = 3``.

    z+ on hidden Conv3d/Linear layers (biases left out), zB on the first Conv3d/Linear layer with the bounds
    ``[lower, upper]`` of the normalised input, ReLU passes relevance through, max-pooling winner-take-all or
    proportional. Relevance starts from the target logit: for a bias-free ReLU network the input relevance
    sums to it, and it is non-negative when that logit is positive.

    Args:
        lower, upper: zB bounds (smallest / largest normalised pixel value), scalars or one value per input
            channel; see :func:`zb_bounds_from_normalization`.
        mean, std, scale: alternative to ``lower``/``upper``: the normalisation ``(frames / scale - mean) / std``
            the bounds are computed from (convenient in configs).
        pooling: ``"winner"`` (default; relevance to the arg-max) or ``"proportional"`` (in proportion to inputs).
        name: metric-key name (default ``"dtd"``).

    Inputs outside ``[lower, upper]`` make zB terms negative; a warning says so.
    """

    name = "dtd"

    def __init__(
        self,
        lower: float | Sequence[float] | None = None,
        upper: float | Sequence[float] | None = None,
        *,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        scale: float = 255.0,
        pooling: str = "winner",
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if lower is None and upper is None and mean is not None and std is not None:
            lower, upper = zb_bounds_from_normalization(mean, std, scale)
        if lower is None or upper is None:
            raise ValueError(
                "DeepTaylor needs the zB bounds of the normalised input: pass lower= and upper= (see "
                "zb_bounds_from_normalization) or mean= and std= (and scale=) of the normalisation"
            )
        self.lower, self.upper = _as_bound(lower, "lower"), _as_bound(upper, "upper")
        if self.lower.numel() != self.upper.numel() and 1 not in (self.lower.numel(), self.upper.numel()):
            raise ValueError(
                f"DeepTaylor lower ({self.lower.numel()} values) and upper ({self.upper.numel()} values) must "
                "have the same number of channels"
            )
        if not bool((self.lower < self.upper).all()):
            raise ValueError(f"DeepTaylor needs lower < upper, got {self.lower.tolist()} / {self.upper.tolist()}")
        if pooling not in ("winner", "proportional"):
            raise ValueError(f"pooling must be 'winner' or 'proportional', got {pooling!r}")
        self.pooling = pooling

    def __repr__(self) -> str:
        return (
            f"DeepTaylor(lower={self.lower.tolist()}, upper={self.upper.tolist()}, pooling={self.pooling!r}, "
            f"name={self.name!r})"
        )

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        require_relu_modules(model, structure, "DTD")
        modules = dict(model.named_modules())
        for name in dict.fromkeys(structure.leaf_order):
            module = modules.get(name)
            if type(module) not in DTD_LAYER_TYPES:
                raise TypeError(
                    f"DTD has no rule for module {name!r} ({type(module).__name__}); supported leaf modules: "
                    f"{[t.__name__ for t in DTD_LAYER_TYPES]}. Fold BatchNorm into the preceding conv, or use "
                    "CaptumExplainer with a method that needs no rules"
                )
            if (
                self.pooling == "proportional"
                and isinstance(module, nn.MaxPool3d)
                and (module.dilation not in (1, (1, 1, 1)) or module.return_indices)
            ):
                raise ValueError(f"proportional pooling does not support dilation/return_indices ({name!r})")
        for name, count in structure.calls.items():
            if count > 1 and any(True for _ in modules[name].parameters(recurse=False)):
                raise ValueError(f"DTD needs each layer to run once per forward pass; {name!r} ran {count} times")
        first = structure.first_weighted
        if first is None or not isinstance(modules[first], (nn.Conv3d, nn.Linear)):
            raise ValueError("DTD found no Conv3d/Linear layer to apply the zB rule to")
        channels = modules[first].weight.shape[1] * getattr(modules[first], "groups", 1)
        for bound in (self.lower, self.upper):
            if bound.numel() not in (1, channels) or (bound.numel() > 1 and isinstance(modules[first], nn.Linear)):
                raise ValueError(
                    f"DeepTaylor bounds have {bound.numel()} values but the first layer {first!r} takes {channels} "
                    "input channels; give one value per channel (Conv3d) or a scalar"
                )
        self._warn_out_of_bounds(clips)

    def _warn_out_of_bounds(self, clips: Tensor) -> None:
        per_channel = clips.transpose(0, 1).reshape(clips.shape[1], -1)
        lows, highs = per_channel.amin(1).double().cpu(), per_channel.amax(1).double().cpu()
        if bool((lows < self.lower - 1e-4).any()) or bool((highs > self.upper + 1e-4).any()):
            warnings.warn(
                f"clips lie outside the zB bounds [{self.lower.tolist()}, {self.upper.tolist()}] (min "
                f"{lows.tolist()}, max {highs.tolist()}): DTD input relevance may turn negative; check the bounds "
                "against the data normalisation",
                stacklevel=3,
            )

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        assert structure.first_weighted is not None
        assign_dtd_rules(model, structure.first_weighted, self.lower, self.upper, self.pooling)
        return LRP(TargetLogit(model, target)).attribute(clips)


def _import_attribution(path: str) -> type[Attribution]:
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"method must be an import path such as 'captum.attr.IntegratedGradients', got {path!r}")
    module_name, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {path!r} ({err}); use e.g. 'captum.attr.IntegratedGradients'") from err
    if not (isinstance(cls, type) and issubclass(cls, Attribution)):
        raise TypeError(f"{path!r} is not a Captum attribution class (subclass of captum.attr.Attribution)")
    return cls


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _plain(value: Any) -> Any:
    """Hydra ``DictConfig`` / ``ListConfig`` values to plain dicts and lists (duck-typed, no Hydra import)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, Tensor)):
        return [_plain(v) for v in value]
    return value


class CaptumExplainer(Explainer):
    """Any Captum attribution class, given by import path, with its construction and ``attribute()`` kwargs.

    Args:
        method: import path, e.g. ``"captum.attr.IntegratedGradients"`` or ``"captum.attr.Saliency"``.
        init_kwargs: keyword arguments for the class constructor (after the model, and the layer if any).
        attribute_kwargs: keyword arguments for ``attribute()`` (e.g. ``{"n_steps": 16}``); not ``target``.
        layer: layer name for ``Layer…`` classes (the layer module is passed to the constructor).
        upsample: for layer attributions, upsample the map to ``(T, H, W)`` with this mode (``None``: keep).
        name: metric-key name (default: the class name in snake case, e.g. ``"integrated_gradients"``).

    The predicted class (``target=None``) is found with one no-grad forward first, since methods such as
    Integrated Gradients run the model on other inputs than the clips.
    """

    def __init__(
        self,
        method: str,
        init_kwargs: Mapping[str, Any] | None = None,
        attribute_kwargs: Mapping[str, Any] | None = None,
        layer: str | None = None,
        upsample: str | None = "trilinear",
        name: str | None = None,
    ) -> None:
        self.cls = _import_attribution(method)
        super().__init__(name if name is not None else _snake(self.cls.__name__))
        self.method = method
        self.init_kwargs = _plain(dict(init_kwargs or {}))
        self.attribute_kwargs = _plain(dict(attribute_kwargs or {}))
        if "target" in self.attribute_kwargs:
            raise ValueError("pass target to the explainer call, not in attribute_kwargs")
        self.layer = layer
        self.upsample = None if upsample is None else _check_upsample(upsample)

    def __repr__(self) -> str:
        return f"CaptumExplainer(method={self.method!r}, layer={self.layer!r}, name={self.name!r})"

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        if self.layer is not None:
            get_layer(model, self.layer)
        if issubclass(self.cls, (ModifiedReluGradientAttribution, LRP)):
            require_relu_modules(model, structure, self.cls.__name__)

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        if target is None:
            target = predicted_class(model, clips)
        args: tuple[Any, ...] = (model,) if self.layer is None else (model, get_layer(model, self.layer))
        method = self.cls(*args, **self.init_kwargs)
        result = method.attribute(clips, target=target.to(clips.device), **self.attribute_kwargs)
        if isinstance(result, tuple):  # (attributions, delta) or a 1-tuple of attributions
            result = result[0]
        if self.layer is not None and self.upsample is not None and result.dim() == 5:
            result = LayerAttribution.interpolate(result, tuple(clips.shape[2:]), interpolate_mode=self.upsample)
        return result
