"""The model an explainer works on: an eval-mode copy that shares the caller's weights, and target selection.

``eval_copy`` copies the module tree (every module object, its ``_modules``, ``_parameters``, ``_buffers`` and
hook tables) and maps every parameter to a new ``nn.Parameter`` on the *same storage* (``p.data``,
``requires_grad=False``, own version counter) and every buffer to an alias, so the copy costs no memory however
large the model is, and well under a millisecond for C3D. Captum's LRP swaps ``weight.data`` for rewritten
tensors (``.data = ...``, never in place) and restores the copy's state dict afterwards, so the caller's
storage keeps its values; the caller's training flag, ``requires_grad`` flags, ``.grad`` fields and hooks are
never touched, because hooks and flags live on the copy's own module objects. Other attributes (numbers,
tuples, the hook functions themselves) are shared with the caller's modules, as in a shallow copy: explainers
only ever assign attributes on the copy, which never reaches the caller. (A full ``copy.deepcopy`` did the
same job at 2-4x the cost, the wrapper's largest fixed overhead on small models.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HOOK_DICTS", "TargetLogit", "eval_copy"]

#: Module attributes holding hooks: the copy gets new dicts (same hook functions), so hooks that an
#: explainer registers on the copy never reach the caller's modules, and hook owners are not deep-copied.
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


def eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` sharing its weight storage, with ``requires_grad=False`` parameters."""
    parameters: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        parameters[id(p)] = nn.Parameter(p.data, requires_grad=False)
    modules = list(model.modules())  # each module once, also when shared
    copies: dict[int, Any] = {id(m): object.__new__(type(m)) for m in modules}
    for module in modules:
        state = dict(module.__dict__)
        state["training"] = False
        state["_parameters"] = {k: None if p is None else parameters[id(p)] for k, p in module._parameters.items()}
        state["_buffers"] = {k: None if b is None else b.data for k, b in module._buffers.items()}
        state["_modules"] = {k: None if m is None else copies[id(m)] for k, m in module._modules.items()}
        for attr in HOOK_DICTS:  # own hook tables: hooks an explainer adds stay on the copy
            hooks = state.get(attr)
            if hooks is not None:
                state[attr] = type(hooks)(hooks)
        copies[id(module)].__setstate__(state)
    return copies[id(model)]


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
