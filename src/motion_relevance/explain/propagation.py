"""Relevance propagation engine: one modified-gradient rule per module type, one forward and one backward pass.

The design follows Zennit's: a :class:`Composite` maps module types to :class:`Rule` objects; :func:`attach` rewrites
a model for explaining (BatchNorm folded into the layer before it, every leaf module running its rule) and undoes
all of it on exit, also when the body raises; :func:`propagate` runs the model once and sends the target logit back
through the rules once. The backward pass carries relevance where autograd carries gradients, so the input
relevance is what arrives at the input as its "gradient" (each rule returns ``input * modified gradient`` for its
inputs). The method and the rules are described in ``docs/method.md`` ("Deep Taylor and LRP through modern video
networks").

How a rule runs: :func:`attach` sets an instance attribute ``forward`` on each leaf module (the model passed in is
the explainer's private copy), which calls the module's own forward inside one ``torch.autograd.Function``; that
function's backward is the rule's :meth:`Rule.backward`. Modules whose ordinary gradient already routes relevance
unchanged (reshapes, concatenation, dropout in eval mode) run as they are (:class:`Gradient`). So no hook is
registered on any module, and nothing but the rules' nodes and pure re-indexing operations may lie between the
inputs and the logits: :func:`propagate` walks the autograd graph after the forward pass and refuses any other
operation written in a ``forward()`` method (a residual ``a + b``, an activation function), naming the module it
feeds. Multiplications or divisions by a constant (an attention scale) are the exception: relevance passes them
unchanged, as the identity rule of LRP gives for a product with a constant factor.

Adding a rule for a new module type::

    >>> import torch
    >>> from torch import nn
    >>> from motion_relevance.explain.propagation import Rule
    >>> from motion_relevance.explain.rules import DTD
    >>> class Double(nn.Module):                     # y = 2 x: relevance passes unchanged
    ...     def forward(self, x):
    ...         return 2 * x
    >>> class PassThrough(Rule):
    ...     name = "identity"
    ...     def forward(self, module, forward, args):
    ...         return forward(*args), ()            # output, tensors the backward needs
    ...     def backward(self, module, saved, relevance):
    ...         return (relevance,)                  # relevance of each positional input
    >>> composite = DTD.with_rules({Double: PassThrough()})
    >>> composite.rule_for(Double()).name
    'identity'

``DeepTaylor(..., rules={Double: PassThrough()})`` / ``AttnLRP(..., rules=...)`` use such a table for one explainer;
:meth:`Composite.register` adds a type to a composite for every later use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.explain.canonize import fold_batchnorm, lookup

__all__ = [
    "Composite",
    "Gradient",
    "PropagationError",
    "Rule",
    "attach",
    "call_model",
    "lookup",
    "propagate",
    "sum_to",
]


class PropagationError(ValueError):
    """The model contains something relevance propagation has no rule for."""


class Rule:
    """How relevance passes one module.

    A rule runs the module in :meth:`forward` (without autograd: it returns the module's output and whatever its
    backward needs) and maps the relevance of the output to the relevance of each positional input in
    :meth:`backward`. Rules hold no per-call state, so one instance serves every module of its type.
    """

    #: short name shown in tables and error messages
    name: str = "rule"
    #: False: the module runs unchanged and its ordinary gradient carries relevance (see :class:`Gradient`)
    wraps: bool = True
    #: True: the module is folded into the layer before it (:mod:`motion_relevance.explain.canonize`)
    folds: bool = False

    def check(self, module: nn.Module) -> str | None:
        """Why this rule cannot handle ``module`` (checked before any work), or None."""
        return None

    def forward(self, module: nn.Module, forward: Callable[..., Tensor], args: tuple[Any, ...]
                ) -> tuple[Tensor, tuple[Any, ...]]:
        """The module's output for ``args`` (``forward`` is the module's own forward) and the values — tensors or
        not — that :meth:`backward` receives as ``saved``."""
        raise NotImplementedError

    def backward(self, module: nn.Module, saved: tuple[Any, ...], relevance: Tensor) -> Sequence[Tensor | None]:
        """Relevance of each positional input (``None`` for inputs that get none) from the output's ``relevance``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gradient(Rule):
    """The module runs unchanged; its gradient routes relevance as it is (reshape, concatenation, eval dropout)."""

    name = "gradient (relevance routed unchanged)"
    wraps = False


class Composite:
    """A table ``{module type: rule}``. A subclass of a listed type uses its rule only if it inherits ``forward``
    unchanged; one that overrides ``forward`` may compute something else and needs its own entry.

    Args:
        name: short name (``"dtd"``, ``"attnlrp"``).
        rules: the table.
    """

    def __init__(self, name: str, rules: Mapping[type[nn.Module], Rule],
                 named: Mapping[str, Rule] | None = None) -> None:
        self.name = name
        self.rules: dict[type[nn.Module], Rule] = {}
        for module_type, rule in rules.items():
            self.register(module_type, rule)
        #: Rules of classes from optional libraries, by ``"<module>.<qualified name>"`` (nothing is imported):
        #: transformers' activation classes.
        self.named: dict[str, Rule] = dict(named or {})

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, {len(self.rules)} module types)"

    def register(self, module_type: type[nn.Module], rule: Rule) -> None:
        """Use ``rule`` for every module of exactly ``module_type`` (replaces an existing entry)."""
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise TypeError(f"rules are keyed by nn.Module subclasses, got {module_type!r}")
        if not isinstance(rule, Rule):
            raise TypeError(f"the rule for {module_type.__name__} must be a Rule, got {type(rule).__name__}")
        self.rules[module_type] = rule

    def with_rules(self, rules: Mapping[type[nn.Module], Rule], name: str | None = None) -> Composite:
        """A new composite: this table updated with ``rules``."""
        return Composite(name or self.name, {**self.rules, **rules}, self.named)

    def rule_for(self, module: nn.Module) -> Rule | None:
        """The rule of ``type(module)``, or of a base class in the table whose ``forward`` it inherits unchanged
        (the table by type first, then :attr:`named`)."""
        rule = lookup(self.rules, module)
        if rule is not None or not self.named:
            return rule
        cls = type(module)
        for base in cls.__mro__:
            found = self.named.get(f"{base.__module__}.{base.__qualname__}")
            if found is not None and (base is cls or getattr(cls, "forward", None) is getattr(base, "forward", None)):
                return found
        return None

    def table(self) -> list[tuple[str, str]]:
        """``(module type, rule name)`` rows, sorted by type name."""
        rows = [(t.__name__, r.name) for t, r in self.rules.items()]
        return sorted(rows + [(n.rsplit(".", 1)[-1], r.name) for n, r in self.named.items()])

    def describe(self) -> str:
        return "; ".join(f"{t}: {r}" for t, r in self.table())


# ------------------------------------------------------------------------------------------- running rules


class _RuleFunction(torch.autograd.Function):
    """One module call under its rule: forward = the module, backward = the rule's relevance redistribution."""

    @staticmethod
    def forward(ctx, rule: Rule, module: nn.Module, forward: Callable[..., Tensor], name: str,  # type: ignore[override]
                *args: Any) -> Tensor:
        out, saved = rule.forward(module, forward, args)
        ctx.set_materialize_grads(False)  # no relevance arrives (a gate's branch): backward returns at once
        mask = tuple(isinstance(s, Tensor) for s in saved)
        ctx.save_for_backward(*(s for s, is_tensor in zip(saved, mask) if is_tensor))
        ctx.others = tuple(None if is_tensor else s for s, is_tensor in zip(saved, mask))
        ctx.mask, ctx.rule, ctx.module, ctx.module_name, ctx.nargs = mask, rule, module, name, len(args)
        return out

    @staticmethod
    def backward(ctx, relevance: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if relevance is None:
            return (None,) * (4 + ctx.nargs)
        tensors = iter(ctx.saved_tensors)
        saved = tuple(next(tensors) if is_tensor else other for is_tensor, other in zip(ctx.mask, ctx.others))
        result = tuple(ctx.rule.backward(ctx.module, saved, relevance))
        if len(result) != ctx.nargs:
            raise RuntimeError(f"rule {ctx.rule!r} of {ctx.module_name!r} returned {len(result)} relevance tensors "
                               f"for {ctx.nargs} inputs")
        return (None, None, None, None, *result)


_RULE_NODE = "_RuleFunctionBackward"


def _install(module: nn.Module, name: str, rule: Rule) -> Callable[[], None]:
    """Give ``module`` (an object of the explanation copy) the forward of ``rule``; returns the undo."""
    own = module.__dict__.get("forward")
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Tensor:
        if kwargs:
            raise TypeError(f"relevance propagation calls module {name!r} with positional inputs only, got keyword "
                            f"arguments {sorted(kwargs)}")
        return _RuleFunction.apply(rule, module, original, name, *args)

    module.forward = forward  # type: ignore[method-assign]

    def undo() -> None:
        if own is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = own  # type: ignore[method-assign]

    return undo


@contextmanager
def attach(
    model: nn.Module,
    composite: Composite,
    leaves: Sequence[str],
    folds: Mapping[str, str] | None = None,
    overrides: Mapping[str, Rule] | None = None,
) -> Iterator[nn.Module]:
    """Prepare ``model`` for :func:`propagate` inside the ``with`` block; restore it on exit (also on errors).

    Args:
        model: the model to rewrite — give it an explanation copy
            (:func:`motion_relevance.explain._copy.eval_copy`): folding replaces its layers' parameter objects.
        composite: the rule table.
        leaves: names of the leaf modules the forward pass calls (``ModelStructure.leaf_order``).
        folds: ``{BatchNorm name: name of the layer it is folded into}`` (``ModelStructure.bn_folds``).
        overrides: rules by module name, before the table (e.g. zB on the first layer).
    """
    folds = dict(folds or {})
    overrides = dict(overrides or {})
    modules = dict(model.named_modules())
    undo: list[Callable[[], None]] = []
    try:
        for bn_name, layer_name in folds.items():
            undo.append(fold_batchnorm(modules[layer_name], modules[bn_name]))
        done: set[int] = set()
        for name in dict.fromkeys(leaves):
            module = modules[name]
            if id(module) in done or name in folds:
                continue
            done.add(id(module))
            rule = overrides.get(name) or composite.rule_for(module)
            if rule is None:
                raise PropagationError(unsupported_message(name, module, composite, composite.name))
            if rule.folds:
                raise PropagationError(f"{type(module).__name__} {name!r} must be folded but is not in folds")
            if rule.wraps:
                undo.append(_install(module, name, rule))
        yield model
    finally:
        for fn in reversed(undo):
            fn()


def unsupported_message(name: str, module: nn.Module, composite: Composite, method: str) -> str:
    """The refusal for a module type the composite has no rule for, with the table of supported types."""
    rows = ", ".join(f"{t} ({r})" for t, r in composite.table())
    return (f"{method} has no rule for module {name!r} ({type(module).__name__}); supported module types: "
            f"{rows}. Add one with Composite.register / with_rules (see motion_relevance.explain.propagation)")


def call_model(model: nn.Module, inputs: Sequence[Tensor], multi: bool) -> Any:
    """``model(x)`` for one input, ``model([x1, x2, ...])`` for a multi-input model (SlowFast's convention)."""
    return model(list(inputs)) if multi else model(inputs[0])


# ----------------------------------------------------------------------------------------- graph check

#: autograd nodes (name without ``Backward<n>``) whose gradient only moves, copies back or sums entries: they route
#: relevance without changing its total
_ROUTING = frozenset({
    "View", "UnsafeView", "Reshape", "ReshapeAlias", "Permute", "Transpose", "T", "Expand", "Repeat", "Cat", "Stack",
    "Split", "SplitWithSizes", "UnsafeSplit", "UnsafeSplitWithSizes", "Unbind", "Slice", "Select", "Index",
    "IndexSelect", "Gather", "Squeeze", "Unsqueeze", "Clone", "ToCopy", "Alias", "Flip", "Roll", "Narrow", "Copy",
    "Contiguous",
})
_ADD = frozenset({"Add", "Sub"})  # with one input-dependent operand: a bias; relevance passes to that operand
_SCALE = frozenset({"Mul", "Div", "Neg"})  # with one input-dependent operand (``self`` for Div): identity rule


def _kind(node: Any) -> str:
    return re.sub(r"Backwards?\d*$", "", node.name().rsplit("::", 1)[-1])


def _passes(kind: str, live: list[int]) -> bool:
    """The node routes relevance unchanged: a leaf, a re-indexing, or a bias added to one input-dependent tensor."""
    if kind == "AccumulateGrad" or kind in _ROUTING:
        return True
    return kind in _ADD and len(live) == 1 and (kind == "Add" or live == [0])


def _identity_hook(grad_inputs: tuple[Tensor | None, ...], grad_outputs: tuple[Tensor | None, ...]
                   ) -> tuple[Tensor | None, ...]:
    out = grad_outputs[0]
    return tuple(None if g is None or out is None else sum_to(out, g.shape) for g in grad_inputs)


def check_graph(root: Any, method: str) -> list[Any]:
    """Walk the autograd graph from ``root`` (the logits' ``grad_fn``): refuse operations that have no rule and
    attach the identity rule to scalings by constants; returns the node hook handles (remove them after use)."""
    handles: list[Any] = []
    problems: list[str] = []
    seen: set[Any] = set()
    stack: list[tuple[Any, str]] = [(root, "the model's output")]
    while stack:
        node, below = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        parents = [fn for fn, _ in node.next_functions]
        kind = _kind(node)
        live = [i for i, fn in enumerate(parents) if fn is not None]
        if node.name() == _RULE_NODE:
            below = f"module {node.module_name!r}"
        elif _passes(kind, live):
            pass
        elif kind in _SCALE and len(live) == 1 and (kind != "Div" or live == [0]):
            handles.append(node.register_hook(_identity_hook))
        else:
            what = "sum of two input-dependent tensors" if kind in _ADD and len(live) == 2 else f"{node.name()}"
            problems.append(f"a {what} written in a forward() method (its result feeds {below})")
        stack.extend((fn, below) for fn in parents)
    if problems:
        for handle in handles:
            handle.remove()
        raise PropagationError(
            f"{method} cannot propagate relevance through {'; '.join(dict.fromkeys(problems))}. Every operation "
            "between the input and the logits must be a module with a rule (models.layers.Add for residual sums, "
            "GateMul for gates, MatMul for products of two tensors, nn.ReLU / nn.SiLU / nn.GELU modules for "
            "activations) or a pure reshape/concatenation"
        )
    return handles


# ----------------------------------------------------------------------------------------------- running


def propagate(
    model: nn.Module,
    inputs: Sequence[Tensor],
    composite: Composite,
    leaves: Sequence[str],
    *,
    target: Tensor | None = None,
    folds: Mapping[str, str] | None = None,
    overrides: Mapping[str, Rule] | None = None,
    multi: bool = False,
    method: str | None = None,
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Relevance of each input for the target logit: one forward pass with the rules attached, one backward pass.

    Args:
        model: an explanation copy (see :func:`attach`), in eval mode.
        inputs: input tensors ``(B, ...)`` (leaves; gradients are not required on them).
        composite, leaves, folds, overrides: as for :func:`attach`.
        target: ``(B,)`` class per sample; ``None`` = the predicted class (argmax of this forward's logits).
        multi: call the model with a list of inputs (``model([x1, x2])``) instead of ``model(x)``.
        method: name for error messages (default: the composite's).

    Returns:
        The relevance of each input (same shapes; zeros for an input the target does not depend on), and the target
        classes. Relevance starts as the target logit: with rules that conserve it, each clip's input relevance sums
        to that logit.
    """
    method = method or composite.name
    xs = tuple(x.detach().requires_grad_(True) for x in inputs)
    with attach(model, composite, leaves, folds, overrides), torch.enable_grad():
        logits = call_model(model, xs, multi)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise PropagationError(f"{method} needs logits of shape (B, classes), got {type(logits).__name__}")
        if logits.grad_fn is None:
            raise PropagationError(f"{method}: the logits do not depend on the inputs")
        chosen = logits.detach().argmax(1) if target is None else target.to(logits.device)
        picked = logits.gather(1, chosen.view(-1, 1)).squeeze(1)
        handles = check_graph(logits.grad_fn, method)
        try:
            grads = torch.autograd.grad(picked, xs, grad_outputs=picked.detach(), allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
    relevance = tuple(torch.zeros_like(x) if g is None else g.detach() for x, g in zip(xs, grads))
    return relevance, chosen


def sum_to(tensor: Tensor, shape: Sequence[int]) -> Tensor:
    """``tensor`` summed over the dimensions a broadcast to its shape added (the inverse of broadcasting ``shape``)."""
    shape = tuple(shape)
    if tuple(tensor.shape) == shape:
        return tensor
    extra = tensor.dim() - len(shape)
    if extra:
        tensor = tensor.sum(tuple(range(extra)))
    dims = tuple(i for i, (a, b) in enumerate(zip(tensor.shape, shape)) if b == 1 and a != 1)
    return tensor.sum(dims, keepdim=True) if dims else tensor
