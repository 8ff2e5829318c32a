"""The model an explainer works on: an eval-mode copy that shares the caller's weights, and target selection.

``eval_copy`` gives every module of the tree a new object with its own attribute dict, maps every parameter to a
new ``nn.Parameter`` on the *same storage* (``p.data``, ``requires_grad=False``, own version counter) and every
buffer to an alias, so the copy costs no memory however large the model is, and well under a millisecond for C3D.
Containers in a module's attribute dict (its parameter / buffer / child tables, hook tables, other dicts, lists
and sets) are copied one level deep, other values (numbers, tuples, hook functions) are shared; modules whose class
customises pickling (``__getstate__``: LightningModules, torchmetrics metrics) are deep-copied, their plain
descendants, parameters and buffers resolved to the copies above. Explainers install their rules on the copy's own
module objects and replace the copy's parameter objects (never their storage in place; Captum's LRP, kept as a
reference, swaps ``weight.data`` for new tensors and restores into those), so the caller's training flag, weights,
``requires_grad`` flags, ``.grad`` fields and hooks are never touched. (A full ``copy.deepcopy`` of
every module cost 2-4x more: the wrapper's largest fixed overhead on small models.)

Two assumptions about ``torch.nn.Module`` internals, each in one function below and tested in
``tests/test_propagation.py`` so a torch release that breaks them fails loudly: a module's parameters, buffers and
children live in the dicts ``_parameters`` / ``_buffers`` / ``_modules`` of its ``__dict__``, and its hook tables
are the dict attributes whose names end in ``hooks``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["TargetLogit", "eval_copy", "hook_tables", "predicted_class"]

_CONTAINERS = (dict, list, set)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, set)  # copied by their constructor (copy.copy is 10x slower)
_TABLES = ("_parameters", "_buffers", "_modules")


def _rebuild_tables(state: dict[str, Any], memo: dict[int, Any]) -> None:
    # Private: the copy needs its own parameter/buffer/child tables pointing at the aliases; torch keeps them in
    # these three dicts of the module's __dict__ (public accessors return views, not the tables to replace).
    for table in _TABLES:
        state[table] = {k: None if v is None else memo[id(v)] for k, v in state[table].items()}


def hook_tables(module: nn.Module) -> list[dict[Any, Any]]:
    """The hook tables of ``module`` (forward, backward, state-dict hooks ...), found by name."""
    # Private: a deep-copied module must not deep-copy its hooks' owners, so its hook tables are pre-copied one level;
    # torch names every hook table ``_..._hooks`` (the set grows between releases, hence found by suffix).
    return [v for k, v in vars(module).items() if k.endswith("hooks") and isinstance(v, dict)]


def _custom_pickling(module: nn.Module) -> bool:
    return type(module).__getstate__ is not nn.Module.__getstate__


def eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` sharing its weight storage, with ``requires_grad=False`` parameters."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.data, requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b.data
    trainer = model.__dict__.get("_trainer")  # a LightningModule's trainer: share it, never copy it
    if trainer is not None:
        memo[id(trainer)] = trainer
    modules = list(model.modules())  # each module once, also when shared
    plain = [m for m in modules if not _custom_pickling(m)]
    for module in plain:
        memo[id(module)] = object.__new__(type(module))
    for module in modules:  # deep copies resolve plain descendants, parameters and buffers through the memo
        if id(module) not in memo:
            for sub in module.modules():
                for hooks in hook_tables(sub):  # new tables, same hook functions (never deep-copy a hook's owner)
                    memo.setdefault(id(hooks), type(hooks)(hooks))
            memo[id(module)] = copy.deepcopy(module, memo)
    for module in plain:
        state = dict(module.__dict__)
        _rebuild_tables(state, memo)
        for key, value in state.items():
            if key not in _TABLES and isinstance(value, _CONTAINERS):
                state[key] = type(value)(value) if type(value) in _PLAIN_CONTAINERS else copy.copy(value)
        memo[id(module)].__setstate__(state)
    return memo[id(model)].eval()  # .eval(), not a flag: modules may override train()


def _call(model: nn.Module, clips: Sequence[Tensor], multi: bool) -> Any:
    return model(list(clips)) if multi else model(clips[0])


class TargetLogit(nn.Module):
    """Wraps a classifier so it returns the target logit per clip, shape ``(B,)``.

    With ``target=None`` the class is the prediction of the *first* forward call (latched), which is the forward on
    the unmodified input for Grad-CAM and Guided Backprop; so no extra forward pass is needed to find the predicted
    class. ``multi=True``: the wrapper is called with one tensor per input (Captum's convention) and calls the model
    with their list (``model([slow, fast])``).
    """

    def __init__(self, model: nn.Module, target: Tensor | None, multi: bool = False) -> None:
        super().__init__()
        self.model = model
        self.target = target
        self.multi = multi

    def forward(self, *clips: Tensor) -> Tensor:
        logits = _call(self.model, clips, self.multi)
        if self.target is None:
            self.target = logits.detach().argmax(1)
        index = self.target.to(logits.device)
        if index.shape[0] != logits.shape[0]:
            raise RuntimeError(
                f"target has {index.shape[0]} entries but the model was called on {logits.shape[0]} clips"
            )
        return logits.gather(1, index.view(-1, 1)).squeeze(1)


def predicted_class(model: nn.Module, clips: Tensor | Sequence[Tensor]) -> Tensor:
    """``argmax`` of the logits as int64 ``(B,)`` on the CPU (one no-grad forward); a list of tensors is one
    multi-input batch."""
    multi = not isinstance(clips, Tensor)
    with torch.no_grad():
        return _call(model, (clips,) if isinstance(clips, Tensor) else tuple(clips), multi).argmax(1).cpu()
