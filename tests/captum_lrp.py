"""Deep Taylor Decomposition rules for ``captum.attr.LRP`` on plain 3-D CNNs: the test-only reference the propagation
engine (:mod:`motion_relevance.explain.propagation`, used by ``DeepTaylor``) is checked against on C3D. It lives in
tests/ because it builds on Captum's private ``captum.attr._utils.lrp_rules`` (the package never imports it).

Rules, set as ``module.rule`` on every leaf of the model (Captum 0.9 has no default rule for ``Conv3d``,
``AvgPool3d`` or ``Flatten``), from one table by module type:

=====================  =======================================================================
layer                  rule
=====================  =======================================================================
first Conv3d / Linear  zB (:class:`ZBRule`): ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z_j * R_j``
other Conv3d / Linear  z+ (``Alpha1_Beta0_Rule``, biases left out: ``z_j = sum_i a_i w+_ij``)
MaxPool3d              winner-take-all (``EpsilonRule``: relevance goes to the arg-max) or proportional
                       (:class:`ProportionalPoolRule`: ``R_i = a_i / sum_window a * R_j``)
AvgPool3d              proportional (``EpsilonRule`` on the average, which is the same thing)
Flatten, Identity,     pass-through (:class:`PassRule`)
Dropout3d
ReLU, Dropout          pass-through (Captum's own handling of non-linear layers)
=====================  =======================================================================

Captum starts from the target output (normalised to 1 while propagating, then multiplied by the target
logit), so the input relevance of a bias-free chain sums to the target logit. Captum runs the model twice (once
to record activations, once with the rules' hooks); it has no rule for BatchNorm3d, residual sums or gates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, PropagationRule
from torch import Tensor, nn

from motion_relevance.explain.bounds import zb_bounds_from_normalization
from motion_relevance.explain.rules import bound_like

__all__ = [
    "CAPTUM_RULES",
    "DTD_LAYER_TYPES",
    "PassRule",
    "ProportionalPoolRule",
    "ZBRule",
    "assign_dtd_rules",
    "zb_bounds_from_normalization",
]

_STABILITY = 1e-9

def zb_relevance(module: nn.Module, x: Tensor, relevance: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """zB rule through one Conv3d / Linear layer: input relevance ``(B, C_in, ...)`` from output relevance.

    ``R_i = x_i c_i - l_i c+_i - h_i c-_i`` with ``c = W^T s``, ``c± = (W±)^T s``, ``s = R / z`` and
    ``z = W x - W+ l - W- h`` (no bias); the three transposed products come from one autograd call on the
    layer's own convolution, so stride, padding, dilation and groups are handled exactly.
    """
    weight = module.weight.detach()
    if isinstance(module, nn.Conv3d):

        def layer(inp: Tensor, w: Tensor) -> Tensor:
            return module._conv_forward(inp, w, None)
    else:

        def layer(inp: Tensor, w: Tensor) -> Tensor:
            return F.linear(inp, w)

    with torch.enable_grad():
        xs = x.detach().requires_grad_(True)
        lo = bound_like(lower, x).contiguous().requires_grad_(True)
        hi = bound_like(upper, x).contiguous().requires_grad_(True)
        z = layer(xs, weight) - layer(lo, weight.clamp(min=0)) - layer(hi, weight.clamp(max=0))
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        s = relevance / (z.detach() + sign * _STABILITY)
        gx, gl, gh = torch.autograd.grad(z, (xs, lo, hi), grad_outputs=s)
    return (x.detach() * gx + lo.detach() * gl + hi.detach() * gh).detach()


class ZBRule(PropagationRule):
    """zB rule for the first layer (input in ``[lower, upper]``), as a Captum ``PropagationRule``.

    Captum's tensor hooks give the layer's output relevance ``R_j`` in the output hook; the rule computes the
    whole zB redistribution there (:func:`zb_relevance`) and hands it to the input hook, which replaces the
    gradient arriving at the layer input. Weights are not rewritten.
    """

    def __init__(self, lower: float | Sequence[float] | Tensor, upper: float | Sequence[float] | Tensor) -> None:
        self.lower = torch.as_tensor(lower, dtype=torch.float64).flatten()
        self.upper = torch.as_tensor(upper, dtype=torch.float64).flatten()
        self._x: Tensor | None = None
        self._module: nn.Module | None = None
        self._relevance_in: Tensor | None = None

    def _manipulate_weights(self, module, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        pass

    def forward_hook(self, module, inputs, outputs):  # type: ignore[no-untyped-def]
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        self._has_single_input = True
        self._handle_input_hooks = []
        self._x, self._module, self._relevance_in = x.detach(), module, None
        if not hasattr(x, "hook_registered"):
            self._handle_input_hooks.append(x.register_hook(self._input_hook))
            x.hook_registered = True
        self._handle_output_hook = outputs.register_hook(self._output_hook)
        return outputs.clone()

    def _output_hook(self, grad: Tensor) -> Tensor:
        self.relevance_output[grad.device] = grad.data
        assert self._x is not None and self._module is not None
        self._relevance_in = zb_relevance(self._module, self._x, grad, self.lower, self.upper)
        return grad

    def _input_hook(self, grad: Tensor) -> Tensor:
        relevance = self._relevance_in if self._relevance_in is not None else torch.zeros_like(grad)
        self.relevance_input[grad.device] = relevance.data
        self._x = self._relevance_in = None
        return relevance


class PassRule(PropagationRule):
    """Relevance passes unchanged (reshapes and identities: ``Flatten``, ``Identity``, ``Dropout3d`` in eval)."""

    def _manipulate_weights(self, module, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        pass

    def forward_hook(self, module, inputs, outputs):  # type: ignore[no-untyped-def]
        return None


class ProportionalPoolRule(PropagationRule):
    """Max-pooling that shares ``R_j`` among the window in proportion to the inputs: ``R_i = a_i / sum a * R_j``.

    The forward value stays the max (what the next layer saw); the backward path is the window *sum*, so the
    usual ``R = a * grad(R / z)`` with ``z = sum a`` gives the proportional split.
    """

    def _manipulate_weights(self, module, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        pass

    def forward_hook(self, module, inputs, outputs):  # type: ignore[no-untyped-def]
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        self._has_single_input = True
        self._handle_input_hooks = []
        if not hasattr(x, "hook_registered"):
            self._handle_input_hooks.append(x.register_hook(self._create_backward_hook_input(x.data)))
            x.hook_registered = True
        window_sum = F.avg_pool3d(
            x, module.kernel_size, module.stride, module.padding, module.ceil_mode, True, divisor_override=1
        )
        z = window_sum.detach()
        out = outputs.detach() + (window_sum - z)  # value: max; gradient: window sum

        def _output_hook(grad: Tensor) -> Tensor:
            self.relevance_output[grad.device] = grad.data
            sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
            return grad / (z + sign * _STABILITY)

        self._handle_output_hook = out.register_hook(_output_hook)
        return out


def _max_pool_rule(pooling: str) -> PropagationRule:
    return ProportionalPoolRule() if pooling == "proportional" else EpsilonRule(_STABILITY)


def _pass(pooling: str) -> PropagationRule:
    return PassRule()


def _z_plus(pooling: str) -> PropagationRule:
    return Alpha1_Beta0_Rule(set_bias_to_zero=True)


def _none(pooling: str) -> None:
    return None  # Captum's own pass-through for non-linear layers (it sets ``rule = None``)


def _average(pooling: str) -> PropagationRule:
    return EpsilonRule(_STABILITY)


#: Module type -> rule factory (argument: the pooling option); the zB rule of the first layer is set by name.
CAPTUM_RULES: dict[type[nn.Module], Callable[[str], PropagationRule | None]] = {
    nn.Conv3d: _z_plus,
    nn.Linear: _z_plus,
    nn.MaxPool3d: _max_pool_rule,
    nn.AvgPool3d: _average,
    nn.ReLU: _none,
    nn.Dropout: _none,
    nn.Flatten: _pass,
    nn.Dropout3d: _pass,
    nn.Identity: _pass,
}
#: Leaf module types the Captum reference handles.
DTD_LAYER_TYPES: tuple[type[nn.Module], ...] = tuple(CAPTUM_RULES)


def assign_dtd_rules(model: nn.Module, first_layer: str, lower: Tensor, upper: Tensor, pooling: str = "winner") -> None:
    """Set ``module.rule`` on every leaf of ``model`` (an explanation copy) for DTD; see the module table."""
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        if name == first_layer:
            module.rule = ZBRule(lower, upper)
        elif type(module) in CAPTUM_RULES:
            rule = CAPTUM_RULES[type(module)](pooling)
            if rule is not None:
                module.rule = rule
        else:
            raise TypeError(f"the Captum DTD reference has no rule for {name!r} ({type(module).__name__})")
