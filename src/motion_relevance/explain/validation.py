"""Input and model checks for the explainers; every check runs before any hook is attached.

Model structure is found by one no-grad forward pass of one clip through a weight-sharing eval copy of the
model, with forward hooks on the copy's modules and a ``TorchFunctionMode`` that records ReLU-like
functions called outside an ``nn.ReLU`` module. Results are cached per model object, input shape and module
layout. (A ``meta``-device trace would cost no arithmetic, but its first use costs over a second of
one-off initialisation per process.)

Limits of the functional-ReLU detection: it sees calls through ``torch`` / ``torch.nn.functional`` /
``Tensor`` methods (``relu``, ``relu_``, ``relu6``, ``leaky_relu``, ``hardtanh``, ``threshold``, ``elu``, ``gelu``,
``silu``); a ReLU spelled as ``x.clamp(min=0)`` or ``x * (x > 0)`` is not recognised.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from motion_relevance.explain._copy import eval_copy

__all__ = [
    "ModelStructure",
    "analyse_model",
    "check_clips",
    "check_finite",
    "get_layer",
    "normalise_target",
    "require_relu_modules",
]

_RELU_FUNCS = frozenset(
    {
        "relu",
        "relu_",
        "relu6",
        "leaky_relu",
        "leaky_relu_",
        "hardtanh",
        "hardtanh_",
        "threshold",
        "threshold_",
        "elu",
        "elu_",
        "gelu",
        "silu",
    }
)


def check_clips(clips: Any) -> None:
    """Clips must be a non-empty, finite, floating-point tensor ``(B, C, T, H, W)``."""
    if not isinstance(clips, Tensor):
        raise TypeError(f"clips must be a torch.Tensor of shape (B, C, T, H, W), got {type(clips).__name__}")
    if clips.dim() != 5:
        raise ValueError(
            f"clips must have shape (B, C, T, H, W), got {tuple(clips.shape)}; "
            "for a single clip (C, T, H, W) use clips.unsqueeze(0)"
        )
    if not clips.is_floating_point():
        raise TypeError(
            f"clips must be a floating-point tensor (normalised pixels), got {clips.dtype}; "
            "normalise the frames and convert with .float()"
        )
    if clips.numel() == 0:
        raise ValueError(f"clips must not be empty, got shape {tuple(clips.shape)}")
    check_finite(clips, "clips")


def check_finite(tensor: Tensor, what: str) -> None:
    """Raise ``ValueError`` when ``tensor`` holds NaN or Inf.

    A NaN or Inf makes the sum NaN or Inf, so one reduction (no boolean temporary: several times faster than
    ``isfinite(x).all()``) clears the usual case; only a non-finite sum, which a finite tensor can also reach by
    overflow, is checked element by element.
    """
    if tensor.numel() and bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} contains {bad} NaN/Inf value(s); check the data pipeline / model for NaNs")


def normalise_target(target: Any, batch: int) -> Tensor | None:
    """``None`` (predicted class), or an int64 tensor ``(B,)`` from an int, 0-d/1-d tensor or sequence."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be None, an int or B ints, got a bool")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long)
    if isinstance(target, Sequence) and not isinstance(target, str):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise TypeError(f"target must be None, an int or a sequence of B ints, got {target!r}")
        target = torch.tensor(list(target), dtype=torch.long)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be None, an int or a tensor of B ints, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.dim() == 0:
        return target.detach().long().cpu().expand(batch).clone()
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"target must be an int or a tensor of B={batch} ints, got shape {tuple(target.shape)}")
    return target.detach().long().cpu()


def check_target_range(target: Tensor | None, num_outputs: int) -> None:
    if target is None:
        return
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_outputs:
        raise ValueError(f"target classes must lie in [0, {num_outputs - 1}] (model outputs), got {low}..{high}")


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``model.named_modules()``), or a ``ValueError`` listing names."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"layer must be a layer name (str) such as 'conv5b', got {name!r}")
    modules = dict(model.named_modules())
    if name not in modules:
        available = [n for n, m in modules.items() if n and isinstance(m, (nn.Conv3d, nn.Linear))]
        others = [n for n in modules if n and n not in available]
        raise ValueError(
            f"model has no layer {name!r}; convolution/linear layers: {available}"
            + (f"; other modules: {others[:40]}{' …' if len(others) > 40 else ''}" if others else "")
        )
    return modules[name]


@dataclass
class ModelStructure:
    """What one forward pass showed about a model (names as in ``named_modules()``)."""

    leaf_order: list[str] = field(default_factory=list)  #: leaf modules in call order (repeats included)
    calls: dict[str, int] = field(default_factory=dict)  #: calls per module (every module, by first name)
    aliases: dict[str, list[str]] = field(default_factory=dict)  #: modules registered under several names
    functional_relus: list[str] = field(default_factory=list)  #: "F.relu in <module>" descriptions
    output_shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)  #: per module (last call)
    num_outputs: int = 0  #: classes (logits per clip)
    first_weighted: str | None = None  #: first leaf with a weight called (gets the zB rule in DTD)


class _ReluSpy(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module]], found: list[str]) -> None:
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in _RELU_FUNCS and not (self.stack and isinstance(self.stack[-1][1], nn.ReLU)):
            where = f"module {self.stack[-1][0]!r}" if self.stack else "the model's top-level forward"
            self.found.append(f"{getattr(func, '__module__', None) or 'Tensor'}.{name} called in {where}")
        return func(*args, **(kwargs or {}))


def _trace(work: nn.Module, names: dict[int, str], x: Tensor) -> ModelStructure:
    st = ModelStructure()
    stack: list[tuple[str, nn.Module]] = []
    handles = []

    def pre(module: nn.Module, _inputs: Any) -> None:
        stack.append((names[id(module)], module))

    def post(module: nn.Module, _inputs: Any, output: Any) -> None:
        name = names[id(module)]
        stack.pop()
        st.calls[name] = st.calls.get(name, 0) + 1
        st.output_shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else None
        if not any(True for _ in module.children()):
            st.leaf_order.append(name)
            if st.first_weighted is None and isinstance(getattr(module, "weight", None), Tensor):
                st.first_weighted = name

    try:
        for module in {id(m): m for m in work.modules()}.values():
            if module is work:
                continue
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        with torch.no_grad(), _ReluSpy(stack, st.functional_relus):
            out = work(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape (B, num_classes), got {shape}")
    st.num_outputs = int(out.shape[1])
    return st


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ModelStructure]] = weakref.WeakKeyDictionary()


def _layout_key(model: nn.Module) -> tuple:
    return tuple(
        (name, id(m), type(m), getattr(m, "inplace", None)) for name, m in model.named_modules(remove_duplicate=False)
    )


def analyse_model(model: nn.Module, clips: Tensor) -> ModelStructure:
    """Trace ``model`` on the first clip of ``clips`` and return its :class:`ModelStructure` (cached).

    One no-grad forward of a weight-sharing eval copy (hooks live on the copy and are removed in ``finally``);
    the result is cached per model object, clip shape and module layout, so it runs once per model.
    """
    key = (tuple(clips.shape[1:]), clips.dtype, clips.device, _layout_key(model))
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    aliases: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(name)
    work = eval_copy(model)
    x = clips[:1].detach()
    st = _trace(work, _names_of(work), x.clone() if x.is_inference() else x)
    st.aliases = {names[0]: names for names in aliases.values() if len(names) > 1}
    if len(per_model) > 8:
        per_model.clear()
    per_model[key] = st
    return st


def _names_of(model: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), name or "<model>")
    return names


def require_relu_modules(model: nn.Module, st: ModelStructure, method: str) -> None:
    """DTD / Guided Backprop hook ``nn.ReLU`` modules: one non-in-place module per place, no functional ReLU."""
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if isinstance(m, nn.ReLU) and m.inplace:
            raise ValueError(
                f"{method} needs non-in-place ReLUs, but module {name!r} is nn.ReLU(inplace=True) (in-place "
                f"ReLUs break the backward hooks); build it with nn.ReLU() or set model.{name}.inplace = False"
            )
    for first, names in st.aliases.items():
        if isinstance(modules.get(first), nn.ReLU):
            raise ValueError(
                f"{method} needs one nn.ReLU module per place, but the same ReLU module is registered as "
                f"{names}; give each place its own nn.ReLU()"
            )
    for name, count in st.calls.items():
        if count > 1 and isinstance(modules.get(name), nn.ReLU):
            raise ValueError(
                f"{method} needs one nn.ReLU module per place, but ReLU module {name!r} is called {count} times "
                "in the forward pass; give each place its own nn.ReLU() module"
            )
    if st.functional_relus:
        raise ValueError(
            f"{method} needs ReLUs as nn.ReLU modules, but the forward pass uses functional ReLUs: "
            f"{st.functional_relus[:5]}; replace F.relu/torch.relu/x.relu() with an nn.ReLU() module attribute "
            "called at that place"
        )
