"""Relevance rules of the propagation engine and the two composites built from them: ``DTD`` and ``ATTNLRP``.

``R`` is the relevance of a module's output, ``x`` its input, ``w+ = max(w, 0)``, ``w- = min(w, 0)``; a stabiliser
``eps`` is added with the sign of the denominator (``+eps`` at 0). Each rule returns ``x * (modified gradient)``.

============================  =================  ===========================================================
module type                   rule               input relevance
============================  =================  ===========================================================
Conv1d/2d/3d, Linear (DTD)    ZPlus              ``R_i = sum_j (x_i w_ij)+ / sum_i (x_i w_ij)+ R_j``, biases left
                                                 out (``x >= 0``: ``x w+``)
first Conv / Linear           ZBox ``[l, h]``    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z_j R_j``
Conv, Linear (AttnLRP)        Epsilon (1e-6)     ``R_i = x_i sum_j w_ij R_j / (z_j + eps)``, ``z`` with the bias
BatchNorm1d/2d/3d             Fold               folded into the conv / linear layer before it
ReLU, SiLU, GELU, Sigmoid,    Pass               ``R_x = R`` (identity)
transformers' GELU / SiLU
MaxPool1d/2d/3d               WinnerPool         all of ``R_j`` to the window's arg-max
                              ProportionalPool   ``R_i = x_i / sum_window x * R_j`` (option; 2-D / 3-D)
AvgPool*, AdaptiveAvgPool*,   Proportional       ``R_i = x_i / sum_window x * R_j`` (LRP-0 on a mean)
TokenPool
Flatten, Unflatten,           Gradient           relevance routed unchanged
Identity, Dropout*, Concat
Add ``a + b`` (DTD)           PositiveSplit      ``R_a = a+ / (a+ + b+) R`` (0 where both are <= 0)
Add (AttnLRP)                 EpsilonAdd         ``R_a = a / (a + b + eps) R``
GateMul ``x * gate``          Gate               ``R_x = R``; the gate is held constant and gets none
MatMul ``a @ b``              Uniform (1e-6)     half of the epsilon-LRP of ``a @ b`` to each factor
Softmax                       SoftmaxRule        ``R_x = x (R - s sum_dim R)``, ``s`` the softmax output
LayerNorm                     LayerNormRule      std held constant; the affine rest ``g (x - mean) / std + b``
                                                 by epsilon-LRP (1e-6)
============================  =================  ===========================================================

``docs/method.md`` ("Deep Taylor and LRP through modern video networks") explains each choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motion_relevance.explain.canonize import (
    BATCHNORM_TYPES,
    FOLDABLE_LAYERS,
    conv_ops,
    parameters,
    stacked_with_positive,
)
from motion_relevance.explain.propagation import Composite, Gradient, Rule, lookup, sum_to
from motion_relevance.models.layers import Add, Concat, GateMul, MatMul
from motion_relevance.models.videomae import TokenPool

__all__ = [
    "ATTNLRP",
    "DTD",
    "DTD_PROPORTIONAL",
    "PROPORTIONAL_POOLS",
    "SIGNED_ACTIVATIONS",
    "SIGNED_Z_PLUS",
    "Epsilon",
    "EpsilonAdd",
    "Fold",
    "Gate",
    "LayerNormRule",
    "Pass",
    "PositiveSplit",
    "Proportional",
    "ProportionalPool",
    "SoftmaxRule",
    "TRANSFORMERS_ACTIVATIONS",
    "Uniform",
    "WinnerPool",
    "ZBox",
    "ZPlus",
    "bound_like",
]

#: Layers with a weight the linear rules (z+, zB, epsilon) handle.
WEIGHTED_LAYERS = FOLDABLE_LAYERS

_MAX_POOL: dict[type[nn.Module], Callable[..., Any]] = {
    nn.MaxPool1d: F.max_pool1d,
    nn.MaxPool2d: F.max_pool2d,
    nn.MaxPool3d: F.max_pool3d,
}
_SUM_POOL: dict[type[nn.Module], Callable[..., Tensor]] = {nn.MaxPool2d: F.avg_pool2d, nn.MaxPool3d: F.avg_pool3d}


def _stab(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with sign(+0) = +1 (a new tensor)."""
    return torch.full_like(z, eps).copysign_(z).add_(z)


def _over(relevance: Tensor, z: Tensor, eps: float) -> Tensor:
    """``relevance / (z + eps * sign(z))``, computed in one new buffer."""
    den = _stab(z, eps)
    return torch.div(relevance, den, out=den) if den.shape == relevance.shape else relevance / den


def _divide(relevance: Tensor, z: Tensor, eps: float) -> Tensor:
    """``relevance / (z + eps)`` for ``z`` of the sign of ``eps`` (or 0), written into ``z``'s buffer (``z`` is a
    temporary of the caller's)."""
    return torch.div(relevance, z.add_(eps), out=z)


def _ratio(relevance: Tensor, z: Tensor, eps: float) -> Tensor:
    """``relevance / (z + eps sign(z))``, in ``z``'s buffer when ``z`` has one sign (no temporaries)."""
    if bool(z.amin() >= 0):
        return _divide(relevance, z, eps)
    return _over(relevance, z, eps)


def _conv_padding(module: nn.Module) -> tuple[int, ...] | None:
    """Symmetric integer padding of a conv (``'same'`` / ``'valid'`` resolved), or None if it has none."""
    pad = module.padding
    if pad == "valid":
        return (0,) * len(module.kernel_size)
    if pad == "same":
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return tuple(pad)


def _check_weighted(module: nn.Module) -> str | None:
    if not isinstance(module, WEIGHTED_LAYERS):
        return f"the rule needs a {'/'.join(t.__name__ for t in WEIGHTED_LAYERS)} layer"
    if conv_ops(module) is not None:
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} is not supported (zero padding only)"
        if _conv_padding(module) is None:
            return "padding='same' with an even kernel (asymmetric padding) is not supported"
    return None


def _linear(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's map with ``weight`` and no bias."""
    ops = conv_ops(module)
    if ops is not None:
        conv = ops[0]
        return conv(x, weight, None, module.stride, module.padding, module.dilation, module.groups)
    return F.linear(x, weight)


def _transpose(module: nn.Module, s: Tensor, shape: Sequence[int], weight: Tensor) -> Tensor:
    """``W^T s``: the gradient of :func:`_linear` at an input of ``shape`` for output gradient ``s``."""
    ops = conv_ops(module)
    if ops is not None:
        padding = _conv_padding(module)
        assert padding is not None
        extra = tuple(  # output_padding: the input positions a strided conv's last window did not reach
            int(n) - ((int(o) - 1) * st - 2 * p + d * (k - 1) + 1)
            for n, o, st, p, d, k in zip(shape[2:], s.shape[2:], module.stride, padding, module.dilation,
                                         module.kernel_size)
        )
        if _is_patchify(module, padding, extra):
            return _unpatchify(s, weight)
        return ops[1](s, weight, None, module.stride, padding, extra, module.groups, module.dilation)
    return s @ weight


def _is_patchify(module: nn.Module, padding: Sequence[int], extra: Sequence[int]) -> bool:
    """A conv that cuts its input into non-overlapping patches (kernel = stride, no padding): a tubelet embedding."""
    return (module.groups == 1 and tuple(module.kernel_size) == tuple(module.stride) and not any(padding)
            and not any(extra) and all(d == 1 for d in module.dilation))


def _unpatchify(s: Tensor, weight: Tensor) -> Tensor:
    """``W^T s`` of a patch embedding as one matrix product: per patch, ``(C_out) -> (C_in * kernel)``."""
    batch, out_channels, *grid = s.shape
    kernel = weight.shape[2:]
    patches = s.flatten(2).transpose(1, 2) @ weight.reshape(out_channels, -1)  # (B, patches, C_in * prod(kernel))
    d = len(grid)
    patches = patches.view(batch, *grid, weight.shape[1], *kernel)
    order = [0, d + 1] + [i for j in range(d) for i in (1 + j, d + 2 + j)]  # (B, C, g_0, k_0, g_1, k_1, ...)
    return patches.permute(order).reshape(batch, weight.shape[1], *(g * k for g, k in zip(grid, kernel)))


_BLOCK_BYTES = 4 * 2**20  # weights above 16 of these are used block by block (rows = output units)


def _row_blocks(module: nn.Module, weight: Tensor) -> list[slice]:
    """Slices of output units so that a modified copy of each block of ``weight`` stays small (C3D's fc6: 128 MiB)."""
    rows = int(weight.shape[0])
    per_row = weight[0].numel() * weight.element_size()
    if getattr(module, "groups", 1) != 1 or rows * per_row <= 16 * _BLOCK_BYTES:
        return [slice(0, rows)]
    step = max(1, _BLOCK_BYTES // per_row)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _stackable(module: nn.Module, weight: Tensor) -> bool:
    """z+ can be computed with the forward pass (one call on ``[W; W+]``): ungrouped, weight of at most 16 MiB (the
    stacked copy is a transient of twice that)."""
    return getattr(module, "groups", 1) == 1 and weight.numel() * weight.element_size() <= 4 * _BLOCK_BYTES


def _channel_shape(module: nn.Module, out: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-output-unit vector over ``out`` (units in dim -1 for Linear, 1 for convs)."""
    return (-1,) if isinstance(module, nn.Linear) else (-1, *([1] * (out.dim() - 2)))


def _vjp(fn: Callable[[Tensor], Tensor], x: Tensor, s: Tensor) -> Tensor:
    """Gradient of ``fn`` at ``x`` for output gradient ``s`` (``fn`` is run once more, with autograd)."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(xx), xx, s)
    return grad


def bound_like(value: Tensor, like: Tensor) -> Tensor:
    """A scalar or per-channel (dim 1) bound broadcast to ``like``'s shape, dtype and device."""
    value = value.to(dtype=like.dtype, device=like.device)
    if value.numel() == 1:
        return value.reshape(()).expand_as(like)
    return value.view(1, -1, *([1] * (like.dim() - 2))).expand_as(like)


def _single(args: tuple[Any, ...], what: str) -> Tensor:
    if len(args) != 1 or not isinstance(args[0], Tensor):
        raise TypeError(f"the {what} rule takes modules called with one tensor, got {len(args)} arguments")
    return args[0]


# --------------------------------------------------------------------------------------------- layers


class ZPlus(Rule):
    """z+ (Deep Taylor's rule for ReLU-layer inputs, LRP-alpha1-beta0): positive contributions only, biases out.

    ``R_i = sum_j (x_i w_ij)+ / sum_i (x_i w_ij)+ R_j``: for inputs ``x >= 0`` (after a ReLU) this is
    ``x_i (W+^T (R / (W+ x)))_i``; inputs with negative entries (a conv right after the first layer) use the positive
    products of both signs, ``(x+ w+) + (x- w-)``. Relevance is non-negative where ``R`` is, and sums to ``R``
    wherever the denominator is positive: for a ReLU network without biases, everywhere.

    ``signed=True`` (networks whose activations pass relevance through negative values, SiLU / GELU): an output
    ``j`` that was negative in the forward pass takes the products of its sign, ``(x_i w_ij)-``, instead (the
    mirror of z+); so relevance that reaches a negatively activated unit is explained by the inputs that made it
    negative, and conservation holds for such units too. The forward pass then keeps the output's sign (one byte
    per output value).

    Without ``signed``, for inputs ``x >= 0`` and weights up to 16 MiB, the forward pass computes the output and
    ``W+ x`` in one layer call on the stacked weights ``[W; W+]`` and keeps ``W+ x`` (one output-sized tensor), so
    the backward pass needs one transposed product only; otherwise ``W+ x`` is computed in the backward pass.
    """

    def __init__(self, stabilizer: float = 1e-9, signed: bool = False, nonnegative: bool = False) -> None:
        self.stabilizer = float(stabilizer)
        self.signed = bool(signed)
        self.nonnegative = bool(nonnegative)  # inputs known to be >= 0 (from the model's structure): no check

    @property
    def name(self) -> str:  # type: ignore[override]
        return "z+ (biases left out" + (", negative outputs by z-)" if self.signed else ")")

    def __repr__(self) -> str:
        return f"ZPlus(signed={self.signed}, nonnegative={self.nonnegative})"

    def check(self, module: nn.Module) -> str | None:
        return _check_weighted(module)

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x = _single(args, "z+")
        raw = module.weight
        if not self.signed and _stackable(module, raw) and (self.nonnegative or bool(x.amin() >= 0)):
            # the output and z+ = W+ x from one layer call on the stacked weights [W; W+]; z+ is kept
            rows = raw.shape[0]
            stacked, bias = stacked_with_positive(module)
            both = _linear(module, x, stacked)
            del stacked
            dim = -1 if isinstance(module, nn.Linear) else 1
            out, z_plus = both.split(rows, dim)
            out = out.contiguous() if bias is None else out + bias.view(_channel_shape(module, out))
            return out, (x, None, z_plus.clone())
        out = forward(x)
        return out, (x, out < 0 if self.signed else None, None)

    def _share(self, module: nn.Module, x: Tensor, relevance: Tensor, positive: bool) -> Tensor:
        """``x * W^T (R / z)`` over the products ``(x w)+`` (``positive``) or ``(x w)-``, ``z`` their sum; large
        weights are processed in blocks of output units, so no full copy of ``w+`` is held."""
        eps = self.stabilizer if positive else -self.stabilizer
        weight = parameters(module)[0]
        nonnegative = self.nonnegative or bool(x.amin() >= 0)
        if not nonnegative:
            xp = x.clamp(min=0)
            xn = x - xp
        grad_p: Tensor | None = None
        grad_n: Tensor | None = None
        for rows in _row_blocks(module, weight):
            w = weight[rows]
            wa = w.clamp(min=0) if positive else w.clamp(max=0)  # pairs with x+
            r = relevance[..., rows] if isinstance(module, nn.Linear) else relevance[:, rows]
            if nonnegative:
                s = _divide(r, _linear(module, x, wa), eps)
                part = _transpose(module, s, x.shape, wa)
                grad_p = part if grad_p is None else grad_p.add_(part)
                continue
            wb = w - wa  # pairs with x-
            s = _divide(r, _linear(module, xp, wa).add_(_linear(module, xn, wb)), eps)
            part_p, part_n = _transpose(module, s, x.shape, wa), _transpose(module, s, x.shape, wb)
            grad_p = part_p if grad_p is None else grad_p.add_(part_p)
            grad_n = part_n if grad_n is None else grad_n.add_(part_n)
        assert grad_p is not None
        if nonnegative:
            return grad_p.mul_(x)
        assert grad_n is not None
        return grad_p.mul_(xp).add_(grad_n.mul_(xn))

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        x, negative, z_plus = saved
        if z_plus is not None:  # from the forward pass: x >= 0, so R_i = x_i (W+^T (R / z+))_i
            s = _divide(relevance, z_plus, self.stabilizer)
            return (_transpose(module, s, x.shape, parameters(module)[0].clamp(min=0)).mul_(x),)
        if negative is None or not bool(negative.any()):
            return (self._share(module, x, relevance, True),)
        below = relevance * negative
        result = self._share(module, x, relevance - below, True)
        if bool(below.any()):
            result = result.add_(self._share(module, x, below, False))
        return (result,)


def _valid_taps(n: int, out: int, kernel: int, stride: int, padding: int, dilation: int, like: Tensor) -> Tensor:
    """``(out, kernel)`` mask: output position ``o``'s tap ``j`` reads an input inside ``[0, n)`` (not padding)."""
    o = torch.arange(out, device=like.device).view(-1, 1)
    j = torch.arange(kernel, device=like.device).view(1, -1)
    i = o * stride - padding + j * dilation
    return ((i >= 0) & (i < n)).to(like.dtype)


def _bound_map(module: nn.Module, x: Tensor, out: Tensor, wp: Tensor, wn: Tensor, lower: Tensor, upper: Tensor
               ) -> Tensor:
    """``W+ l + W- h`` for images that are ``l`` / ``h`` everywhere (zero padding outside), shaped like one sample
    of the output: per output unit, the taps that fall inside the image, contracted one dimension at a time."""
    lo = bound_like(lower, x[:1]).reshape(x.shape[1], -1)[:, :1].flatten()
    hi = bound_like(upper, x[:1]).reshape(x.shape[1], -1)[:, :1].flatten()
    if isinstance(module, nn.Linear):
        return (wp @ lo.expand(wp.shape[1]) + wn @ hi.expand(wn.shape[1])).view(*([1] * (out.dim() - 1)), -1)
    taps = torch.einsum("jc...,c->j...", wp, lo) + torch.einsum("jc...,c->j...", wn, hi)  # (C_out, k_1, ..., k_d)
    padding = _conv_padding(module)
    assert padding is not None
    for dim in range(taps.dim() - 1):  # replace kernel dim (1 + dim) by output dim, in place order
        mask = _valid_taps(x.shape[2 + dim], out.shape[2 + dim], module.kernel_size[dim], module.stride[dim],
                           padding[dim], module.dilation[dim], taps)
        taps = torch.movedim(torch.tensordot(taps, mask, dims=([1 + dim], [1])), -1, 1 + dim)
    return taps.unsqueeze(0)


class ZBox(Rule):
    """zB for the first layer, whose input lies in ``[lower, upper]`` (scalars or one value per input channel).

    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z_j R_j`` with ``z_j`` the sum over ``i`` of the numerator;
    biases left out. Non-negative for inputs inside the bounds. The backward pass needs the layer's output (kept
    from the forward pass), the bound terms (computed in closed form, nearly free) and two transposed products.
    """

    name = "zB (bounded input)"

    def __init__(self, lower: float | Sequence[float] | Tensor, upper: float | Sequence[float] | Tensor,
                 stabilizer: float = 1e-9) -> None:
        self.lower = torch.as_tensor(lower, dtype=torch.float64).flatten()
        self.upper = torch.as_tensor(upper, dtype=torch.float64).flatten()
        self.stabilizer = float(stabilizer)

    def __repr__(self) -> str:
        return f"ZBox(lower={self.lower.tolist()}, upper={self.upper.tolist()})"

    def check(self, module: nn.Module) -> str | None:
        problem = _check_weighted(module)
        if problem:
            return problem
        if getattr(module, "groups", 1) != 1:
            return "the zB rule needs a first layer without groups"
        channels = module.weight.shape[1]  # (input channels per group; groups = 1 here)
        for bound in (self.lower, self.upper):
            if bound.numel() not in (1, channels) or (bound.numel() > 1 and isinstance(module, nn.Linear)):
                return (f"the zB bounds have {bound.numel()} values but the layer takes {channels} input channels; "
                        "give one value per channel (Conv) or a scalar")
        return None

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x = _single(args, "zB")
        out = forward(x)
        return out, (x, out)

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        x, out = saved
        weight, bias = parameters(module)
        wp = weight.clamp(min=0)
        wn = weight - wp
        offset = _bound_map(module, x, out, wp, wn, self.lower, self.upper)  # z = W x - (W+ l + W- h)
        if bias is not None:
            offset = offset + bias.view(_channel_shape(module, out))
        s = _ratio(relevance, out - offset, self.stabilizer)
        c, cp = _transpose(module, s, x.shape, weight), _transpose(module, s, x.shape, wp)
        lo, hi = bound_like(self.lower, x), bound_like(self.upper, x)
        return (c.mul_(x - hi).add_(cp.mul_(hi - lo)),)  # x c - l c+ - h c- with c- = c - c+


class _WithEpsilon(Rule):
    """A rule with a stabiliser ``epsilon``; its name is :attr:`label` with the value filled in."""

    label = "epsilon ({:g})"

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label.format(self.epsilon)


class _TwoInputs(_WithEpsilon):
    """A rule of ``y = f(a, b)`` (a sum, a product) that keeps both inputs and the output for its backward pass."""

    what = "sum"

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        a, b = _two(args, self.what)
        self.check_factors(a, b)
        out = forward(a, b)
        return out, (a, b, out)

    def check_factors(self, a: Tensor, b: Tensor) -> None:
        """Raise where the rule does not apply to these factors (nothing to check by default)."""


class Epsilon(_WithEpsilon):
    """LRP-epsilon on a layer affine in its input: ``R_i = x_i sum_j J_ji R_j / (y_j + eps)``, ``y`` the output
    with its bias (which absorbs a share of the relevance), ``J`` the layer's matrix."""

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x = _single(args, self.name)
        out = forward(x)
        return out, (x, out, forward)

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        x, out, forward = saved
        s = _over(relevance, out, self.epsilon)
        if isinstance(module, WEIGHTED_LAYERS):
            return (_transpose(module, s, x.shape, parameters(module)[0]).mul_(x),)
        return (_vjp(forward, x, s).mul_(x),)


class Proportional(Epsilon):
    """Average pooling (also adaptive / global, and a mean over tokens): each input gets its share of the window's
    sum, ``R_i = x_i / sum_window x * R_j`` (LRP-0 on the mean, stabiliser 1e-9)."""

    label = "proportional"

    def __init__(self, epsilon: float = 1e-9) -> None:
        super().__init__(epsilon)


# ---------------------------------------------------------------------------------------------- pooling


def _check_max_pool(module: nn.Module) -> str | None:
    if getattr(module, "return_indices", False):
        return "max-pooling with return_indices=True is not supported"
    return None


class WinnerPool(Rule):
    """Max-pooling, winner-take-all: all of ``R_j`` goes to the arg-max of window ``j`` (only the indices are kept
    for the backward pass; overlapping windows add up)."""

    name = "winner-take-all"

    def check(self, module: nn.Module) -> str | None:
        return _check_max_pool(module)

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x = _single(args, "max-pool")
        pool = lookup(_MAX_POOL, module)
        out, indices = pool(x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode,
                            return_indices=True)
        return out, (indices, tuple(x.shape))

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        indices, shape = saved
        flat = relevance.new_zeros(shape[0], shape[1], int(torch.Size(shape[2:]).numel()))
        flat.scatter_add_(2, indices.flatten(2), relevance.flatten(2))
        return (flat.view(shape),)


class ProportionalPool(Rule):
    """Max-pooling shared in proportion to the inputs: ``R_i = x_i / sum_window x * R_j`` (2-D / 3-D, no
    dilation). The forward value stays the max, what the next layer saw."""

    name = "proportional"

    def __init__(self, stabilizer: float = 1e-9) -> None:
        self.stabilizer = float(stabilizer)

    def check(self, module: nn.Module) -> str | None:
        if lookup(_SUM_POOL, module) is None:
            return "proportional max-pooling supports MaxPool2d / MaxPool3d only"
        dilation = module.dilation if isinstance(module.dilation, tuple) else (module.dilation,)
        if any(d != 1 for d in dilation):
            return "proportional max-pooling does not support dilation"
        return _check_max_pool(module)

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x = _single(args, "max-pool")
        return forward(x), (x,)

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        (x,) = saved
        pool = lookup(_SUM_POOL, module)

        def window_sum(t: Tensor) -> Tensor:
            return pool(t, module.kernel_size, module.stride, module.padding, module.ceil_mode, True,
                        divisor_override=1)

        s = _over(relevance, window_sum(x), self.stabilizer)
        return (_vjp(window_sum, x, s).mul_(x),)


# ----------------------------------------------------------------------------------- element-wise, structure


class Pass(Rule):
    """Element-wise activation: relevance passes unchanged (identity rule; nothing is kept for the backward)."""

    name = "identity"

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        return forward(_single(args, "identity")), ()

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        return (relevance,)


class Fold(Rule):
    """BatchNorm: folded into the conv / linear layer before it (:mod:`motion_relevance.explain.canonize`)."""

    name = "folded into the layer before it"
    wraps = False
    folds = True


class Gate(Rule):
    """``y = x * gate`` (squeeze-excitation): the gate is held constant, all relevance flows to ``x``."""

    name = "gate held constant"

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x, gate = args
        return forward(x, gate), (tuple(x.shape),)

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        (shape,) = saved
        return (sum_to(relevance, shape), None)


def _two(args: tuple[Any, ...], what: str) -> tuple[Tensor, Tensor]:
    if len(args) != 2 or not all(isinstance(a, Tensor) for a in args):
        raise TypeError(f"the {what} rule takes modules called with two tensors")
    return args[0], args[1]


class PositiveSplit(Rule):
    """Residual sum ``y = a + b``: ``R_a = a+ / (a+ + b+) R``, ``R_b = b+ / (a+ + b+) R`` (0 where
    ``a+ + b+ = 0``); conserves relevance wherever ``y > 0``."""

    name = "split by positive parts"

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        a, b = _two(args, "residual-sum")
        return forward(a, b), (a, b)

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        a, b = saved
        ap, bp = a.clamp(min=0), b.clamp(min=0)
        # where a+ + b+ = 0 both shares are 0 / tiny = 0: the rule's "0 where the denominator is 0"
        den = torch.add(ap, bp).clamp_(min=torch.finfo(ap.dtype).tiny)
        if a.shape == b.shape == relevance.shape:  # in place: no temporaries
            return ap.div_(den).mul_(relevance), bp.div_(den).mul_(relevance)
        return sum_to(ap / den * relevance, a.shape), sum_to(bp / den * relevance, b.shape)


class EpsilonAdd(_TwoInputs):
    """Sum ``y = a + b`` by epsilon-LRP (AttnLRP's rule): ``R_a = a / (y + eps) R``, ``R_b = b / (y + eps) R``."""

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        a, b, out = saved
        share = _over(relevance, out, self.epsilon)
        return sum_to(share * a, a.shape), sum_to(share * b, b.shape)


# -------------------------------------------------------------------------------------------- attention


class Uniform(_TwoInputs):
    """Product of two input-dependent tensors ``y = a @ b`` (attention's ``Q K^T``, ``A V``): epsilon-LRP of the
    bilinear map, half of it to each factor: ``R_a = a * ((R / (2y + eps)) @ b^T)``,
    ``R_b = b * (a^T @ (R / (2y + eps)))`` (AttnLRP's uniform rule, as in LXT)."""

    label = "uniform (half to each factor, epsilon {:g})"
    what = "matmul"

    def check_factors(self, a: Tensor, b: Tensor) -> None:
        if a.dim() < 2 or b.dim() < 2:
            raise TypeError("the uniform rule needs matrix products (both factors at least 2-D)")

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        a, b, out = saved
        s = _over(relevance, out, self.epsilon / 2).mul_(0.5)  # R / (2 y + eps)
        return (sum_to((s @ b.transpose(-1, -2)).mul_(a), a.shape),
                sum_to((a.transpose(-1, -2) @ s).mul_(b), b.shape))


class SoftmaxRule(Rule):
    """Softmax ``s = softmax(x)`` along ``module.dim``: ``R_x = x * (R - s * sum_dim R)`` (AttnLRP, Proposition
    3.1: Deep Taylor decomposition at ``x``, the bias term dropped); ``-inf`` inputs (masked positions) count as 0."""

    name = "softmax (x (R - s sum R))"

    def check(self, module: nn.Module) -> str | None:
        return "nn.Softmax needs an explicit dim" if getattr(module, "dim", None) is None else None

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x = _single(args, "softmax")
        out = forward(x)
        return out, (x, out)

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        x, s = saved
        x = torch.where(torch.isneginf(x), torch.zeros_like(x), x)
        return (x * (relevance - s * relevance.sum(module.dim, keepdim=True)),)


class LayerNormRule(_WithEpsilon):
    """LayerNorm with its normaliser held constant: ``y = g (x - mean) / std + beta`` with ``std`` a constant is
    affine in ``x`` and takes epsilon-LRP (``beta`` absorbs its share): ``R_x = x * J^T (R / (y + eps))``. This equals
    AttnLRP's identity rule through ``1 / std`` and through ``g``, with epsilon rules on the centring and on
    ``+ beta`` (LXT's ``layer_norm``)."""

    label = "normaliser held constant, epsilon ({:g})"

    def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
        x = _single(args, "LayerNorm")
        out = forward(x)
        return out, (x, out)

    def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        x, out = saved
        dims = tuple(range(-len(module.normalized_shape), 0))
        std = (x.var(dim=dims, correction=0, keepdim=True) + module.eps).sqrt_()
        # J^T v for y = g (x - mean) / std with std constant: (g v - mean(g v)) / std
        u = _over(relevance, out, self.epsilon)
        if module.weight is not None:
            u.mul_(module.weight.detach())
        u.sub_(u.mean(dims, keepdim=True)).div_(std)
        return (u.mul_(x),)


# -------------------------------------------------------------------------------------------- composites

PASS, GRADIENT, FOLD = Pass(), Gradient(), Fold()
#: Activations whose negative outputs pass relevance (identity rule): with them, z+ keeps the output's sign.
SIGNED_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.SiLU, nn.GELU)
#: ``ZPlus(signed=True)`` on every conv / linear layer.
SIGNED_Z_PLUS: dict[type[nn.Module], Rule] = {t: ZPlus(signed=True) for t in WEIGHTED_LAYERS}

_SHARED: dict[type[nn.Module], Rule] = {
    **{t: PASS for t in (nn.ReLU, nn.SiLU, nn.GELU, nn.Sigmoid)},
    **{t: GRADIENT for t in (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                             nn.Dropout3d, Concat)},
    **{t: WinnerPool() for t in _MAX_POOL},
    **{t: Proportional() for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                                   nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, TokenPool)},
    **{t: FOLD for t in BATCHNORM_TYPES},
    GateMul: Gate(),
    MatMul: Uniform(1e-6),
    nn.Softmax: SoftmaxRule(),
    nn.LayerNorm: LayerNormRule(1e-6),
}

#: transformers' element-wise activation classes (``transformers.activations``), looked up by name so that nothing
#: here imports transformers: relevance passes through them as through ``nn.GELU``.
TRANSFORMERS_ACTIVATIONS: dict[str, Rule] = {
    f"transformers.activations.{name}": PASS
    for name in ("GELUActivation", "NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation",
                 "QuickGELUActivation", "AccurateGELUActivation", "SiLUActivation", "MishActivation")
}

#: Deep Taylor decomposition for CNNs: z+ on every conv / linear layer (zB on the first one is set per explainer),
#: residual sums split by positive parts, max-pooling winner-take-all. (``DeepTaylor`` uses ``ZPlus(signed=True)``
#: in networks with SiLU / GELU activations, see :data:`SIGNED_ACTIVATIONS`.)
DTD = Composite("dtd", {**_SHARED, **{t: ZPlus() for t in WEIGHTED_LAYERS}, Add: PositiveSplit()},
                TRANSFORMERS_ACTIVATIONS)
#: Max-pooling shared in proportion to the inputs (the ``pooling="proportional"`` option).
PROPORTIONAL_POOLS: dict[type[nn.Module], Rule] = {t: ProportionalPool() for t in _SUM_POOL}
#: DTD with max-pooling shared in proportion to the inputs.
DTD_PROPORTIONAL = DTD.with_rules(PROPORTIONAL_POOLS)
#: AttnLRP (Achtibat et al., 2024) for transformers: epsilon on linear layers and sums, uniform products, the
#: softmax and LayerNorm rules (zB on the tubelet embedding is set per explainer).
ATTNLRP = Composite("attnlrp", {**_SHARED, **{t: Epsilon(1e-6) for t in WEIGHTED_LAYERS}, Add: EpsilonAdd(1e-6)},
                    TRANSFORMERS_ACTIVATIONS)
