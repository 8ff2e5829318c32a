"""The model an explainer works on: an eval-mode copy that shares the caller's weights, and target selection.

``eval_copy`` copies the module tree and maps every parameter to a new ``nn.Parameter`` on the *same storage*
(``p.data``, ``requires_grad=False``, own version counter) and every buffer to an alias, so the copy costs no
memory however large the model is, and well under a millisecond for C3D. Each module becomes a new object with
its own attribute dict; containers in it (the ``_modules``/``_parameters``/``_buffers`` tables, hook tables,
other dicts, lists and sets) are copied one level deep, other values (numbers, tuples, the hook functions) are
shared; modules whose class customises pickling (``__getstate__``, e.g. torchmetrics metrics) are deep-copied as
before. Captum's LRP swaps ``weight.data`` for rewritten tensors (``.data = ...``, never in place) and restores the
copy's state dict afterwards, so the caller's storage keeps its values; the caller's training flag,
``requires_grad`` flags, ``.grad`` fields and hooks are never touched, because hooks and flags live on the copy's
own module objects. (A full ``copy.deepcopy`` of every module cost 2-4x more: the wrapper's largest fixed
overhead on small models.)
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HOOK_DICTS", "TargetLogit", "eval_copy"]

#: Module attributes holding hooks. ``eval_copy`` gives every copied module new containers anyway; this list
#: serves modules that are deep-copied, whose hook tables are copied one level (same hook functions) beforehand,
#: so that hook owners are never deep-copied.
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


_CONTAINERS = (dict, list, set)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, set)  # copied by their constructor (copy.copy is 10x slower)


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
                for attr in HOOK_DICTS:  # new tables, same hook functions (never deep-copy a hook's owner)
                    hooks = sub.__dict__.get(attr)
                    if hooks is not None:
                        memo.setdefault(id(hooks), type(hooks)(hooks))
            memo[id(module)] = copy.deepcopy(module, memo)
    for module in plain:
        state = dict(module.__dict__)
        state["_parameters"] = {k: None if p is None else memo[id(p)] for k, p in module._parameters.items()}
        state["_buffers"] = {k: None if b is None else memo[id(b)] for k, b in module._buffers.items()}
        state["_modules"] = {k: None if m is None else memo[id(m)] for k, m in module._modules.items()}
        for key, value in state.items():
            if key not in ("_parameters", "_buffers", "_modules") and isinstance(value, _CONTAINERS):
                state[key] = type(value)(value) if type(value) in _PLAIN_CONTAINERS else copy.copy(value)
        memo[id(module)].__setstate__(state)
    return memo[id(model)].eval()  # .eval(), not a flag: modules may override train()


class TargetLogit(nn.Module):
    """Wraps a classifier so it returns the target logit per clip, shape ``(B,)``.

    With ``target=None`` the class is the prediction of the *first* forward call (latched), which is the
    forward on the unmodified input for Grad-CAM, Guided Backprop and LRP (LRP's first pass runs the original
    weights); so no extra forward pass is needed to find the predicted class.
    """

    def __init__(self, model: nn.Module, target: Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, clips: Tensor) -> Tensor:
        logits = self.model(clips)
        if self.target is None:
            self.target = logits.detach().argmax(1)
        index = self.target.to(logits.device)
        if index.shape[0] != logits.shape[0]:
            raise RuntimeError(
                f"target has {index.shape[0]} entries but the model was called on {logits.shape[0]} clips"
            )
        return logits.gather(1, index.view(-1, 1)).squeeze(1)


def predicted_class(model: nn.Module, clips: Tensor) -> Tensor:
    """``argmax`` of ``model(clips)`` as int64 ``(B,)`` on the CPU (one no-grad forward)."""
    with torch.no_grad():
        return model(clips).argmax(1).cpu()
