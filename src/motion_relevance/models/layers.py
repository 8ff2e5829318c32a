"""Parameter-free layers that make a network's non-chain operations visible as modules.

Relevance propagation attaches one rule to each module (see ``docs/method.md``, "Deep Taylor and LRP through modern
video networks"): a residual sum written as ``x + f(x)`` inside ``forward()`` is invisible to it, an :class:`Add` module
is not. These modules hold no parameters or buffers, so adding them to a block never changes its ``state_dict()`` keys.

============  ================================  ====================================================
module        computes                          propagation rule (DTD / LRP)
============  ================================  ====================================================
``Add``       ``a + b`` (residual sum)          split by positive parts ``a+ / (a+ + b+)``
``GateMul``   ``x * gate`` (squeeze-excitation)  gate held constant, relevance flows through ``x``
``Concat``    ``torch.cat(xs, dim)``            relevance split back to the parts (identity)
``MatMul``    ``a @ b`` (two input-dependent)   uniform: half of the relevance to each factor
============  ================================  ====================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Add", "Concat", "GateMul", "MatMul"]


class Add(nn.Module):
    """Residual sum ``y = a + b`` of two tensors of the same (or broadcastable) shape."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class GateMul(nn.Module):
    """Multiplicative gate ``y = x * gate``; ``gate`` broadcasts over ``x`` (e.g. ``(B, C, 1, 1, 1)``)."""

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        return x * gate


class Concat(nn.Module):
    """Concatenation ``torch.cat(tensors, dim)`` (SlowFast's lateral fusion)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = int(dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, *tensors: Tensor) -> Tensor:
        return torch.cat(tensors, dim=self.dim)


class MatMul(nn.Module):
    """Product ``a @ b`` of two input-dependent tensors (attention's ``Q K^T`` and ``A V``)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a @ b
