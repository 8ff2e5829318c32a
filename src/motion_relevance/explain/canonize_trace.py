"""Canonization by tracing: a user's model rewritten so that every operation that needs a relevance rule is a module.

Deep Taylor, AttnLRP and Guided Backprop attach one rule to each module (``docs/method.md``, "Canonization"), so a
ReLU written as ``F.relu(x)``, a residual sum ``out += identity`` or one ``nn.ReLU`` called at two places is
invisible to them or ambiguous. :func:`canonize` rewrites a weight-sharing eval copy of the model
(:func:`motion_relevance.explain._copy.eval_copy`: new module objects, the same parameter storage) one module at a
time: each module's ``forward`` is traced with ``torch.fx`` with its children as opaque calls, the graph is
rewritten, and the module gets the generated ``forward`` (its class becomes a subclass of its own class, so names,
attributes, methods such as ``token_grid`` and the ``state_dict`` keys stay as they were). Rewrites:

==========================================================  ==============================================
written as                                                  becomes
==========================================================  ==============================================
``F.relu``, ``torch.relu``, ``x.relu()``, ``relu_``,        a new ``nn.ReLU()`` (``nn.GELU``, ``nn.SiLU``,
``inplace=True``; GELU, SiLU, sigmoid, tanh, ...            ``nn.Sigmoid``, ``nn.Tanh``, ...) at that place
``a + b``, ``+=``, ``torch.add``, ``a.add_(b)`` (both       ``models.layers.Add`` (a sum with a constant or a
input-dependent)                                            parameter stays: a bias)
``a * g`` with ``g`` a sigmoid / softmax output (a gate)    ``models.layers.GateMul(a, g)``
``a @ b``, ``torch.matmul``, ``torch.bmm`` (both            ``models.layers.MatMul``
input-dependent)
``torch.cat``                                               ``models.layers.Concat(dim)``
``F.softmax`` / ``x.softmax(dim)``                          ``nn.Softmax(dim)``
``tokens.mean(1)`` of a ``(B, N, D)`` tensor                ``models.videomae.TokenPool("mean")``
``F.adaptive_avg_pool3d`` / ``F.avg_pool3d`` /              the pooling module (1-D / 2-D too)
``F.max_pool3d``
one parameter-free module called at several places          one copy per place
``nn.ReLU(inplace=True)``                                   ``inplace = False`` (on the copy)
==========================================================  ==============================================

Reshapes (``flatten``, ``view``, ``reshape``, ``permute``, indexing, ...), products and quotients by constants or
parameters and sums with them stay as written. Any other operation on input-dependent tensors (a product of two
same-sized activations, ``x.mean()``, ``torch.exp``, a functional convolution) is recorded with the source line it
came from; :func:`require_rules_for_operations` refuses it for the rule-based explainers.

With example clips (the explainers pass theirs), one forward pass of the first clip first records each module's
call: arguments that were ``None`` or the same flag in every call, and empty ``*args`` / ``**kwargs``, are traced as
those constants (the installed ``forward`` refuses another value), iterating over a shape gives one symbolic
entry per dimension, and a Python branch on sizes is traced as it ran (a guard refuses sizes taking the other
branch). This, tracing through transformers' forward wrappers and rebuilding ``ModelOutput`` results, lets
transformers' video classifiers (``models.hf``) be rewritten module by module although the whole model does not
trace. That pass runs on the ``meta`` device (shapes only) unless the logits check needs its output; modules of one
structure (:func:`_fingerprint`) are traced once.

A module whose ``forward`` cannot be traced (Python control flow on tensor values, checks on ``isinstance(x,
Tensor)``) keeps its own ``forward`` (its children are still rewritten); the tracer's message, with the line it
stopped at, is kept in :attr:`Canonized.notes` and added to any later refusal, or raised at once with
``canonize(..., strict=True)``. A class may declare its ``forward`` free of operations that need a rule
(``canonize_as_written = True``, ``models.hf``'s adapter): it is kept as written and its children are rewritten.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import linecache
import operator
import os
import re
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from motion_relevance.explain._copy import eval_copy
from motion_relevance.explain.propagation import call_model
from motion_relevance.explain.rules import ATTNLRP, DTD
from motion_relevance.explain.tracing import analyse_model
from motion_relevance.models.layers import Add, Concat, GateMul, MatMul
from motion_relevance.models.videomae import TokenPool

__all__ = [
    "CanonizationError",
    "Canonized",
    "canonize",
    "canonized",
    "needs_canonization",
    "require_rules_for_operations",
]


class CanonizationError(ValueError):
    """A model cannot be rewritten so that every operation is a module (one line: what, where, how to fix)."""


@dataclass
class Canonized:
    """What :func:`canonize` did to one model."""

    model: nn.Module  #: the rewritten eval copy (shares the caller's parameter storage)
    rewritten: list[str] = field(default_factory=list)  #: module paths whose forward was regenerated
    added: dict[str, str] = field(default_factory=dict)  #: new module path -> "<op> at <file>:<line>"
    unsupported: list[str] = field(default_factory=list)  #: "<op> at <file>:<line>" with no rule
    notes: list[str] = field(default_factory=list)  #: modules kept as written (tracer messages)
    out_of_place: list[str] = field(default_factory=list)  #: modules whose ``inplace=True`` was switched off
    seconds: float = 0.0  #: wall time of the rewrite (and of the logits check)

    @property
    def changed(self) -> bool:
        """Whether any module was added (an operation or a shared module made visible) or made out of place."""
        return bool(self.added or self.out_of_place)


# ----------------------------------------------------------------------------------------------- op tables

_ACTIVATIONS: dict[Any, Callable[..., nn.Module]] = {}
_ACTIVATION_METHODS: dict[str, Callable[..., nn.Module]] = {}


def _relu(*_: Any, **__: Any) -> nn.Module:
    return nn.ReLU()


def _gelu(x: Any, approximate: str = "none", **_: Any) -> nn.Module:
    return nn.GELU(approximate=approximate)


def _leaky(x: Any, negative_slope: float = 0.01, *_: Any, **__: Any) -> nn.Module:
    return nn.LeakyReLU(negative_slope)


def _elu(x: Any, alpha: float = 1.0, *_: Any, **__: Any) -> nn.Module:
    return nn.ELU(alpha)


def _hardtanh(x: Any, min_val: float = -1.0, max_val: float = 1.0, *_: Any, **__: Any) -> nn.Module:
    return nn.Hardtanh(min_val, max_val)


def _simple(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    def make(*_: Any, **__: Any) -> nn.Module:
        return cls()

    return make


def _softmax(x: Any, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None, **_: Any) -> nn.Module:
    if dim is None or dtype is not None:
        raise _NoRule("softmax without an explicit dim (or with a dtype)")
    return nn.Softmax(dim=int(dim))


for _fn in (F.relu, torch.relu, torch.relu_, F.relu_):
    _ACTIVATIONS[_fn] = _relu
for _fn, _make in (
    (F.gelu, _gelu), (F.silu, _simple(nn.SiLU)), (torch.sigmoid, _simple(nn.Sigmoid)),
    (F.sigmoid, _simple(nn.Sigmoid)), (torch.tanh, _simple(nn.Tanh)), (F.tanh, _simple(nn.Tanh)),
    (F.leaky_relu, _leaky), (F.elu, _elu), (F.hardtanh, _hardtanh), (F.relu6, _simple(nn.ReLU6)),
    (F.hardswish, _simple(nn.Hardswish)), (F.hardsigmoid, _simple(nn.Hardsigmoid)), (F.mish, _simple(nn.Mish)),
    (F.softmax, _softmax), (torch.softmax, _softmax),
):
    _ACTIVATIONS[_fn] = _make
for _name, _make in (
    ("relu", _relu), ("relu_", _relu), ("sigmoid", _simple(nn.Sigmoid)), ("sigmoid_", _simple(nn.Sigmoid)),
    ("tanh", _simple(nn.Tanh)), ("tanh_", _simple(nn.Tanh)), ("softmax", _softmax),
):
    _ACTIVATION_METHODS[_name] = _make

_POOLS: dict[Any, tuple[type[nn.Module], tuple[str, ...]]] = {
    F.adaptive_avg_pool1d: (nn.AdaptiveAvgPool1d, ("output_size",)),
    F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",)),
    F.adaptive_avg_pool3d: (nn.AdaptiveAvgPool3d, ("output_size",)),
    F.avg_pool3d: (nn.AvgPool3d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override")),
    F.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override")),
    F.max_pool3d: (nn.MaxPool3d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
}

_ADDS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__"}
_MULS = {operator.mul, operator.imul, torch.mul}
_MUL_METHODS = {"mul", "mul_"}
_MATMULS = {operator.matmul, torch.matmul, torch.bmm}
_MATMUL_METHODS = {"matmul", "bmm"}
_CATS = {torch.cat, torch.concat}
_IN_PLACE_METHODS = {"relu_", "sigmoid_", "tanh_", "add_", "mul_"}

#: Operations that only move, copy or select entries (relevance routed unchanged), or read shapes.
_ROUTING_METHODS = frozenset({
    "flatten", "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "contiguous", "squeeze",
    "unsqueeze", "size", "dim", "expand", "expand_as", "repeat", "chunk", "split", "unbind", "clone", "to", "type",
    "float", "double", "half", "narrow", "select", "flip", "roll", "movedim", "t", "__getitem__", "unflatten",
    "numel", "type_as", "cpu", "cuda", "gather", "index_select",
})
_ROUTING_FUNCTIONS = frozenset({
    getattr(fx._symbolic_trace, "_assert_is_none", operator.getitem),  # the tracer's check of a None argument
    torch._assert, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.not_,
    operator.is_, operator.is_not,  # checks and comparisons: true/false, no relevance flows through them
    operator.getitem, getattr, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
    torch.unsqueeze, torch.stack, torch.chunk, torch.split, torch.unbind, torch.clone, torch.narrow, torch.flip,
    torch.roll, torch.movedim, torch.t, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.feature_alpha_dropout, torch.numel, torch.gather, torch.index_select,  # selections by (constant) indices
})
#: With exactly one input-dependent operand (in the given positions) these stay plain operations: the propagation
#: engine passes relevance through a bias added to, or a constant multiplying, one input-dependent tensor.
_ONE_OPERAND = {
    operator.add: (0, 1), operator.iadd: (0, 1), torch.add: (0, 1), operator.mul: (0, 1), operator.imul: (0, 1),
    torch.mul: (0, 1), operator.sub: (0,), operator.isub: (0,), torch.sub: (0,), operator.truediv: (0,),
    operator.itruediv: (0,), torch.div: (0,), operator.neg: (0,), torch.neg: (0,),
}
_ONE_OPERAND_METHODS = {"add": (0, 1), "add_": (0, 1), "mul": (0, 1), "mul_": (0, 1), "sub": (0,), "sub_": (0,),
                        "div": (0,), "div_": (0,), "neg": (0,), "__add__": (0, 1), "__mul__": (0, 1)}
_GATES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)


class _NoRule(Exception):
    """An operation that cannot be made a module (message: what it is)."""


# ----------------------------------------------------------------------------------------------- where from

_TORCH_DIR = os.path.dirname(torch.__file__)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _user_frame(stack: str | None) -> str:
    """``file:line (`code`)`` of the last frame of ``stack`` outside torch (the user's line)."""
    found = [m for m in _FRAME.finditer(stack or "")
             if not m.group(1).startswith(_TORCH_DIR) and m.group(1) != __file__]
    if not found:
        return "an unknown line"
    path, line = found[-1].group(1), int(found[-1].group(2))
    code = linecache.getline(path, line).strip()
    return f"{path}:{line}" + (f" (`{code}`)" if code else "")


def _caller() -> str | None:
    """The innermost frame of the running stack outside torch and this file (the line of the user's ``forward``
    being traced), in the traceback format :func:`_user_frame` reads."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and path != __file__:
            return f'File "{path}", line {frame.f_lineno}, in {frame.f_code.co_name}'
        frame = frame.f_back
    return None


def _op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if module == "_operator":
        return {"add": "+", "iadd": "+=", "mul": "*", "imul": "*=", "sub": "-", "truediv": "/", "matmul": "@",
                "pow": "**"}.get(name, f"operator.{name}")
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}" if module.startswith("torch") or module == "" else f"{module}.{name}"


def _trace_error(err: BaseException, path: str, module: nn.Module) -> str:
    """One line: the tracer's message, the user's line it stopped at, and what to change."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(_TORCH_DIR) and f.filename != __file__]
    where = ""
    if frames:
        f = frames[-1]
        where = f" at {f.filename}:{f.lineno}" + (f" (`{f.line.strip()}`)" if f.line else "")
    message = " ".join(str(err).split()) or type(err).__name__
    return (f"torch.fx cannot trace {type(module).__name__} {path or '<model>'!r}{where}: {message[:300]}; write "
            "that forward() without Python control flow on tensor values (torch.where; move checks out of "
            "forward) or with modules (models.layers.Add, one nn.ReLU per place)")


# ----------------------------------------------------------------------------------------------- tracing


def _meta(value: Any) -> Any:
    """``value`` with every tensor replaced by a tensor of its shape and dtype on the ``meta`` device (no data)."""
    if isinstance(value, Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return type(value)(_meta(v) for v in value)
    return value


@dataclass
class _Call:
    """One module's first recorded call: its bound ``forward`` arguments and its output (tensors on ``meta``)."""

    arguments: dict[str, Any]
    output: Any
    varying: set[str] = field(default_factory=set)  #: arguments that were None or a flag in one call, not in another
    #: the output of every recorded call, in call order (a module called at several places: TimeSformer's
    #: ``drop_path`` after its time and its space attention)
    outputs: list[Any] = field(default_factory=list)


class _OneLevel(fx.Tracer):
    """Traces one module's own ``forward``; every submodule call stays one ``call_module`` node.

    With recorded calls, every node also gets a shape-only value (tensors on the ``meta`` device): iterating over a
    shape (``(*x.shape[:-1], -1, d)``) then gives one ``getitem`` node per entry, so the graph keeps every size
    symbolic and only the number of dimensions is fixed."""

    def __init__(self, calls: dict[int, _Call] | None = None) -> None:
        super().__init__(autowrap_modules=())
        # the user's line of each node is recorded by create_proxy (_caller): torch's stack capture costs ~2 s of
        # imports on its first use in a process
        self.record_stack_traces = False
        self.calls = calls or {}
        self.values: dict[fx.Node, Any] = {}
        self.seen: dict[str, int] = {}  #: calls of each child traced so far (its index among its recorded calls)
        self.call: _Call | None = None

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:  # type: ignore[override]
        self.call = self.calls.get(id(root))
        self.seen = {}
        graph = self._trace(root, concrete_args)
        if concrete_args:
            _drop_constant_inputs(graph, concrete_args)
        info = getattr(graph._codegen, "pytree_info", None)
        if info is not None:  # empty *args / **kwargs made constants: plain arguments, the output as written
            graph._codegen = fx.graph.CodeGen()
            out = next(n for n in graph.nodes if n.op == "output")
            if info.out_spec is not None:
                out.args = (info.out_spec.unflatten(list(out.args[0])),)
        returned = self.call.output if self.call is not None else None
        out = next(n for n in graph.nodes if n.op == "output")
        if isinstance(out.args[0], dict) and isinstance(returned, Mapping) and type(returned) is not dict:
            # a dict-like output class (transformers' ModelOutput) is recorded as a plain dict: rebuild it
            with graph.inserting_before(out):
                rebuilt = graph.call_function(type(returned), (), dict(out.args[0]))
            out.args = (rebuilt,)
        return graph

    def _trace(self, root: Any, concrete_args: dict[str, Any] | None) -> fx.Graph:
        cls = type(root)
        inner = _unwrapped_forward(cls)
        if inner is None:
            return super().trace(root, concrete_args)
        shadow = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
        shadow.forward = inner  # set after the class exists: no __init_subclass__ wraps it again
        root.__class__ = shadow
        try:
            return super().trace(root, concrete_args)
        finally:
            root.__class__ = cls

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if proxy.node.stack_trace is None:
            proxy.node.stack_trace = _caller()
        if self.call is not None:
            with contextlib.suppress(Exception):  # no shape-only value for this node: iterating over it is refused
                self.values[proxy.node] = self._value(proxy.node)
        return proxy

    def _value(self, node: fx.Node) -> Any:
        assert self.call is not None
        if node.op == "placeholder":
            name = str(node.target).lstrip("*")
            for key in (name, "*" + name, "**" + name):
                if key in self.call.arguments:
                    return self.call.arguments[key]
            raise KeyError(name)
        if node.op == "get_attr":
            value: Any = self.root
            for part in str(node.target).split("."):  # the tables first: fx's patched getattr gives proxies
                tables = [t for t in ("_parameters", "_buffers", "_modules") if part in vars(value).get(t, {})]
                value = vars(value)[tables[0]][part] if tables else getattr(value, part)
            return _meta(value)
        if node.op == "call_module":
            child = self.calls.get(id(self.root.get_submodule(str(node.target))))
            if child is None:
                raise KeyError(node.target)
            # the k-th call in this forward is the child's k-th recorded call (the first where it was called more
            # often than this forward calls it, e.g. also from another module)
            k = self.seen[str(node.target)] = self.seen.get(str(node.target), -1) + 1
            return child.outputs[k] if k < len(child.outputs) else child.output
        args = fx.node.map_arg(node.args, lambda n: self.values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.values[n])
        with torch.no_grad():
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return node.target(*args, **kwargs)  # type: ignore[operator]

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        """A condition on sizes (``if num_channels != self.num_channels:``) is traced as it ran, with a guard node
        that refuses sizes taking the other branch; a condition on tensor values stays a tracer error."""
        taken = self.values.get(obj.node)
        if type(taken) is not bool:
            return super().to_bool(obj)
        self.create_proxy("call_function", _same_branch, (obj, taken, _user_frame(obj.node.stack_trace)), {})
        return taken

    def length(self, obj: fx.Proxy) -> int | None:
        """The number of entries of a shape-like node (a ``torch.Size`` or tuple), None if unknown."""
        value = self.values.get(obj.node)
        return len(value) if isinstance(value, (tuple, list)) else None

    def iter(self, obj: fx.Proxy) -> Any:
        n = self.length(obj)
        return iter([obj[i] for i in range(n)]) if n is not None else super().iter(obj)


def _same_branch(condition: Any, taken: bool, where: str) -> None:
    """The guard of a branch on sizes traced as it ran (:meth:`_OneLevel.to_bool`)."""
    if bool(condition) is not taken:
        raise ValueError(f"canonize: the condition at {where} was {taken} for the clips the model was canonized with "
                         "and is not for these; canonize the model again with clips of these sizes")


_TRANSFORMERS_DIR = f"{os.sep}transformers{os.sep}"


_GUARDS = {getattr(fx._symbolic_trace, "_assert_is_none", None), operator.eq, torch._assert}


def _drop_constant_inputs(graph: fx.Graph, constants: Mapping[str, Any]) -> None:
    """Remove the inputs traced as constants and the tracer's checks of them (the installed forward checks them,
    :func:`_with_signature`), so the graph's inputs are the arguments that carry tensors."""
    names = {k.lstrip("*") for k in constants}
    for node in [n for n in graph.nodes if n.op == "placeholder"]:
        target = str(node.target).lstrip("*")
        if re.sub(r"_\d+$", "", target) not in names and target not in names:
            continue
        chain, todo = [], [node]
        while todo:
            current = todo.pop()
            chain.append(current)
            todo.extend(current.users)
        if all(n is node or (n.op == "call_function" and n.target in _GUARDS) for n in chain):
            for n in reversed(chain):
                graph.erase_node(n)


def _unwrapped_forward(cls: type) -> Callable[..., Any] | None:
    """The forward inside transformers' wrappers, None for a forward without them: the gradient-checkpointing wrapper
    (``GradientCheckpointingLayer``, differs only in training with checkpointing on) and the output decorators
    (``can_return_tuple``, output capturing: they differ only when tuples or attentions are asked for). Each
    rewritten model's logits are checked against the model's own when example clips are given."""
    forward = getattr(cls, "forward", None)
    inner = forward
    while getattr(inner, "__wrapped__", None) is not None:
        code = getattr(inner, "__code__", None)
        if code is None or _TRANSFORMERS_DIR not in code.co_filename:
            break
        inner = inner.__wrapped__  # type: ignore[union-attr]
    return None if inner is forward else inner


class _SizedProxy(fx.Proxy):
    """A proxy whose ``len()`` is known when it stands for a shape (``list.extend`` asks for it)."""

    def __len__(self) -> int:
        n = self.tracer.length(self) if isinstance(self.tracer, _OneLevel) else None
        return n if n is not None else super().__len__()


def _kept_as_written(module: nn.Module) -> bool:
    """Whether the class that defines ``module``'s ``forward`` declares it free of operations that need a rule
    (``canonize_as_written = True`` in that class itself, so a subclass with another ``forward`` is traced):
    canonization keeps that forward and rewrites the children."""
    owner = next((c for c in type(module).__mro__ if "forward" in vars(c)), None)
    return owner is not None and vars(owner).get("canonize_as_written") is True and "forward" not in vars(module)


_PLAIN = (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device, torch.Size)


def _key(value: Any, own: bool = False, depth: int = 0) -> Any:
    """A hashable stand-in for an attribute or recorded value: plain values and containers by content, tensors by
    shape and dtype (``own``: a module's own buffer or tensor attribute, whose values its forward may branch on, by
    identity), anything else (a shared config, a function) by identity."""
    if isinstance(value, Tensor):
        return ("tensor", id(value)) if own else ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, _PLAIN):
        return (type(value), value)
    if depth < 4 and isinstance(value, (tuple, list)):
        return (type(value), tuple(_key(v, own, depth + 1) for v in value))
    if depth < 4 and isinstance(value, Mapping):
        return (type(value), tuple((_key(k, own, depth + 1), _key(v, own, depth + 1)) for k, v in value.items()))
    if depth < 4 and isinstance(value, (set, frozenset)):
        return (type(value), frozenset(_key(v, own, depth + 1) for v in value))
    return ("id", id(value))


def _fingerprint(module: nn.Module, calls: Mapping[int, _Call], memo: dict[tuple[int, bool], tuple] | None = None
                 ) -> tuple | None:
    """What ``module``'s traced graph depends on, for every module of its subtree (relative names): class,
    attributes (parameters by shape; the module's own buffers and tensors by identity), recorded calls (argument and
    output shapes, constants); None for a module with a ``forward`` of its own object (never reused). ``memo``:
    each module's part, kept across calls (a module's subtree is keyed before any of it is rewritten)."""
    memo = {} if memo is None else memo
    parts = []
    for name, m in module.named_modules(remove_duplicate=False):
        if "forward" in vars(m):
            return None
        own = m is module
        part = memo.get((id(m), own))
        if part is None:
            state = tuple((k, _key(v, own)) for k, v in vars(m).items()
                          if k not in ("_parameters", "_buffers", "_modules") and "hooks" not in k)
            params = tuple((k, None if p is None else (tuple(p.shape), p.dtype)) for k, p in m._parameters.items())
            buffers = tuple((k, _key(b, own)) for k, b in m._buffers.items())
            call = calls.get(id(m))
            recorded = None if call is None else (_key(call.arguments), _key(call.outputs), frozenset(call.varying))
            part = memo[(id(m), own)] = (type(m), state, params, buffers, recorded)
        parts.append((name, part))
    return tuple(parts)


def _copy_graph(graph: fx.Graph, values: Mapping[fx.Node, Any]) -> tuple[fx.Graph, dict[fx.Node, Any]]:
    """A copy of a traced graph (node names, stack traces and code generation as in ``graph``) and ``values``
    re-keyed by its nodes."""
    mapping: dict[fx.Node, fx.Node] = {}
    new = fx.Graph(tracer_cls=graph._tracer_cls)
    out = new.graph_copy(graph, mapping, return_output_node=True)
    assert isinstance(out, tuple)
    value, old_output = out
    new._codegen = copy.deepcopy(graph._codegen)
    new.output(value, type_expr=getattr(old_output, "type", None)).meta = copy.copy(old_output.meta)
    return new, {mapping[n]: v for n, v in values.items() if n in mapping}


def _has_rule(module: nn.Module) -> bool:
    return DTD.rule_for(module) is not None or ATTNLRP.rule_for(module) is not None


def _opaque(module: nn.Module) -> bool:
    """A module kept as one call (a rule applies to it as a whole): torch.nn layers (not containers), layers with
    parameters or buffers of their own and no children, and types with a rule."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    if isinstance(module, containers):
        return False
    if type(module).__module__.startswith("torch.nn") or _has_rule(module):
        return True
    has_children = any(True for _ in module.children())
    own = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    return own and not has_children


def _parameter_free(module: nn.Module) -> bool:
    return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


class _Rewriter:
    def __init__(self, result: Canonized, strict: bool, calls: dict[int, _Call] | None = None) -> None:
        self.result, self.strict = result, strict
        self.calls = calls or {}  # id(module) -> its first recorded call
        self.values: dict[fx.Node, Any] = {}  # shape-only values of the graph being rewritten
        self.done: set[int] = set()  # modules whose forward was handled
        self.placed: set[int] = set()  # parameter-free leaves already called at one place
        self.classes: dict[tuple[type, str], type] = {}
        #: structure key (:func:`_fingerprint`) -> a pristine copy of the graph traced for it, with its values
        self.traced: dict[tuple, tuple[fx.Graph, dict[fx.Node, Any]]] = {}
        self.reuse = True  #: trace each distinct module structure once (False: trace every module)
        self.keys: dict[tuple[int, bool], tuple] = {}  #: each module's part of a structure key

    def module(self, module: nn.Module, path: str) -> None:
        if id(module) in self.done:
            return
        self.done.add(id(module))
        if type(module).forward is nn.Sequential.forward:  # a plain chain: only one object per place is needed
            for name, child in list(module._modules.items()):
                if child is None:
                    continue
                if _parameter_free(child) and _opaque(child) and id(child) in self.placed:
                    child = copy.deepcopy(child)
                    module._modules[name] = child
                    self.result.added[_join(path, name)] = f"another use of a module shared with {path!r}"
                if _parameter_free(child) and _opaque(child):
                    self.placed.add(id(child))
                self._visit_child(child, _join(path, name))
            return
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)) or _kept_as_written(module):
            # containers without a forward of their own; a forward its class declares free of operations that need
            # a rule (models.hf's adapter: input checks, a permute, the wrapped model's call)
            for name, child in list(module._modules.items()):
                if child is not None:
                    self._visit_child(child, _join(path, name))
            return
        try:
            constants = _constant_arguments(self.calls.get(id(module)))
            graph, self.values = self._traced(module, constants)
        except Exception as err:  # noqa: BLE001 - any tracer failure: keep the module as written
            note = _trace_error(err, path, module)
            if self.strict:
                raise CanonizationError(f"canonize: {note}") from err
            self.result.notes.append(note)
            for name, child in list(module._modules.items()):  # its children are still rewritten
                if child is None:
                    continue
                self._visit_child(child, _join(path, name))
            return
        changed = self._rewrite(module, path, graph)
        for node in graph.nodes:
            if node.op == "call_module":
                self._visit_child(module.get_submodule(node.target), _join(path, node.target))
        if changed:
            self._install(module, graph, constants)
            self.result.rewritten.append(path or "<model>")

    def _traced(self, module: nn.Module, constants: dict[str, Any] | None) -> tuple[fx.Graph, dict[fx.Node, Any]]:
        """``module``'s traced graph and its nodes' shape-only values: a copy of the graph traced for a module of
        the same structure (:func:`_fingerprint`: the 12 blocks of a ViT are traced once), or traced now."""
        key = _fingerprint(module, self.calls, self.keys) if self.reuse else None
        hit = self.traced.get(key) if key is not None else None
        if hit is not None:
            return _copy_graph(*hit)
        tracer = _OneLevel(self.calls)
        graph = tracer.trace(module, concrete_args=constants)
        if key is not None and not any(n.op == "get_attr" and str(n.target).startswith("_tensor_constant")
                                       for n in graph.nodes):  # a tensor made in forward: its own per module
            self.traced[key] = _copy_graph(graph, tracer.values)
        return graph, tracer.values

    def _visit_child(self, child: nn.Module, path: str) -> None:
        if _opaque(child):
            if getattr(child, "inplace", False) is True and not isinstance(child, (nn.Dropout, nn.Dropout1d,
                                                                                 nn.Dropout2d, nn.Dropout3d)):
                child.inplace = False  # the copy's own module object
                self.result.out_of_place.append(path)
            return
        self.module(child, path)

    # -- graph rewriting ------------------------------------------------------------------------------------

    def _rewrite(self, root: nn.Module, path: str, graph: fx.Graph) -> bool:
        self.root = root
        dependent: set[fx.Node] = set()
        changed = False
        order = {node: i for i, node in enumerate(graph.nodes)}
        for node in list(graph.nodes):
            ins = [a for a in node.all_input_nodes]
            if node.op == "placeholder":
                dependent.add(node)
                continue
            if node.op in ("get_attr", "output"):
                continue
            if not any(a in dependent for a in ins):
                continue
            if node.op != "call_module" and node in self.values and not _holds_tensor(self.values[node]):
                continue  # sizes, devices, dtypes: no relevance flows through them, so what they make is a constant
            dependent.add(node)
            if node.op == "call_module":
                changed |= self._place(root, path, node)
                continue
            try:
                made = self._convert(node, dependent)
            except _NoRule as err:
                self.result.unsupported.append(f"{err} at {_user_frame(node.stack_trace)}")
                continue
            if made is None:
                continue
            new_module, args, in_place = made
            name = _fresh(root, _base_name(new_module))
            root.add_module(name, new_module)
            self.result.added[_join(path, name)] = f"{_op_name(node)} at {_user_frame(node.stack_trace)}"
            with graph.inserting_before(node):
                new = graph.call_module(name, args=args)
                if isinstance(new_module, TokenPool) and _keepdim(node):  # (B, N, D) -> (B, 1, D)
                    new.meta = dict(node.meta)
                    new = graph.call_method("unsqueeze", (new, 1))
            new.meta = dict(node.meta)
            if in_place and isinstance(node.args[0], fx.Node):  # later reads of the written tensor see the result
                written = node.args[0]
                for user in list(written.users):
                    if user is not node and order.get(user, -1) > order[node]:
                        user.replace_input_with(written, new)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            order[new] = order[node]
            dependent.add(new)
            changed = True
        return changed

    def _place(self, root: nn.Module, path: str, node: fx.Node) -> bool:
        """One object per place for parameter-free leaves: a second call gets a copy under a new name."""
        target = root.get_submodule(str(node.target))
        if not _parameter_free(target) or not _opaque(target):
            return False
        if id(target) not in self.placed:
            self.placed.add(id(target))
            return False
        twin = copy.deepcopy(target)
        name = _fresh(root, str(node.target).rsplit(".", 1)[-1])
        root.add_module(name, twin)
        self.placed.add(id(twin))
        self.result.added[_join(path, name)] = (f"another call of module {_join(path, str(node.target))!r} at "
                                                f"{_user_frame(node.stack_trace)}")
        node.target = name
        return True

    def _convert(self, node: fx.Node, dependent: set[fx.Node]) -> tuple[nn.Module, tuple[Any, ...], bool] | None:
        """The module replacing ``node``, its positional inputs and whether the op wrote in place; None: keep."""
        target, args, kwargs = node.target, node.args, node.kwargs
        live = [i for i, a in enumerate(args) if isinstance(a, fx.Node) and a in dependent]
        is_method = node.op == "call_method"
        in_place = (is_method and target in _IN_PLACE_METHODS) or bool(kwargs.get("inplace", False)) or (
            target in (operator.iadd, operator.imul, torch.relu_, F.relu_))
        if (target in _ACTIVATIONS) or (is_method and target in _ACTIVATION_METHODS):
            make = _ACTIVATION_METHODS[target] if is_method else _ACTIVATIONS[target]
            extra = {k: v for k, v in kwargs.items() if k != "inplace"}
            value = self.values.get(args[0]) if isinstance(args[0], fx.Node) else None
            first = args[0]
            if isinstance(value, Tensor) and extra.get("dtype") == value.dtype:
                del extra["dtype"]  # softmax(x, dtype=x.dtype): no conversion
            elif isinstance(value, Tensor) and isinstance(extra.get("dtype"), torch.dtype) and make is _softmax:
                first = _cast_before(node, first, extra.pop("dtype"))  # softmax(x, dtype=d) = softmax(x.to(d))
            return make(first, *args[1:], **extra), (first,), in_place
        if not is_method and target in _POOLS:
            cls, names = _POOLS[target]
            options = dict(zip(names, args[1:]), **kwargs)
            if options.get("return_indices"):
                raise _NoRule(f"{_op_name(node)} with return_indices=True")
            return cls(**options), (args[0],), False
        two = len(live) == 2 and len(args) == 2
        if (target in _ADDS or (is_method and target in _ADD_METHODS)) and two:
            if kwargs.get("alpha", 1) != 1:
                raise _NoRule(f"{_op_name(node)} with alpha={kwargs['alpha']}")
            return Add(), (args[0], args[1]), in_place
        if (target in _MATMULS or (is_method and target in _MATMUL_METHODS)) and two:
            return MatMul(), (args[0], args[1]), False
        if (target in _MULS or (is_method and target in _MUL_METHODS)) and two:
            gates = [i for i in (0, 1) if _is_gate(self.root, args[i])]
            if len(gates) != 1:
                raise _NoRule(f"product {_op_name(node)} of two input-dependent tensors, neither a sigmoid/softmax "
                              "gate (write it with models.layers.GateMul(x, gate) or MatMul)")
            gate = gates[0]
            return GateMul(), (args[1 - gate], args[gate]), in_place
        if (is_method and target == "mean") or (not is_method and target is torch.mean):
            return self._token_mean(node), (args[0],), False
        if not is_method and target in _CATS:
            tensors = args[0] if args else kwargs.get("tensors")
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if isinstance(tensors, (list, tuple)) and all(isinstance(t, fx.Node) for t in tensors):
                return Concat(int(dim)), tuple(tensors), False
            raise _NoRule(f"{_op_name(node)} of a non-list")
        if (is_method and target in _ROUTING_METHODS) or (not is_method and target in _ROUTING_FUNCTIONS):
            return None
        if not is_method and isinstance(target, type) and issubclass(target, Mapping):
            return None  # packs outputs into a dict-like class (transformers' ModelOutput)
        if target in (operator.add, operator.iadd) and (isinstance(self.values.get(node), (tuple, list)) or any(
                isinstance(a, (tuple, list)) for a in args)):
            return None  # tuples of outputs concatenated (``(out,) + rest[1:]``): no arithmetic
        allowed = _ONE_OPERAND_METHODS.get(str(target)) if is_method else _ONE_OPERAND.get(target)
        if allowed is not None and len(live) == 1 and live[0] in allowed:
            return None
        what = _op_name(node)
        if allowed is not None and len(live) == 2:
            what = f"{what} of two input-dependent tensors"
        raise _NoRule(what)

    def _token_mean(self, node: fx.Node) -> nn.Module:
        """``tokens.mean(1)`` of a ``(B, N, D)`` tensor (transformers' mean pooling) as a ``TokenPool("mean")``
        (``keepdim=True``: followed by ``unsqueeze(1)``)."""
        args, kwargs = node.args, node.kwargs
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        value = self.values.get(args[0]) if isinstance(args[0], fx.Node) else None
        rank = value.dim() if isinstance(value, Tensor) else None
        if rank == 3 and dim in (1, -2, (1,), [1]) and kwargs.get("dtype") is None:
            return TokenPool("mean")
        raise _NoRule(f"{_op_name(node)} other than the mean over the tokens of a (B, N, D) tensor")

    # -- installing the generated forward --------------------------------------------------------------------

    def _install(self, module: nn.Module, graph: fx.Graph, constants: dict[str, Any] | None) -> None:
        graph.lint()
        code = graph.python_code(root_module="self")
        cls = type(module)
        key = (cls, code.src, repr(sorted((constants or {}).items())))
        new_cls = self.classes.get(key)
        if new_cls is None:
            filename = f"<canonized {cls.__qualname__} {next(_COUNTER)}>"
            linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)
            scope = dict(code.globals)
            exec(compile(code.src, filename, "exec"), scope)  # noqa: S102 - the tracer's generated forward
            new_cls = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                                   "_canonized_from": cls})
            forward = scope["forward"]
            if constants:  # arguments traced as constants are not in the generated signature: accept them
                forward = _with_signature(forward, _unwrapped_forward(cls) or cls.forward, graph, constants)
            new_cls.forward = forward  # set after the class exists: no __init_subclass__ wraps it
            self.classes[key] = new_cls
        module.__class__ = new_cls


_COUNTER = itertools.count()


def _with_signature(generated: Callable[..., Any], original: Callable[..., Any], graph: fx.Graph,
                    constants: Mapping[str, Any]) -> Callable[..., Any]:
    """``generated`` called as ``original`` is: the arguments are bound to ``original``'s signature, those traced as
    constants are checked to have the value they were traced with, and the graph's inputs are passed on."""
    signature = inspect.signature(original)
    names = [str(n.target) for n in graph.nodes if n.op == "placeholder"]
    fixed = {k.lstrip("*"): v for k, v in constants.items()}
    where = getattr(original, "__qualname__", "forward")

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        for name, value in fixed.items():
            got = given.get(name)
            if not (type(got) is type(value) and (value is None or got == value)):
                raise ValueError(f"canonize: {where} was traced with {name}={value!r} and is now called with "
                                 f"{name}={got!r}; canonize the model again with clips that run it this way")
        positional: list[Any] = []
        keywords: dict[str, Any] = {}
        for name in names:
            if name.startswith("**"):
                keywords.update(given.get(name[2:], {}))
            elif name.startswith("*"):
                positional.extend(given.get(name[1:], ()))
            else:
                positional.append(given[name])
        return generated(self, *positional, **keywords)

    return forward


def _cast_before(node: fx.Node, value: Any, dtype: torch.dtype) -> fx.Node:
    """A ``value.to(dtype)`` node inserted before ``node`` (a re-indexing for relevance: it routes unchanged).
    ``F.softmax(x, dtype=d)`` casts ``x`` to ``d`` first (transformers' V-JEPA 2 runs its softmax in float32), so
    the cast followed by ``nn.Softmax`` computes the same values."""
    with node.graph.inserting_before(node):
        cast = node.graph.call_method("to", (value,), {"dtype": dtype})
    cast.meta = dict(node.meta)
    return cast


def _is_gate(root: nn.Module, value: Any) -> bool:
    """``value`` comes from a sigmoid / softmax (through reshapes): a gate of a product."""
    node = value
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            return isinstance(root.get_submodule(str(node.target)), _GATES)
        if node.op == "call_method" and node.target in _ROUTING_METHODS and node.args:
            node = node.args[0]
            continue
        return False
    return False


def _holds_tensor(value: Any) -> bool:
    """Whether a shape-only value is (or contains) a tensor; sizes, ints and flags are not."""
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    return not isinstance(value, (int, float, bool, str, type(None), torch.Size, torch.dtype, torch.device))


def _keepdim(node: fx.Node) -> bool:
    return bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))


def _base_name(module: nn.Module) -> str:
    return {Add: "add", GateMul: "gate_mul", MatMul: "matmul", Concat: "cat"}.get(type(module),
                                                                                   type(module).__name__.lower())


def _fresh(root: nn.Module, base: str) -> str:
    name, k = base, 0
    while hasattr(root, name):
        k += 1
        name = f"{base}_{k}"
    return name


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# ----------------------------------------------------------------------------------------------- public API


def _first_clip(clips: Tensor | Sequence[Tensor]) -> tuple[tuple[Tensor, ...], bool]:
    if isinstance(clips, Tensor):
        return (clips[:1].detach(),), False
    return tuple(x[:1].detach() for x in clips), True


def _check_logits(model: nn.Module, work: nn.Module, clips: Tensor | Sequence[Tensor], want: Any = None) -> None:
    """The rewritten ``work``'s logits on the first clip against ``model``'s (``want``: already computed)."""
    xs, multi = _first_clip(clips)
    xs = tuple(x.clone() if x.is_inference() else x for x in xs)
    with torch.no_grad():
        if want is None:
            want = call_model(eval_copy(model), xs, multi)
        got = call_model(work, xs, multi)
    if not isinstance(want, Tensor) or not isinstance(got, Tensor) or want.shape != got.shape:
        raise CanonizationError(f"canonize: the rewritten {type(model).__name__} returns a different output "
                                "structure; explain the model written with modules (models.layers.Add, nn.ReLU)")
    scale = float(want.abs().max()) if want.numel() else 0.0
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-6 * max(scale, 1.0)):
        diff = float((got - want).abs().max())
        raise CanonizationError(
            f"canonize: the rewritten {type(model).__name__} gives other logits (max difference {diff:.3g}), e.g. an "
            "in-place write into a view or an aliased tensor; write that step out of place or with modules")


def canonize(model: nn.Module, example_clips: Tensor | Sequence[Tensor] | None = None, *,
             strict: bool = True, check: bool = True) -> nn.Module:
    """``model`` rewritten so every operation that needs a relevance rule is a module (see the module docstring).

    Args:
        model: any ``nn.Module`` returning logits; it is never modified (the rewrite is made on a weight-sharing
            eval copy, so parameters are shared, not cloned).
        example_clips: clips ``(B, C, T, H, W)`` (a list for a multi-input model): their first clip is run once to
            record each module's call (shapes, arguments that are ``None``) and, with ``check``, the rewritten model's
            logits on it are checked against the model's own.
        strict: raise :class:`CanonizationError` when a module's forward cannot be traced (the tracer's message and
            line) or an operation got no module (the operation and its line); ``False`` keeps such a module as
            written and records the message in the result's ``notes``, and such operations in ``unsupported``.
        check: with ``example_clips``, compare the logits (two forward passes of the first clip: the recording one
            and one of the rewritten model); ``False`` records the calls on the ``meta`` device (shapes only, no
            arithmetic), which costs a fraction of one forward pass, as the explainers do.

    Returns:
        The rewritten eval copy; :func:`canonized` gives the full record (added modules with their source lines,
        operations without a rule, notes).
    """
    return _canonize(model, example_clips, strict, check=check).model


def _meta_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of ``model`` (by name; tied ones once) as an empty tensor on the ``meta`` device."""
    return {name: torch.empty_like(t, device="meta") for name, t in itertools.chain(model.named_parameters(),
                                                                                     model.named_buffers())}


def _record_calls(work: nn.Module, clips: Tensor | Sequence[Tensor], on_meta: bool = False
                  ) -> tuple[dict[int, _Call], Any]:
    """Each module's calls in one forward pass of ``work`` on the first clip (arguments bound to the names of its
    ``forward``, tensors kept as shapes on the ``meta`` device), and the pass's output.

    ``on_meta``: the pass runs on the ``meta`` device (``work``'s parameters and buffers swapped for shape-only
    tensors by ``torch.func.functional_call``, the module objects unchanged), so it costs no arithmetic; a model that
    does not run there (``.item()``, a branch on tensor values, a tensor attribute used with an input) is run on its
    own device instead. Only shapes, ``None`` and flags are recorded, so both passes record the same calls; the output
    is then the meta one (shapes only)."""
    calls: dict[int, _Call] = {}

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
        except (TypeError, ValueError):
            return
        bound.apply_defaults()
        star = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
        kinds = bound.signature.parameters
        arguments = {star.get(kinds[k].kind, "") + k: _meta(v) for k, v in bound.arguments.items()}
        call = calls.get(id(module))
        if call is None:
            calls[id(module)] = _Call(arguments, None)
            return
        for name, value in arguments.items():
            first = call.arguments.get(name)
            if (_is_constant(first) or _is_constant(value)) and not (type(first) is type(value) and first == value):
                call.varying.add(name)

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        call = calls.get(id(module))
        if call is not None:
            value = _meta(output)
            call.outputs.append(value)
            if call.output is None:
                call.output = value

    handles = [h for m in work.modules() for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                                    m.register_forward_hook(after))]
    try:
        xs, multi = _first_clip(clips)
        with torch.no_grad():
            if on_meta:
                meta = tuple(torch.empty_like(x, device="meta") for x in xs)
                saved = [(m, dict(vars(m)), dict(m._buffers)) for m in work.modules()]
                try:
                    output = torch.func.functional_call(work, _meta_tensors(work), ([*meta],) if multi else meta)
                    return calls, output
                except Exception:  # noqa: BLE001 - any failure on meta: record on the model's own device
                    calls.clear()
                finally:  # a tensor a forward kept (a cache) must not stay on meta in the copy
                    _restore_meta_state(saved)
            output = call_model(work, tuple(x.clone() if x.is_inference() else x for x in xs), multi)
    finally:
        for handle in handles:
            handle.remove()
    return calls, output


def _restore_meta_state(saved: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]) -> None:
    """Undo what a pass on the meta device left on the modules: attributes and buffers set to a meta tensor (a
    forward that caches a tensor) get their value from before the pass back, or are removed if new."""
    def on_meta(value: Any) -> bool:
        return isinstance(value, Tensor) and value.is_meta

    for module, attributes, buffers in saved:
        for table, before in ((vars(module), attributes), (module._buffers, buffers)):
            for key in [k for k, v in table.items() if on_meta(v) and before.get(k) is not v]:
                if key in before:
                    table[key] = before[key]
                else:
                    del table[key]


def _constant_arguments(call: _Call | None) -> dict[str, Any] | None:
    """The ``forward`` arguments traced as constants: those that were ``None`` or the same flag in every call (``if
    mask is not None``, ``if output_attentions`` are traced as the model ran them) and empty ``*args`` /
    ``**kwargs``."""
    if call is None:
        return None
    out: dict[str, Any] = {}
    for name, value in call.arguments.items():
        if name not in call.varying and (_is_constant(value) or (name.startswith("*") and not value)):
            out[name] = value
    return out or None


def _is_constant(value: Any) -> bool:
    """An argument traced as the value it had: ``None`` or a flag (``output_attentions=False``)."""
    return value is None or isinstance(value, bool)


def _canonize(model: nn.Module, example_clips: Tensor | Sequence[Tensor] | None, strict: bool,
              probe: Tensor | Sequence[Tensor] | None = None, check: bool = True, reuse: bool = True,
              on_meta: bool = True) -> Canonized:
    """The rewrite (module docstring). ``check``: compare the logits on ``example_clips``'s first clip; ``probe``:
    clips to record the calls with instead of ``example_clips``; ``reuse`` (trace each distinct module structure
    once) and ``on_meta`` (record the calls on the meta device where no logits check needs the pass's output) are
    switches for tests and benchmarks: the result is the same either way."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"canonize needs a torch.nn.Module, got {type(model).__name__}")
    start = time.perf_counter()
    work = eval_copy(model)
    result = Canonized(model=work)
    check = check and example_clips is not None
    probe = example_clips if probe is None else probe
    calls, want = None, None
    if probe is not None:  # with a check on the same clip, the recording pass gives the model's own logits
        reference = check and probe is example_clips
        calls, want = _record_calls(work, probe, on_meta=on_meta and not reference)
        want = want if reference else None
    rewriter = _Rewriter(result, strict, calls)
    rewriter.reuse = reuse
    rewriter.module(work, "")
    if strict and result.unsupported:
        more = f" (and {len(result.unsupported) - 1} more)" if len(result.unsupported) > 1 else ""
        raise CanonizationError(f"canonize: no module with a rule for the operation {result.unsupported[0]}{more}; "
                                "write it with a module that has a rule (nn.ReLU, models.layers.Add / GateMul / "
                                "MatMul) or pass strict=False to keep it as written")
    work.__dict__[_RECORD] = result
    if check:
        assert example_clips is not None
        _check_logits(model, work, example_clips, want)
    result.seconds = time.perf_counter() - start
    return result


_RECORD = "_mr_canonization"
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Canonized]] = weakref.WeakKeyDictionary()


def _cache_key(model: nn.Module) -> tuple:
    params = tuple((id(p), p._version) for p in model.parameters())
    layout = tuple((name, id(m), getattr(m, "inplace", None))
                   for name, m in model.named_modules(remove_duplicate=False))
    return params, layout


def canonized(model: nn.Module, example_clips: Tensor | Sequence[Tensor] | None = None, *,
              probe: Tensor | Sequence[Tensor] | None = None) -> Canonized:
    """The record of ``model``'s canonization, made once per model (cached by the model object, weakly, and its
    parameters' versions and module layout); tracing failures are kept as notes (``strict=False``). ``probe``:
    clips whose first one is run once to record each module's call (arguments that are ``None``, shapes; see
    :func:`_record_calls`) without the logits check of ``example_clips``."""
    record = model.__dict__.get(_RECORD)
    if isinstance(record, Canonized) and record.model is model:
        return record
    key = _cache_key(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    result = _canonize(model, example_clips, strict=False, probe=probe)
    _CACHE[model] = (key, result)
    return result


def needs_canonization(model: nn.Module, structure: Any) -> bool:
    """Whether a traced :class:`~motion_relevance.explain.validation.ModelStructure` shows something canonization
    fixes: functional activations, in-place or shared parameter-free modules, operations in forward() methods."""
    if structure.functional_relus or structure.output_leaf is None:
        return True
    modules = dict(model.named_modules())
    for name, count in structure.calls.items():
        module = modules.get(name)
        if module is not None and count > 1 and _parameter_free(module) and _opaque(module):
            return True
    for first in structure.aliases:
        module = modules.get(first)
        if module is not None and _parameter_free(module) and _opaque(module):
            return True
    if any(getattr(m, "inplace", False) is True for m in modules.values()):
        return True
    return any(consumer == "" for users in structure.consumers.values() for consumer, _ in users)


def require_rules_for_operations(record: Canonized, composite: Any, method: str) -> None:
    """Refuse, before any work, an operation the rewrite found no module for, or a module it added that
    ``composite`` has no rule for, naming the operation and its source line."""
    if record.unsupported:
        raise TypeError(
            f"{method} has no rule for the operation {record.unsupported[0]}"
            + (f" (and {len(record.unsupported) - 1} more)" if len(record.unsupported) > 1 else "")
            + "; write it with a module that has a rule (nn.ReLU, nn.AdaptiveAvgPool3d, models.layers.Add / "
            "GateMul / MatMul) or register one (Composite.register)"
        )
    modules = dict(record.model.named_modules())
    for name, origin in record.added.items():
        module = modules.get(name)
        if module is not None and composite.rule_for(module) is None:
            raise TypeError(f"{method} has no rule for {type(module).__name__}, the operation {origin}; use an "
                            "activation with a rule (ReLU, SiLU, GELU, Sigmoid) or register one (Composite.register)")


def prepare(model: nn.Module, clips: Tensor | Sequence[Tensor], structure: Any, composite: Any, method: str
            ) -> tuple[nn.Module, Any, Canonized | None]:
    """The model an explainer that attaches rules to modules works on: ``model`` itself when its traced
    ``structure`` shows nothing to canonize (or the rewrite changed nothing), else its canonized copy (made once per
    model) and that copy's structure. With a ``composite``, operations without a rule are refused here."""

    needed = structure.derived.get(_NEEDED)
    if needed is None:
        needed = structure.derived[_NEEDED] = needs_canonization(model, structure)
    if not needed:
        return model, structure, None
    record = canonized(model, probe=clips)  # one forward pass of one clip; no logits check (two full passes)
    if composite is not None:
        require_rules_for_operations(record, composite, method)
    if not record.changed:
        return model, structure, record
    return record.model, _structure(record, clips), record


_NEEDED = "canonize-needed"


def _structure(record: Canonized, clips: Tensor | Sequence[Tensor]) -> Any:
    """The canonized copy's structure for clips of this shape, traced once on the ``meta`` device (a structure holds
    names, shapes and module types only, no values; tested against the real trace), or with a forward pass on the
    clips' device where the copy does not run on meta."""
    inputs = (clips,) if isinstance(clips, Tensor) else tuple(clips)
    key = (not isinstance(clips, Tensor), tuple((tuple(x.shape[1:]), x.dtype, x.device) for x in inputs))
    structures = record.model.__dict__.setdefault(_STRUCTURES, {})
    if key not in structures:
        try:
            shadow = eval_copy(record.model)
            meta: dict[int, Tensor] = {}
            for module in shadow.modules():
                for table in (module._parameters, module._buffers):
                    for name, t in table.items():
                        if t is not None:
                            table[name] = meta.setdefault(id(t), type(t)(torch.empty_like(t, device="meta"))
                                                          if isinstance(t, nn.Parameter)
                                                          else torch.empty_like(t, device="meta"))
            xs = [torch.empty_like(x, device="meta") for x in inputs]
            structure = analyse_model(shadow, xs if key[0] else xs[0])
        except Exception:  # noqa: BLE001 - the copy does not run on meta: trace it on the clips' device
            structure = analyse_model(record.model, clips)
        structures[key] = structure
    return structures[key]


_STRUCTURES = "_mr_canonized_structures"


def with_notes(err: Exception, record: Canonized | None) -> Exception:
    """``err`` with the modules canonization had to keep as written (the tracer's message) added, or ``err``."""
    if record is None or not record.notes:
        return err
    try:
        return type(err)(f"{err}; canonization kept a module as written: {record.notes[0]}")
    except Exception:  # noqa: BLE001 - an exception type with another constructor: leave it
        return err
