"""Canonizer: BatchNorm folded into the conv / linear layer whose output it normalises, on an explanation copy.

In eval mode ``BN(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and ``b' = (b - m) * g / sqrt(v + eps) +
beta`` (``m``, ``v`` the running mean and variance, ``g``, ``beta`` the affine parameters, per output channel), so
relevance rules see one layer with a bias instead of a normalisation they have no rule for. Which BatchNorm may be
folded is decided from a traced forward pass (:func:`motion_relevance.explain.tracing.analyse_model`): it must
normalise the output of a conv / linear layer that nothing else uses. ``docs/method.md`` ("Deep Taylor and LRP
through modern video networks") describes the method.

Folding keeps only the two per-channel vectors on the layer; the folded weight ``w'`` is formed when a rule needs it
(:func:`parameters`) and dropped afterwards, so the explanation never holds a second copy of the network's weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BATCHNORM_TYPES",
    "FOLDABLE_LAYERS",
    "LAYER_OPS",
    "affine",
    "conv_ops",
    "fold_batchnorm",
    "folded_parameters",
    "parameters",
    "stacked_with_positive",
]

#: Layer types a BatchNorm can be folded into (weight dimension 0 = output channels).
FOLDABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: BatchNorm types that are folded (channels in dimension 1, eval statistics).
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Conv type -> (its functional form, the transposed one).
LAYER_OPS: dict[type[nn.Module], tuple[Callable[..., Tensor], Callable[..., Tensor]]] = {
    nn.Conv1d: (F.conv1d, F.conv_transpose1d),
    nn.Conv2d: (F.conv2d, F.conv_transpose2d),
    nn.Conv3d: (F.conv3d, F.conv_transpose3d),
}
_FOLD = "_relevance_batchnorm_fold"  # (scale, shift) on a layer of the explanation copy


def lookup(table: Mapping[type, Any], module: nn.Module) -> Any:
    """``table``'s entry for ``type(module)``, or for the nearest base class whose ``forward`` the type inherits
    unchanged (a subclass that only changes ``__init__`` computes the same thing); None if there is none."""
    cls = type(module)
    for base in cls.__mro__:
        if base in table and (base is cls or getattr(cls, "forward", None) is getattr(base, "forward", None)):
            return table[base]
    return None


def conv_ops(module: nn.Module) -> tuple[Callable[..., Tensor], Callable[..., Tensor]] | None:
    """:data:`LAYER_OPS` of ``module``'s conv type (or of the base class whose ``forward`` it inherits)."""
    return lookup(LAYER_OPS, module)


def affine(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The conv / linear map of ``module`` with the given weight and bias."""
    ops = conv_ops(module)
    if ops is None:
        return F.linear(x, weight, bias)
    return ops[0](x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def _vectors(layer: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` per output unit: ``w' = w * scale``, ``b' = b * scale + shift``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} has no running statistics (track_running_stats=False): cannot fold")
    dtype = layer.weight.dtype
    scale = torch.rsqrt(bn.running_var.detach().to(dtype) + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.detach().to(dtype)
    shift = -bn.running_mean.detach().to(dtype) * scale
    if bn.affine:
        shift = shift + bn.bias.detach().to(dtype)
    return scale, shift


def _apply(weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    new_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    return new_weight, shift if bias is None else bias * scale + shift


def folded_parameters(layer: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(w', b')`` of ``layer`` with the eval-mode ``bn`` after it folded in (new tensors; nothing is modified)."""
    bias = layer.bias.detach() if getattr(layer, "bias", None) is not None else None
    return _apply(layer.weight.detach(), bias, *_vectors(layer, bn))


def parameters(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight and bias a rule uses: the layer's own, or with a folded BatchNorm applied (formed on demand)."""
    weight = module.weight.detach()
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    fold: Any = module.__dict__.get(_FOLD)
    return (weight, bias) if fold is None else _apply(weight, bias, *fold)


def stacked_with_positive(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``[w; max(w, 0)]`` stacked along the output units (the folded weight where a BatchNorm is folded), built in
    one buffer, and the bias a rule uses."""
    weight = module.weight.detach()
    rows = weight.shape[0]
    stacked = weight.new_empty((2 * rows, *weight.shape[1:]))
    fold: Any = module.__dict__.get(_FOLD)
    if fold is None:
        stacked[:rows].copy_(weight)
        bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    else:
        torch.mul(weight, fold[0].view(-1, *([1] * (weight.dim() - 1))), out=stacked[:rows])
        bias = fold[1] if module.bias is None else module.bias.detach() * fold[0] + fold[1]
    torch.clamp(stacked[:rows], min=0, out=stacked[rows:])
    return stacked, bias


def _identity(x: Tensor) -> Tensor:
    return x


def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> Callable[[], None]:
    """Fold ``bn`` into ``layer`` on these module objects (an explanation copy); returns the function that undoes it.

    ``layer`` keeps its parameters and gets the fold's per-channel ``(scale, shift)`` and a forward computing with
    :func:`parameters`; ``bn`` passes its input through.
    """
    if not isinstance(layer, FOLDABLE_LAYERS) or not isinstance(bn, BATCHNORM_TYPES):
        raise TypeError(f"cannot fold {type(bn).__name__} into {type(layer).__name__}")
    layer.__dict__[_FOLD] = _vectors(layer, bn)
    own_layer, own_bn = layer.__dict__.get("forward"), bn.__dict__.get("forward")

    def forward(x: Tensor) -> Tensor:
        return affine(layer, x, *parameters(layer))

    layer.forward = forward  # type: ignore[method-assign]
    bn.forward = _identity  # type: ignore[method-assign]

    def undo() -> None:
        layer.__dict__.pop(_FOLD, None)
        for module, own in ((layer, own_layer), (bn, own_bn)):
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own  # type: ignore[method-assign]

    return undo
