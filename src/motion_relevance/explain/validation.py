"""Input and model checks for the explainers; every check runs before any hook is attached.

The model's structure comes from one traced forward pass (:mod:`motion_relevance.explain.tracing`);
:func:`require_relu_modules` and :func:`require_rules` check it against what an explainer needs.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance import checks
from motion_relevance.checks import CLIP_LAYOUT
from motion_relevance.explain.canonize import FOLDABLE_LAYERS
from motion_relevance.explain.propagation import Composite, Rule, unsupported_message
from motion_relevance.explain.tracing import ModelStructure, analyse_model

__all__ = [  # ModelStructure and analyse_model: re-exported from .tracing
    "ModelStructure",
    "analyse_model",
    "check_clips",
    "check_finite",
    "check_inputs",
    "get_layer",
    "normalise_target",
    "require_relu_modules",
    "require_rules",
]


def check_clips(clips: Any, what: str = "clips") -> None:
    """Clips must be a non-empty, finite, floating-point tensor ``(B, C, T, H, W)``."""
    if isinstance(clips, Tensor) and clips.dim() != 5:
        raise ValueError(
            f"{what} must have shape {CLIP_LAYOUT}, got {tuple(clips.shape)}; "
            "for a single clip (C, T, H, W) use clips.unsqueeze(0)"
        )
    if isinstance(clips, Tensor) and not clips.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor (normalised pixels), got {clips.dtype}; "
            "normalise the frames and convert with .float()"
        )
    checks.check_clips(what, clips)  # the type and an empty dimension
    check_finite(clips, what)


def check_inputs(clips: Any) -> tuple[tuple[Tensor, ...], bool]:
    """Clips ``(B, C, T, H, W)``, or a list / tuple of such tensors with the same ``B`` (a multi-input model such
    as SlowFast: ``[slow, fast]``); each is checked like :func:`check_clips`. Returns ``(inputs, multi)``."""
    if isinstance(clips, Tensor):
        check_clips(clips)
        return (clips,), False
    if not isinstance(clips, (list, tuple)) or not clips:
        raise TypeError(
            "clips must be a torch.Tensor (B, C, T, H, W) or a non-empty list of such tensors (one per input of a "
            f"multi-input model, e.g. SlowFast's [slow, fast]), got {type(clips).__name__}"
        )
    for i, x in enumerate(clips):
        check_clips(x, f"clips[{i}]")
    batches = [int(x.shape[0]) for x in clips]
    if len(set(batches)) != 1:
        raise ValueError(f"the clips of a multi-input model must share the batch size B, got {batches}")
    return tuple(clips), True


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
    """The submodule called ``name`` (as in ``model.named_modules()``), or a ``ValueError`` with the names near it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"layer must be a layer name (str) such as 'conv5b' or 'layer4', got {name!r}")
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n]
        near = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
        convs = [n for n, m in modules.items() if n and isinstance(m, FOLDABLE_LAYERS)]
        shown = convs if len(convs) <= 40 else [*convs[:20], "…", *convs[-20:]]
        raise ValueError(
            f"model has no layer {name!r}"
            + (f"; did you mean {near}" if near else "")
            + f"; convolution/linear layers: {shown}"
        )
    return modules[name]


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
            f"{method} needs ReLUs as nn.ReLU modules (and other activations as their modules), but the forward "
            f"pass uses functional ReLUs: {st.functional_relus[:5]}; replace F.relu/torch.relu/x.relu() (F.gelu, "
            "F.silu) with an nn.ReLU() (nn.GELU(), nn.SiLU()) module attribute called at that place"
        )


def require_rules(model: nn.Module, st: ModelStructure, composite: Composite, overrides: dict[str, Rule],
                  method: str) -> None:
    """Every leaf module the forward pass calls has a rule that accepts it, and every BatchNorm can be folded."""
    modules = dict(model.named_modules())
    seen: set[int] = set()
    for name in dict.fromkeys(st.leaf_order):
        module = modules[name]
        if id(module) in seen:
            continue
        seen.add(id(module))
        rule = overrides.get(name) or composite.rule_for(module)
        if rule is None:
            raise TypeError(unsupported_message(name, module, composite, method))
        problem = rule.check(module)
        if problem:
            raise ValueError(f"{method} cannot use rule {rule.name!r} on module {name!r} ({type(module).__name__}): "
                             f"{problem}")
        if rule.folds and name not in st.bn_folds:
            raise ValueError(
                f"{method} cannot fold {type(module).__name__} {name!r} into the layer before it: "
                f"{st.bn_unfoldable.get(name, 'it did not run in the traced forward pass')}. DTD handles BatchNorm "
                "right after a conv/linear layer whose output only it uses (conv-BN-ReLU)"
            )
