"""Explanations: DTD and AttnLRP (the propagation engine), Grad-CAM, Guided Backprop, Guided Grad-CAM, any Captum class.

Every explainer is built from plain keyword arguments (Hydra ``_target_``) and called as
``explainer(model, clips, target=None) -> relevance (B, C, T, H, W)``:

* ``clips`` is a tensor ``(B, C, T, H, W)``, or a list of such tensors with the same ``B`` for a multi-input model
  (SlowFast's ``[slow, fast]``, called as ``model([slow, fast])``); then the result is a tuple with one relevance
  tensor per input, of that input's shape (``C = 1`` for Grad-CAM maps);
* ``target=None`` explains the predicted class of each clip, an int or a tensor/sequence of ``B`` ints picks
  classes (e.g. ``target=labels``);
* the model is never modified: the explainer works on an eval-mode copy that shares the weights
  (:func:`motion_relevance.explain._copy.eval_copy`), so the caller's training flag, weights,
  ``requires_grad`` flags, ``.grad`` fields and hooks stay as they were, also when the call raises;
* every input check (clip shape/dtype/NaN, target range, layer names, ReLU modules, modules without a relevance
  rule, BatchNorm that cannot be folded) runs before any work, and raises ``ValueError`` / ``TypeError`` naming the
  problem and the fix;
* the result is detached, on the clips' device, and checked for NaN/Inf.

The methods and their rules are described in ``docs/method.md`` ("Deep Taylor and LRP through modern video
networks"; Grad-CAM's frame alignment there too).
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import LRP, Attribution, Deconvolution, LayerGradCam
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import Tensor, nn

from motion_relevance.checks import to_plain
from motion_relevance.explain._copy import TargetLogit, predicted_class
from motion_relevance.explain.base import Explainer
from motion_relevance.explain.bounds import zb_bounds_from_normalization
from motion_relevance.explain.propagation import Composite, Gradient, Rule, propagate
from motion_relevance.explain.rules import (
    ATTNLRP,
    DTD,
    DTD_PROPORTIONAL,
    PROPORTIONAL_POOLS,
    WEIGHTED_LAYERS,
    Fold,
    Gate,
    Pass,
    PositiveSplit,
    ZBox,
    ZPlus,
)
from motion_relevance.explain.transformer import TokenGradCAM
from motion_relevance.explain.validation import (
    ModelStructure,
    get_layer,
    require_relu_modules,
    require_rules,
)
from motion_relevance.models.layers import GateMul

__all__ = [
    "AttnLRP",
    "CaptumExplainer",
    "DeepTaylor",
    "Explainer",
    "GradCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "to_input_frames",
]

_UPSAMPLE_MODES = ("trilinear", "nearest", "area")


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
            f"{shape}; pick a Conv3d layer or block such as 'conv5b' or 'layer4' (for transformer blocks use "
            "motion_relevance.explain.transformer.TokenGradCAM)"
        )


def _check_upsample(mode: str) -> str:
    if mode not in _UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {mode!r}")
    return mode


def _layer_name(model: nn.Module, layer: str | None) -> str:
    """``layer``, else the model's ``explain_layer`` attribute (the one source of a model's default layer)."""
    if layer is not None:
        return layer
    default = getattr(model, "explain_layer", None)
    if not default:
        raise ValueError(f"layer=None but {type(model).__name__} has no explain_layer attribute; pass a module path "
                         "(explainer.layer=<name>, e.g. conv5b or layer4) or give the model class an explain_layer")
    return str(default)


def to_input_frames(maps: Tensor, size: Sequence[int], mode: str = "trilinear") -> Tensor:
    """Layer maps ``(B, C, T', H', W')`` -> ``(B, C, T, H, W)``, frame-aligned with the layer's stride.

    A layer of stride ``s = ceil(T / T')`` (per dimension) covers input frames ``[k s, (k + 1) s)`` with map cell
    ``k``. The map is upsampled by exactly ``s`` — ``"trilinear"`` (``align_corners=False``) puts cell ``k``'s value at
    the centre of its frames and interpolates linearly between cell centres (constant before the first and after
    the last centre), ``"nearest"`` / ``"area"`` repeat it over its frames — and cropped to ``T``. When ``T = s T'``
    (every layer of the models here on clips of the sizes they were built for) this is ``F.interpolate`` to
    ``(T, H, W)``; otherwise the plain resize would stretch the cells over the clip and shift late frames.
    """
    size = tuple(int(v) for v in size)
    cells = tuple(int(v) for v in maps.shape[2:])
    strides = tuple(max(1, math.ceil(n / c)) for n, c in zip(size, cells))
    full = tuple(s * c for s, c in zip(strides, cells))
    kwargs: dict[str, Any] = {"align_corners": False} if mode == "trilinear" else {}
    up = F.interpolate(maps, size=full, mode=mode, **kwargs)
    if full != size:
        up = up[(slice(None), slice(None), *(slice(0, n) for n in size))]
    return up


def _pathway(structure: ModelStructure, layer: str, inputs: tuple[Tensor, ...], index: int | None) -> int:
    """The input a layer's map is mapped back to: ``index``, else the only input the layer depends on, else (fused
    layers) among those with at least the layer's frame count the one with the fewest frames."""
    if index is not None:
        return index
    if len(inputs) == 1:
        return 0
    shape = structure.output_shapes[layer]
    assert shape is not None
    depends = sorted(structure.ancestry.get(layer) or range(len(inputs)))
    enough = [k for k in depends if inputs[k].shape[2] >= shape[2]] or depends
    return min(enough, key=lambda k: int(inputs[k].shape[2]))


class LayerMap:
    """Shared by Grad-CAM and Guided Grad-CAM: which layer, how its map reaches the input frames."""

    def __init__(self, layer: str | None, upsample: str, input_index: int | None) -> None:
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise TypeError(f"layer must be a module path such as 'conv5b' or 'layer4' (or None), got {layer!r}")
        if input_index is not None and (isinstance(input_index, bool) or not isinstance(input_index, int)
                                        or input_index < 0):
            raise ValueError(f"input_index must be a non-negative int or None, got {input_index!r}")
        self.layer, self.upsample, self.input_index = layer, _check_upsample(upsample), input_index

    def tokens(self, model: nn.Module, structure: ModelStructure) -> Explainer | None:
        """A :class:`~motion_relevance.explain.transformer.TokenGradCAM` of the layer when it outputs tokens
        ``(B, N, D)`` of a model that cuts clips into tubelets (a ``token_grid`` method), else None."""
        layer = _layer_name(model, self.layer)
        shape = structure.output_shapes.get(layer)
        if shape is None or len(shape) != 3 or not any(callable(getattr(m, "token_grid", None))
                                                       for m in model.modules()):
            return None
        return TokenGradCAM(layer=layer, upsample="nearest" if self.upsample == "area" else self.upsample)

    def validate(self, model: nn.Module, structure: ModelStructure, inputs: tuple[Tensor, ...], method: str) -> None:
        layer = _layer_name(model, self.layer)
        get_layer(model, layer)
        tokens = self.tokens(model, structure)
        if tokens is not None:
            tokens._validate(model, structure, inputs[0])
            return
        _check_single_use(structure, layer, method)
        if self.input_index is not None and self.input_index >= len(inputs):
            raise ValueError(f"input_index={self.input_index} but the model takes {len(inputs)} input(s)")

    def layer_name(self, model: nn.Module) -> str:
        """The module path explained: ``layer``, or the model's ``explain_layer``."""
        return _layer_name(model, self.layer)

    def mapped_input(self, structure: ModelStructure, layer: str, inputs: tuple[Tensor, ...]) -> int:
        """The input the map of ``layer`` is mapped back to: ``input_index``, else the layer's pathway."""
        return _pathway(structure, layer, inputs, self.input_index)

    def maps(self, model: nn.Module, forward: nn.Module, inputs: tuple[Tensor, ...], structure: ModelStructure
             ) -> tuple[Tensor, ...]:
        """Grad-CAM (ReLU on) of the layer, mapped to its input's frames; zeros for the other inputs."""
        layer = self.layer_name(model)
        cam = LayerGradCam(forward, get_layer(model, layer))
        maps = cam.attribute(inputs if structure.multi else inputs[0], relu_attributions=True)
        k = self.mapped_input(structure, layer, inputs)
        out = []
        for i, x in enumerate(inputs):
            if i == k:
                out.append(to_input_frames(maps, x.shape[2:], self.upsample))
            else:
                out.append(x.new_zeros(x.shape[0], maps.shape[1], *x.shape[2:]))
        return tuple(out)


class GradCAM(Explainer):
    """Grad-CAM (``captum.attr.LayerGradCam``) on ``layer``, ReLU on, mapped to the input frames; ``C = 1``.

    Args:
        layer: module path of a layer or block with a 5-D output (``"conv5b"``, ``"layer4"``, ``"blocks.4"``,
            ``"blocks.4.multipathway_blocks.1"``), or of a transformer block of a tubelet model (VideoMAE), whose
            tokens are explained as by :class:`~motion_relevance.explain.transformer.TokenGradCAM`; ``None`` = the
            model's ``explain_layer`` attribute (refused when it has none).
        upsample: ``"trilinear"`` (default; ``align_corners=False``), ``"nearest"`` or ``"area"``: see
            :func:`to_input_frames` (frame-aligned with the layer's stride).
        input_index: for a multi-input model, the input the map is mapped back to (default: the pathway the layer
            belongs to); the other inputs get zeros.
        name: metric-key name (default ``"gradcam"``).
    """

    name = "gradcam"
    multi_input = True

    def __init__(self, layer: str | None = None, upsample: str = "trilinear", input_index: int | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.layer_map = LayerMap(layer, upsample, input_index)
        self.layer, self.upsample, self.input_index = layer, upsample, input_index

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Any) -> None:
        self.layer_map.validate(model, structure, clips, "Grad-CAM")

    def _explain(self, model: nn.Module, clips: Any, target: Tensor | None, structure: ModelStructure) -> Any:
        tokens = self.layer_map.tokens(model, structure)
        if tokens is not None:
            return tokens._explain(model, clips[0], target, structure)
        return self.layer_map.maps(model, TargetLogit(model, target, structure.multi), clips, structure)


class GuidedBackprop(Explainer):
    """Guided Backprop (``captum.attr.GuidedBackprop``): the input gradient with negative gradients zeroed at
    every ReLU; ``C = 3``. Needs one non-in-place ``nn.ReLU`` module per place."""

    name = "gbp"
    multi_input = True

    def __init__(self, name: str | None = None, canonize: bool = True) -> None:
        super().__init__(name)
        self.canonize = bool(canonize)

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Any) -> None:
        require_relu_modules(model, structure, "Guided Backprop")

    def _explain(self, model: nn.Module, clips: Any, target: Tensor | None, structure: ModelStructure) -> Any:
        gbp = CaptumGuidedBackprop(TargetLogit(model, target, structure.multi))
        return gbp.attribute(clips if structure.multi else clips[0])


class GuidedGradCAM(Explainer):
    """Guided Grad-CAM: Guided Backprop times the Grad-CAM map of ``layer`` mapped to the input frames (as
    :class:`GradCAM`); ``C = 3``. For a multi-input model the inputs other than the layer's pathway get zeros."""

    name = "guided_gradcam"
    multi_input = True

    def __init__(self, layer: str | None = None, upsample: str = "trilinear", input_index: int | None = None,
                 name: str | None = None, canonize: bool = True) -> None:
        super().__init__(name)
        self.layer_map = LayerMap(layer, upsample, input_index)
        self.layer, self.upsample, self.input_index = layer, upsample, input_index
        self.canonize = bool(canonize)

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Any) -> None:
        self.layer_map.validate(model, structure, clips, "Guided Grad-CAM")
        require_relu_modules(model, structure, "Guided Grad-CAM")

    def _explain(self, model: nn.Module, clips: Any, target: Tensor | None, structure: ModelStructure) -> Any:
        forward = TargetLogit(model, target, structure.multi)  # one wrapper: both passes explain the same class
        tokens = self.layer_map.tokens(model, structure)
        cams = ((tokens._explain(model, clips[0], target, structure),) if tokens is not None
                else self.layer_map.maps(model, forward, clips, structure))
        gbp = CaptumGuidedBackprop(forward).attribute(clips if structure.multi else clips[0])
        gbp = gbp if isinstance(gbp, tuple) else (gbp,)
        return tuple(g * c for g, c in zip(gbp, cams))


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
    """Deep Taylor Decomposition by the propagation engine (:mod:`motion_relevance.explain.propagation`); ``C = 3``.

    z+ on hidden conv / linear layers (biases left out), zB on the first conv / linear layer of each input with the
    bounds ``[lower, upper]`` of the normalised input, ReLU / SiLU pass relevance through, max-pooling
    winner-take-all or proportional, average pooling proportional, BatchNorm folded into the conv before it,
    residual sums (``models.layers.Add``) split by positive parts, gates (``GateMul``) held constant (the full table:
    :mod:`motion_relevance.explain.rules`). One forward and one backward pass. Relevance starts from the target
    logit: it sums to that logit wherever every layer's denominator is positive (always for bias-free networks
    with inputs inside the bounds), and is non-negative when the logit is.

    Args:
        lower, upper: zB bounds (smallest / largest normalised pixel value), scalars or one value per input
            channel; see :func:`zb_bounds_from_normalization`.
        mean, std, scale: alternative to ``lower``/``upper``: the normalisation ``(frames / scale - mean) / std``
            the bounds are computed from (convenient in configs).
        pooling: ``"winner"`` (default; relevance to the arg-max) or ``"proportional"`` (in proportion to inputs).
        rules: extra ``{module type: Rule}`` entries for this explainer (see :mod:`.propagation`).
        name: metric-key name (default ``"dtd"``).
        canonize: rewrite a model whose forward uses functional activations, ``a + b`` or shared modules so each
            operation is a module (once per model; :mod:`.canonize_trace`); ``False`` refuses such models.

    Inputs outside ``[lower, upper]`` make zB terms negative; a warning says so.
    """

    name = "dtd"
    multi_input = True
    method = "DTD"

    def __init__(
        self,
        lower: float | Sequence[float] | None = None,
        upper: float | Sequence[float] | None = None,
        *,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        scale: float = 255.0,
        pooling: str = "winner",
        rules: Mapping[type[nn.Module], Rule] | None = None,
        name: str | None = None,
        canonize: bool = True,
    ) -> None:
        super().__init__(name)
        self.canonize = bool(canonize)
        cls = type(self).__name__
        if lower is None and upper is None and mean is not None and std is not None:
            lower, upper = zb_bounds_from_normalization(mean, std, scale)
        if lower is None or upper is None:
            raise ValueError(
                f"{cls} needs the zB bounds of the normalised input: pass lower= and upper= (see "
                "zb_bounds_from_normalization) or mean= and std= (and scale=) of the normalisation"
            )
        self.lower, self.upper = _as_bound(lower, "lower"), _as_bound(upper, "upper")
        if self.lower.numel() != self.upper.numel() and 1 not in (self.lower.numel(), self.upper.numel()):
            raise ValueError(
                f"{cls} lower ({self.lower.numel()} values) and upper ({self.upper.numel()} values) must "
                "have the same number of channels"
            )
        if not bool((self.lower < self.upper).all()):
            raise ValueError(f"{cls} needs lower < upper, got {self.lower.tolist()} / {self.upper.tolist()}")
        if pooling not in ("winner", "proportional"):
            raise ValueError(f"pooling must be 'winner' or 'proportional', got {pooling!r}")
        self.pooling = pooling
        self.composite = self._composite(pooling)
        if rules:
            self.composite = self.composite.with_rules(dict(rules))

    def _composite(self, pooling: str) -> Composite:
        return DTD if pooling == "winner" else DTD_PROPORTIONAL

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lower={self.lower.tolist()}, upper={self.upper.tolist()}, "
            f"pooling={self.pooling!r}, name={self.name!r})"
        )

    def _rules_by_name(self, model: nn.Module, structure: ModelStructure) -> dict[str, Rule]:
        """zB on the first layer of each input; for DTD, z+ keeping the output's sign on the layers whose negative
        outputs can receive relevance (through SiLU / GELU, see :func:`signed_layers`)."""
        by_name: dict[str, Rule] = {}
        if self.method == "DTD":
            key = ("dtd-layers", id(self.composite))  # a structural fact of the model: computed once per model
            cached = structure.derived.get(key)
            if cached is None or cached[0] is not self.composite:
                modules = dict(model.named_modules())
                plain = [n for n in structure.nonnegative_inputs if type(self.composite.rule_for(modules[n])) is ZPlus]
                cached = (self.composite, plain, signed_layers(model, structure, self.composite))
                structure.derived[key] = cached
            by_name.update(dict.fromkeys(cached[1], _KNOWN_NONNEGATIVE))
            by_name.update(dict.fromkeys(cached[2], _SIGNED))
        zb = ZBox(self.lower, self.upper)
        by_name.update({name: zb for k in range(structure.num_inputs) for name in structure.first_layers.get(k, [])})
        return by_name

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Any) -> None:
        require_relu_modules(model, structure, self.method)
        if not any(structure.first_layers.values()):
            raise ValueError(f"{self.method} found no Conv3d/Linear layer to apply the zB rule to")
        require_rules(model, structure, self.composite, self._rules_by_name(model, structure), self.method)
        for i, x in enumerate(clips):
            self._warn_out_of_bounds(x, "clips" if len(clips) == 1 else f"clips[{i}]")

    def _warn_out_of_bounds(self, clips: Tensor, what: str) -> None:
        per_channel = clips.transpose(0, 1).reshape(clips.shape[1], -1)
        lows, highs = per_channel.amin(1).double().cpu(), per_channel.amax(1).double().cpu()
        if bool((lows < self.lower - 1e-4).any()) or bool((highs > self.upper + 1e-4).any()):
            warnings.warn(
                f"{what} lie outside the zB bounds [{self.lower.tolist()}, {self.upper.tolist()}] (min "
                f"{lows.tolist()}, max {highs.tolist()}): {self.method} input relevance may turn negative; check the "
                "bounds against the data normalisation",
                stacklevel=4,
            )

    def _explain(self, model: nn.Module, clips: Any, target: Tensor | None, structure: ModelStructure) -> Any:
        relevance, _ = propagate(
            model, clips, self.composite, structure.leaf_order, target=target, folds=structure.bn_folds,
            overrides=self._rules_by_name(model, structure), multi=structure.multi, method=self.method,
        )
        return relevance


_KNOWN_NONNEGATIVE = ZPlus(nonnegative=True)  # z+ of layers after a ReLU: no sign check of the input
_SIGNED = ZPlus(signed=True)


def signed_layers(model: nn.Module, structure: ModelStructure, composite: Composite = DTD) -> list[str]:
    """Conv / linear layers whose negative outputs can receive relevance: those whose output reaches a SiLU / GELU
    (or anything else that may hand relevance to negative values) through folded BatchNorm, a gate's input or
    modules that route relevance unchanged, before a ReLU or a residual sum split by positive parts; consumers that
    carry no relevance (a gate's own branch) are ignored. They take ``ZPlus(signed=True)``; ReLU networks have
    none."""
    modules = dict(model.named_modules())
    relevant = _relevance_carriers(modules, structure)

    def reaches_signed(name: str, seen: set[str]) -> bool:
        for consumer, index in structure.consumers.get(name, []):
            if not consumer:
                return True  # a function in forward(): unknown
            if consumer not in relevant or consumer in seen:
                continue
            seen.add(consumer)
            module = modules[consumer]
            rule = composite.rule_for(module)
            if isinstance(rule, Gate) and index == 1:
                continue
            if isinstance(rule, (Gradient, Fold, Gate)):
                if reaches_signed(consumer, seen):
                    return True
            elif not (isinstance(rule, PositiveSplit) or (isinstance(rule, Pass) and isinstance(module, nn.ReLU))):
                return True
        return False

    return [n for n in dict.fromkeys(structure.leaf_order)
            if isinstance(modules[n], WEIGHTED_LAYERS) and n in relevant and reaches_signed(n, set())]


def _relevance_carriers(modules: dict[str, nn.Module], structure: ModelStructure) -> set[str]:
    """Leaves whose output can carry relevance: every leaf with a path to the logits that does not enter a gate
    (``GateMul``'s second input); all of them when the logits come from a function in forward()."""
    leaves = list(dict.fromkeys(structure.leaf_order))
    if structure.output_leaf is None:
        return set(leaves)
    feeds: dict[str, list[str]] = {}  # consumer -> the leaves whose output it takes (not as a gate)
    carriers = {structure.output_leaf}
    for name in leaves:
        for consumer, index in structure.consumers.get(name, []):
            if not consumer:
                carriers.add(name)  # used by a function in forward(): counted as carrying relevance
            elif not (isinstance(modules[consumer], GateMul) and index == 1):
                feeds.setdefault(consumer, []).append(name)
    todo = list(carriers)
    while todo:
        for name in feeds.get(todo.pop(), []):
            if name not in carriers:
                carriers.add(name)
                todo.append(name)
    return carriers


class AttnLRP(DeepTaylor):
    """AttnLRP (Achtibat et al., ICML 2024) for transformers by the propagation engine; ``C = 3``.

    Epsilon rule (1e-6) on linear layers and sums, zB on the first layer (the tubelet embedding) with the bounds
    ``[lower, upper]``, the softmax rule ``R_x = x (R - s sum R)``, products of two tensors (``models.layers.MatMul``)
    split uniformly, LayerNorm's normaliser held constant, GELU passing relevance through (the full table:
    :mod:`motion_relevance.explain.rules`). One forward and one backward pass. Biases, the softmax and the
    stabilisers absorb relevance, so the input relevance sums to the target logit only approximately.

    Args: as :class:`DeepTaylor` (``pooling`` applies to max-pooling layers, if the model has any).
    """

    name = "attnlrp"
    method = "AttnLRP"

    def _composite(self, pooling: str) -> Composite:
        return ATTNLRP if pooling == "winner" else ATTNLRP.with_rules(PROPORTIONAL_POOLS)


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
    Integrated Gradients run the model on other inputs than the clips. For a multi-input model the class receives
    the inputs as a tuple (Captum's convention) and the model is called with their list.
    """

    multi_input = True

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
        self.init_kwargs = to_plain(dict(init_kwargs or {}), keep_tensors=True)
        self.attribute_kwargs = to_plain(dict(attribute_kwargs or {}), keep_tensors=True)
        if "target" in self.attribute_kwargs:
            raise ValueError("pass target to the explainer call, not in attribute_kwargs")
        self.layer = layer
        self.upsample = None if upsample is None else _check_upsample(upsample)

    def __repr__(self) -> str:
        return f"CaptumExplainer(method={self.method!r}, layer={self.layer!r}, name={self.name!r})"

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Any) -> None:
        if self.layer is not None:
            get_layer(model, self.layer)
        if issubclass(self.cls, (CaptumGuidedBackprop, Deconvolution, LRP)):  # Captum's ReLU-replacing classes
            require_relu_modules(model, structure, self.cls.__name__)

    def _explain(self, model: nn.Module, clips: Any, target: Tensor | None, structure: ModelStructure) -> Any:
        if target is None:
            target = predicted_class(model, list(clips) if structure.multi else clips[0])
        forward = _Logits(model) if structure.multi else model
        args: tuple[Any, ...] = (forward,) if self.layer is None else (forward, get_layer(model, self.layer))
        method = self.cls(*args, **self.init_kwargs)
        result = method.attribute(clips if structure.multi else clips[0], target=target.to(clips[0].device),
                                  **self.attribute_kwargs)
        if self.attribute_kwargs.get("return_convergence_delta"):
            result = result[0]
        parts = result if isinstance(result, tuple) else (result,)
        if self.layer is not None and self.upsample is not None and parts[0].dim() == 5:
            k = _pathway(structure, self.layer, clips, None) if self.layer in structure.output_shapes else 0
            parts = tuple(to_input_frames(parts[0], x.shape[2:], self.upsample) if i == k
                          else x.new_zeros(x.shape[0], parts[0].shape[1], *x.shape[2:]) for i, x in enumerate(clips))
        return parts


class _Logits(nn.Module):
    """A multi-input model called with one tensor per input (Captum's convention): ``model([x1, x2, ...])``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *clips: Tensor) -> Tensor:
        return self.model(list(clips))
