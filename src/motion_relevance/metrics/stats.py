"""The one torchmetrics base of every mean/std metric: per-clip values of named quantities → mean, std, count of
defined and of undefined clips, exact under DDP.

States (all ``dist_reduce_fx="sum"``, one row per quantity, optional trailing ``width`` for per-stage or per-step
values): ``total`` and ``total_sq`` (float64: the sum and the sum of squares of the defined values), ``n`` and
``n_undefined`` (int64). Summing them across processes gives exactly the one-process numbers.

Formula (one for every class): ``mean = total / n`` and the sample variance (ddof=1)
``var = (total_sq - total * mean) / (n - 1)``, clamped at 0, ``std = sqrt(var)``. The sums are float64, the values
reported are probabilities, ratios, correlations or milliseconds (magnitudes far below ``2**26``), so the
cancellation in ``total_sq - total * mean`` costs at most about ``n * 1e-16`` relative to ``total_sq``: far below the
float32 rounding the results are compared at. A shifted or Welford form would need a custom (non-sum) reduction
under DDP. ``mean`` is NaN without a defined value, ``std`` NaN with fewer than two. A value is *undefined* when it
is not finite or the class says so (e.g. an all-zero explanation for precision): counted, never averaged.

``compute()`` returns, for each quantity ``q``: ``{q}_mean``, ``{q}_std``, ``{q}_n``, ``{q}_n_undefined``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MeanStdMetric", "mean_std"]

STATS = ("mean", "std", "n", "n_undefined")


def mean_std(total: Tensor, total_sq: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise mean and sample std (ddof=1) from float64 sums and counts; NaN where too few values."""
    nf = n.double()
    nan = torch.full_like(total, float("nan"))
    mean = torch.where(n > 0, total / nf.clamp_min(1), nan)
    centred = total_sq - total * torch.where(n > 0, mean, torch.zeros_like(mean))
    var = (centred / (nf - 1).clamp_min(1)).clamp_min(0)
    return mean, torch.where(n > 1, var.sqrt(), nan)


class MeanStdMetric(Metric):
    """Base: per-clip values of the named ``quantities`` (axis 0 of every state, trailing shape ``width``) →
    mean, std, n, n_undefined (module docstring). Subclasses call :meth:`_accumulate` from ``update``."""

    full_state_update: ClassVar[bool] = False
    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    quantities: ClassVar[tuple[str, ...]] = ()

    total: Tensor
    total_sq: Tensor
    n: Tensor
    n_undefined: Tensor

    def __init__(self, width: tuple[int, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._add_moments("", (len(self.quantities), *width))
        #: with ``keep_last`` set, quantity -> the per-clip values of the last update (NaN where undefined; only
        #: for scalar quantities)
        self.keep_last = False
        self.last_values: dict[str, Tensor] = {}

    def _add_moments(self, prefix: str, shape: tuple[int, ...]) -> None:
        """Register the four sum states ``{prefix}total``, ``total_sq``, ``n``, ``n_undefined`` of ``shape``."""
        for name, dtype in (("total", torch.float64), ("total_sq", torch.float64), ("n", torch.long),
                            ("n_undefined", torch.long)):
            self.add_state(f"{prefix}{name}", torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")

    def _accumulate(self, quantity: str | int, values: Tensor, defined: Tensor | None = None, *,
                    prefix: str = "") -> None:
        """Add per-clip ``values`` ``(B, *width)`` to ``quantity`` (name or index); entries that are not finite or
        not ``defined`` (bool ``(B,)``) are counted as undefined. ``prefix`` picks a group of :meth:`_add_moments`
        (then ``quantity`` is ignored and the whole group is updated)."""
        total = getattr(self, f"{prefix}total")
        device = total.device
        v = torch.as_tensor(values).detach().to(device, torch.float64)
        ok = torch.isfinite(v)
        if defined is not None:
            ok &= torch.as_tensor(defined).to(device).bool().view(-1, *([1] * (v.dim() - 1)))
        v = torch.where(ok, v, torch.zeros_like(v))
        index: Any = ...
        if not prefix:
            index = quantity if isinstance(quantity, int) else self.quantities.index(quantity)
            if self.keep_last and v.dim() == 1:
                self.last_values[self.quantities[index]] = torch.where(ok, v, torch.nan).cpu()
        total[index] += v.sum(0)
        getattr(self, f"{prefix}total_sq")[index] += (v * v).sum(0)
        getattr(self, f"{prefix}n")[index] += ok.sum(0)
        getattr(self, f"{prefix}n_undefined")[index] += (~ok).sum(0)

    def _stats(self, prefix: str = "", names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """``{q}_mean/_std/_n/_n_undefined`` for every row ``q`` of a state group (default: the quantities)."""
        total, n = getattr(self, f"{prefix}total"), getattr(self, f"{prefix}n")
        mean, std = mean_std(total, getattr(self, f"{prefix}total_sq"), n)
        undefined = getattr(self, f"{prefix}n_undefined")
        out: dict[str, Tensor] = {}
        for i, q in enumerate(self.quantities if names is None else names):
            out[f"{q}_mean"], out[f"{q}_std"] = mean[i], std[i]
            out[f"{q}_n"], out[f"{q}_n_undefined"] = n[i].clone(), undefined[i].clone()
        return out

    def compute(self) -> dict[str, Tensor]:
        return self._stats()
