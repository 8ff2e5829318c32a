"""The structure of a model, found by one traced forward pass (before any explainer hook is attached).

Model structure is found by one no-grad forward pass of one clip through a weight-sharing eval copy of the
model, with forward hooks on the copy's modules and a ``TorchFunctionMode`` that sees every torch function: it
records ReLU-like functions called outside their modules, and follows the data (which input each tensor depends
on, which module produced it and how often it is used), so that relevance propagation knows the first layer of
each input and which BatchNorm can be folded into the layer before it. Results are cached per model object, input
shapes and module layout. (A ``meta``-device trace would cost no arithmetic, but its first use costs over a second
of one-off initialisation per process.)

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
from motion_relevance.explain.canonize import BATCHNORM_TYPES, FOLDABLE_LAYERS
from motion_relevance.explain.propagation import call_model
from motion_relevance.models.layers import Add, Concat, GateMul

__all__ = ["ModelStructure", "analyse_model"]

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


@dataclass
class ModelStructure:
    """What one forward pass showed about a model (names as in ``named_modules()``)."""

    leaf_order: list[str] = field(default_factory=list)  #: leaf modules in call order (repeats included)
    calls: dict[str, int] = field(default_factory=dict)  #: calls per module (every module, by first name)
    aliases: dict[str, list[str]] = field(default_factory=dict)  #: modules registered under several names
    functional_relus: list[str] = field(default_factory=list)  #: "F.relu in <module>" descriptions
    output_shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)  #: per module (last call)
    num_outputs: int = 0  #: classes (logits per clip)
    first_weighted: str | None = None  #: first leaf with a weight called
    num_inputs: int = 1  #: tensors the model takes (2 for SlowFast's [slow, fast])
    multi: bool = False  #: the model is called with a list of tensors (``model([x1, x2])``)
    #: per input: the leaves with a weight that see it before any other weighted layer (they take zB in DTD)
    first_layers: dict[int, list[str]] = field(default_factory=dict)
    #: per module (containers too): the inputs its output depends on
    ancestry: dict[str, frozenset[int]] = field(default_factory=dict)
    bn_folds: dict[str, str] = field(default_factory=dict)  #: BatchNorm -> the conv/linear it can be folded into
    bn_unfoldable: dict[str, str] = field(default_factory=dict)  #: BatchNorm -> why it cannot be folded
    #: per leaf: who uses its output, ``(leaf, argument index)``; ``("", -1)`` for a function in a forward() method
    consumers: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    output_leaf: str | None = None  #: the leaf that returns the logits (None: a function in forward() does)
    #: leaves with a weight whose inputs are >= 0 for any clip (ReLU outputs, pooled or concatenated ones)
    nonnegative_inputs: set[str] = field(default_factory=set)
    #: analyses derived from this structure by explainers (cached with it; keys chosen by the explainer)
    derived: dict[Any, Any] = field(default_factory=dict)


_ANCESTRY = "_mr_ancestry"  # tensor attribute: inputs the tensor depends on
_FRESH = "_mr_fresh"  # inputs the tensor derives from without passing a layer with a weight
_PRODUCER = "_mr_producer"  # the leaf module that returned the tensor, and how often the tensor is used
_NONNEGATIVE = "_mr_nonnegative"  # the tensor is >= 0 whatever the input (a ReLU's output, pooled, ...)
#: Leaves whose output is >= 0 for any input, and leaves whose output is >= 0 when all their inputs are.
_NONNEGATIVE_OUTPUT: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Sigmoid)
_NONNEGATIVE_KEEPING: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten,
    nn.Unflatten, nn.Identity, Add, Concat, GateMul,
)
_NONE: frozenset[int] = frozenset()
_PLAIN_RELUS = frozenset({"relu", "relu_", "threshold", "threshold_"})


class _Produced:
    __slots__ = ("consumers", "name", "uses")

    def __init__(self, name: str) -> None:
        self.name, self.uses = name, 0
        self.consumers: list[tuple[str, int]] = []  # (leaf, argument index); ("", -1): a function in forward()


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _union(tensors: list[Tensor], attr: str) -> frozenset[int]:
    found = _NONE
    for t in tensors:
        found = found | getattr(t, attr, _NONE)
    return found


def _is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


class _Spy(TorchFunctionMode):
    """Sees every torch function of the traced forward: functional ReLUs, data dependence, uses of leaf outputs."""

    def __init__(self, stack: list[tuple[str, nn.Module]], found: list[str]) -> None:
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inner = self.stack[-1][1] if self.stack else None
        in_leaf = inner is not None and _is_leaf(inner)
        if name in _RELU_FUNCS and not (in_leaf and (isinstance(inner, nn.ReLU) or name not in _PLAIN_RELUS)):
            where = f"module {self.stack[-1][0]!r}" if self.stack else "the model's top-level forward"
            self.found.append(f"{getattr(func, '__module__', None) or 'Tensor'}.{name} called in {where}")
        result = func(*args, **kwargs)
        outs = _tensors(result)
        if outs:
            ins = _tensors(args) + _tensors(kwargs)
            in_place = (name.endswith("_") and not name.startswith("__")) or name.startswith("__i")
            for t in outs:  # written in place (add_, x += ...): no longer known to be >= 0
                if in_place and getattr(t, _NONNEGATIVE, False):
                    setattr(t, _NONNEGATIVE, False)
            ancestry, fresh = _union(ins, _ANCESTRY), _union(ins, _FRESH)
            for t in outs:
                if ancestry:
                    setattr(t, _ANCESTRY, getattr(t, _ANCESTRY, _NONE) | ancestry)
                if fresh:
                    setattr(t, _FRESH, getattr(t, _FRESH, _NONE) | fresh)
            if not in_leaf:
                for t in ins:
                    produced = getattr(t, _PRODUCER, None)
                    if produced is not None:
                        produced.uses += 1
                        produced.consumers.append(("", -1))
        return result


def _trace(work: nn.Module, names: dict[int, str], xs: tuple[Tensor, ...], multi: bool) -> ModelStructure:
    st = ModelStructure(num_inputs=len(xs), multi=multi)
    stack: list[tuple[str, nn.Module]] = []
    handles = []
    leaves = {id(m) for m in work.modules() if _is_leaf(m)}
    batchnorms: list[tuple[str, nn.Module, _Produced | None]] = []
    records: dict[str, _Produced] = {}

    def pre(module: nn.Module, args: Any) -> None:
        name = names[id(module)]
        stack.append((name, module))
        if id(module) not in leaves:
            return
        ins = _tensors(args)
        for index, t in enumerate(ins):
            produced = getattr(t, _PRODUCER, None)
            if produced is not None:
                produced.uses += 1
                produced.consumers.append((name, index))
        if isinstance(module, BATCHNORM_TYPES):
            batchnorms.append((name, module, getattr(ins[0], _PRODUCER, None) if ins else None))
        if isinstance(getattr(module, "weight", None), Tensor):
            if ins and all(getattr(t, _NONNEGATIVE, False) for t in ins):
                st.nonnegative_inputs.add(name)
            for k in sorted(_union(ins, _FRESH)):
                first = st.first_layers.setdefault(k, [])
                if name not in first:
                    first.append(name)

    def post(module: nn.Module, args: Any, output: Any) -> None:
        name = names[id(module)]
        stack.pop()
        st.calls[name] = st.calls.get(name, 0) + 1
        st.output_shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else None
        outs = _tensors(output)
        st.ancestry[name] = st.ancestry.get(name, _NONE) | _union(outs, _ANCESTRY)
        if id(module) not in leaves:
            return
        st.leaf_order.append(name)
        weighted = isinstance(getattr(module, "weight", None), Tensor)
        if st.first_weighted is None and weighted:
            st.first_weighted = name
        produced = _Produced(name)
        records[name] = produced
        nonnegative = isinstance(module, _NONNEGATIVE_OUTPUT) or (
            isinstance(module, _NONNEGATIVE_KEEPING) and all(getattr(t, _NONNEGATIVE, False) for t in _tensors(args)))
        for t in outs:
            setattr(t, _PRODUCER, produced)
            setattr(t, _NONNEGATIVE, nonnegative)
            if weighted:
                setattr(t, _FRESH, _NONE)

    for k, x in enumerate(xs):
        setattr(x, _ANCESTRY, frozenset({k}))
        setattr(x, _FRESH, frozenset({k}))
    try:
        for module in {id(m): m for m in work.modules()}.values():
            if module is work:
                continue
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        with torch.no_grad(), _Spy(stack, st.functional_relus):
            out = call_model(work, xs, multi)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape (B, num_classes), got {shape}")
    st.num_outputs = int(out.shape[1])
    produced_out = getattr(out, _PRODUCER, None)
    st.output_leaf = produced_out.name if produced_out is not None else None
    st.consumers = {name: list(p.consumers) for name, p in records.items()}
    modules = dict(work.named_modules())
    for name, bn, produced in batchnorms:
        reason = _unfoldable(name, bn, produced, modules, st)
        if reason is None:
            assert produced is not None
            st.bn_folds[name] = produced.name
        else:
            st.bn_unfoldable[name] = reason
    return st


def _unfoldable(name: str, bn: nn.Module, produced: _Produced | None, modules: dict[str, nn.Module],
                st: ModelStructure) -> str | None:
    """Why BatchNorm ``name`` cannot be folded into the layer before it, or None."""
    if produced is None:
        return "its input is not the output of a module (it is computed in a forward() method)"
    source = modules[produced.name]
    if not isinstance(source, FOLDABLE_LAYERS):
        return (f"its input comes from {produced.name!r} ({type(source).__name__}), not from a conv/linear layer "
                "(a BatchNorm before its conv, as in pre-activation blocks, cannot be folded)")
    if produced.uses != 1:
        return f"the output of {produced.name!r} is also used elsewhere ({produced.uses} uses)"
    if st.calls.get(produced.name) != 1 or st.calls.get(name) != 1:
        return "it or its conv/linear layer runs more than once per forward pass"
    if getattr(bn, "running_mean", None) is None:
        return "it has no running statistics (track_running_stats=False), so eval mode uses batch statistics"
    if source.weight.shape[0] != bn.num_features:
        return f"{produced.name!r} has {source.weight.shape[0]} output channels, the BatchNorm {bn.num_features}"
    return None


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ModelStructure]] = weakref.WeakKeyDictionary()


def _layout_key(model: nn.Module) -> tuple:
    return tuple(
        (name, id(m), type(m), getattr(m, "inplace", None)) for name, m in model.named_modules(remove_duplicate=False)
    )


def analyse_model(model: nn.Module, clips: Tensor | Sequence[Tensor]) -> ModelStructure:
    """Trace ``model`` on the first clip of ``clips`` (a tensor, or a list of tensors for a multi-input model) and
    return its :class:`ModelStructure` (cached).

    One no-grad forward of a weight-sharing eval copy (hooks live on the copy and are removed in ``finally``);
    the result is cached per model object, clip shapes and module layout, so it runs once per model.
    """
    multi = not isinstance(clips, Tensor)
    inputs = (clips,) if isinstance(clips, Tensor) else tuple(clips)
    key = (multi, tuple((tuple(x.shape[1:]), x.dtype, x.device) for x in inputs), _layout_key(model))
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    aliases: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(name)
    work = eval_copy(model)
    xs = tuple(x[:1].detach().clone() if x.is_inference() else x[:1].detach() for x in inputs)
    st = _trace(work, _names_of(work), xs, multi)
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
