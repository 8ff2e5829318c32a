"""The base class of every explainer: input checks, the eval copy and output checks around one attribution.

Subclasses implement ``_validate`` (model checks before any hook) and ``_explain`` (the attribution itself); the
contract of a call is described in :mod:`motion_relevance.explain.explainers`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.explain._copy import eval_copy
from motion_relevance.explain.canonize_trace import prepare as prepare_canonical
from motion_relevance.explain.canonize_trace import with_notes
from motion_relevance.explain.validation import (
    ModelStructure,
    analyse_model,
    check_finite,
    check_inputs,
    check_target_range,
    normalise_target,
)

__all__ = ["Explainer"]


class Explainer:
    """Base class: validation, the eval copy and output checks around one attribution (``_explain``).

    Subclasses with ``multi_input = True`` receive the inputs as a tuple of tensors in ``_validate`` / ``_explain``
    and return a tuple (one tensor per input); others receive and return one tensor and refuse lists of clips.
    """

    #: short name used for metric keys (``dtd``, ``gradcam``, ``gbp``, ``guided_gradcam``, …)
    name: str = "explainer"
    #: explains multi-input models (``_validate`` / ``_explain`` get tuples)
    multi_input: bool = False
    #: rewrite a model whose forward uses functional ReLUs, ``a + b`` or shared modules first (once per model)
    canonize: bool = False

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"name must be a non-empty string, got {name!r}")
            self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def __call__(self, model: nn.Module, clips: Tensor | Sequence[Tensor], target: Any = None
                 ) -> Tensor | tuple[Tensor, ...]:
        """Relevance ``(B, C, T, H, W)`` of ``target`` (default: the predicted class) for ``clips`` (a tuple of
        those for a list of clips)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        inputs, multi = check_inputs(clips)
        if multi and not self.multi_input:
            raise TypeError(f"{type(self).__name__} explains single-input models; got a list of {len(inputs)} clips")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs gradients but runs under torch.inference_mode(); in Lightning set "
                "Trainer(inference_mode=False) for explanation runs"
            )
        target_t = normalise_target(target, inputs[0].shape[0])
        structure = analyse_model(model, list(inputs) if multi else inputs[0])
        check_target_range(target_t, structure.num_outputs)
        record = None
        if self.canonize and self._wants_canonical(model, structure):  # functional ops made modules (canonize_trace)
            model, structure, record = prepare_canonical(model, list(inputs) if multi else inputs[0], structure,
                                                         getattr(self, "composite", None),
                                                         str(getattr(self, "method", type(self).__name__)))
        try:
            self._validate(model, structure, inputs if self.multi_input else inputs[0])
            work = eval_copy(model)
            prepared = tuple((x.clone() if x.is_inference() else x.detach()).requires_grad_(True) for x in inputs)
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
                relevance = self._explain(work, prepared if self.multi_input else prepared[0], target_t, structure)
        except (ValueError, TypeError) as err:
            noted = with_notes(err, record)
            if noted is err:
                raise
            raise noted from err
        parts = tuple(r.detach() for r in (relevance if isinstance(relevance, tuple) else (relevance,)))
        for i, part in enumerate(parts):
            check_finite(part, f"the {self.name} relevance" + (f" of input {i}" if len(parts) > 1 else ""))
        return parts if multi else parts[0]

    def _wants_canonical(self, model: nn.Module, structure: ModelStructure) -> bool:
        """Whether this call works on the canonized model when ``canonize`` is on (canonization still decides
        whether the model needs a rewrite); default: always."""
        return True

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Any) -> None:
        """Model checks of this method (before any hook); raise ``ValueError`` / ``TypeError``."""

    def _explain(self, model: nn.Module, clips: Any, target: Tensor | None, structure: ModelStructure) -> Any:
        raise NotImplementedError
