"""Frame-inflation baseline (Hiley et al., 2019): temporal relevance as original minus spatial relevance.

For each frame ``t`` of a clip, a *static* clip made of frame ``t`` repeated ``T`` times carries no motion, so
its explanation is purely spatial. The spatial relevance of frame ``t`` is the explanation of that static
clip averaged over its ``T`` frames (``reduce="mean"``, default: uses every frame of the static explanation
and keeps the per-frame scale of the original, whose relevance is also spread over ``T`` frames), or the
static explanation at frame ``t`` (``reduce="frame"``: same temporal position, so the same border effects of
temporal padding as the original). The temporal relevance is ``R(clip) - R_spatial``, shape ``(B, C, T, H, W)``.

Cost: ``T + 1`` explanations per clip (plus one forward for the predicted class); the ``B * T`` static
clips are explained in batches of ``chunk_size`` clips.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.explain._copy import eval_copy, predicted_class
from motion_relevance.explain.explainers import Explainer
from motion_relevance.explain.validation import analyse_model, check_clips, check_target_range, normalise_target

__all__ = ["FrameInflation"]


class FrameInflation(Explainer):
    """Temporal relevance by frame inflation around any explainer (``base_explainer``).

    Args:
        base_explainer: the explainer whose explanations are compared (e.g. :class:`DeepTaylor`).
        chunk_size: static clips explained per call of the base explainer (memory / speed trade-off).
        reduce: ``"mean"`` (spatial relevance = static explanation averaged over time) or ``"frame"``
            (the static explanation at frame ``t``).
        name: metric-key name (default ``"fi_<base name>"``).

    Returns (when called) the temporal relevance ``R(clip) - R_spatial`` of shape ``(B, C, T, H, W)``; the static
    clips are explained for the same target as the original clip (its prediction when ``target=None``).
    """

    def __init__(
        self, base_explainer: Explainer, chunk_size: int = 16, reduce: str = "mean", name: str | None = None
    ) -> None:
        if not callable(base_explainer):
            raise TypeError(f"base_explainer must be an explainer, got {type(base_explainer).__name__}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if reduce not in ("mean", "frame"):
            raise ValueError(f"reduce must be 'mean' or 'frame', got {reduce!r}")
        base_name = getattr(base_explainer, "name", "explainer")
        super().__init__(name if name is not None else f"fi_{base_name}")
        self.base = base_explainer
        self.chunk_size = chunk_size
        self.reduce = reduce

    def __repr__(self) -> str:
        return f"FrameInflation({self.base!r}, chunk_size={self.chunk_size}, reduce={self.reduce!r})"

    def __call__(self, model: nn.Module, clips: Tensor, target: Any = None) -> Tensor:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_clips(clips)
        batch, _, frames = clips.shape[:3]
        target_t = normalise_target(target, batch)
        check_target_range(target_t, analyse_model(model, clips).num_outputs)
        if target_t is None:
            target_t = predicted_class(eval_copy(model), clips.detach())
        original = self.base(model, clips, target_t)
        spatial = torch.empty_like(original)
        # static clip k = (clip b, frame t) with k = b * T + t, built chunk by chunk (never all at once)
        total = batch * frames
        for start in range(0, total, self.chunk_size):
            ks = torch.arange(start, min(start + self.chunk_size, total))
            bs, ts = ks // frames, ks % frames
            static = clips.detach()[bs, :, ts].unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()
            rel = self.base(model, static, target_t[bs])
            if rel.shape[1] != original.shape[1]:
                raise ValueError(f"base explainer returned {rel.shape[1]} channels for static clips")
            frame_rel = rel.mean(2) if self.reduce == "mean" else rel[torch.arange(len(ks)), :, ts]
            spatial[bs, :, ts] = frame_rel
        return original - spatial
