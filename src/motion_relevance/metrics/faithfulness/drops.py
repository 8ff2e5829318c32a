"""Score drops: a mask's voxels replaced (:func:`freeze_drop`), every voxel frozen or averaged
(:func:`motion_reliance`), and the matched-budget test (:func:`matched_budget_drops`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from motion_relevance.metrics.faithfulness.ranking import Seed, matched_budget_masks, voxel_mask, voxel_scores
from motion_relevance.metrics.faithfulness.references import STATIC_REMOVED, check_reference
from motion_relevance.metrics.faithfulness.scoring import DEFAULT_BATCH_SIZE, InputBuilder, check_call, drops

__all__ = ["freeze_drop", "matched_budget_drops", "motion_reliance"]


def freeze_drop(
    model: Any,
    clips: Tensor,
    mask: Tensor,
    target: Any = None,
    *,
    reference: str = "freeze",
    blur_sigma: float = 5.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_builder: InputBuilder | None = None,
) -> Tensor:
    """Score drop ``s(x) - s(x with the voxels of mask replaced by the reference)``, float32 ``(B,)``.

    Args:
        mask: bool ``(B, T, H, W)`` or ``(B, 1, T, H, W)``: the voxels to replace (all channels).
        reference: ``"freeze"`` (default: the motion test), ``"mean"`` or ``"blur"``.
        Others as :func:`~.curves.deletion_curve`.

    Raises:
        ValueError / TypeError before any forward pass (bad mask shape or dtype, unknown reference, ``blur_sigma``
        <= 0, ``batch_size`` < 1); a target outside the classes after the clean forward pass.
    """
    batch_size = check_call(model, clips, batch_size, input_builder)
    kind, sigma = check_reference(reference, blur_sigma)
    flat = voxel_mask(mask, clips)
    return drops(model, clips, [flat], target, [kind], sigma, batch_size, input_builder)[:, 0]


def motion_reliance(
    model: Any,
    clips: Tensor,
    target: Any = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_builder: InputBuilder | None = None,
) -> Tensor:
    """Drops ``[s(x) - s(freeze(x)), s(x) - s(static_removed(x)), s(x) - s(mean(x))]`` with every voxel replaced,
    float32 ``(B, 3)`` (one clean and three perturbed forward passes per clip).

    Columns: ``D_m`` what the model loses when the motion is removed (every frame the clip's temporal mean, the
    appearance kept), ``D_a`` what it loses when the appearance is removed and the changes kept
    (:func:`~.references.static_removed`), and what it loses when everything is removed (the ``"mean"``
    reference). ``MotionReliance`` turns the first two into the share ``D_m+ / (D_m+ + D_a+)`` in ``[0, 1]``.
    Arguments and errors as :func:`freeze_drop`.
    """
    batch_size = check_call(model, clips, batch_size, input_builder)
    return drops(model, clips, [None, None, None], target, ["freeze", STATIC_REMOVED, "mean"], 1.0, batch_size,
                 input_builder)


def matched_budget_drops(
    model: Any,
    clips: Tensor,
    relevance: Tensor,
    selective: Tensor,
    target: Any = None,
    *,
    reference: str = "freeze",
    blur_sigma: float = 5.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_builder: InputBuilder | None = None,
    seed: Seed = 0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The matched-budget freeze test: drops from replacing ``M``, the baseline's top ``m`` and ``m`` random voxels.

    Returns ``{"selective", "baseline", "random"}``: float32 ``(B,)`` drops (:func:`freeze_drop`, one clean forward
    shared by the three), and ``"budget"``: ``m`` int64 ``(B,)`` (a clip with ``m = 0`` has three zero drops).
    ``relevance`` is the baseline explanation, ``selective`` its selective map; both ``(B, 1 or C, T, H, W)`` like
    the clips. Errors as :func:`freeze_drop` and :func:`~.curves.deletion_curve`.
    """
    batch_size = check_call(model, clips, batch_size, input_builder)
    kind, sigma = check_reference(reference, blur_sigma)
    voxel_scores(relevance, clips)
    voxel_scores(selective, clips, "selective")
    masks = matched_budget_masks(relevance.to(clips.device), selective.to(clips.device), seed=seed, generator=generator)
    order = ("selective", "baseline", "random")
    flat = [masks[k].to(clips.device).flatten(1) for k in order]
    scores = drops(model, clips, flat, target, [kind] * 3, sigma, batch_size, input_builder)
    out = {k: scores[:, i] for i, k in enumerate(order)}
    out["budget"] = masks["budget"]
    return out
