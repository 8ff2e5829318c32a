"""Deletion and insertion curves (in the explanation's order or a seeded random order) and their area."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from motion_relevance.metrics.faithfulness.ranking import Seed, random_ranks, ranks_of_scores, voxel_scores
from motion_relevance.metrics.faithfulness.references import check_reference
from motion_relevance.metrics.faithfulness.scoring import (
    DEFAULT_BATCH_SIZE,
    InputBuilder,
    check_call,
    check_steps,
    curves,
)

__all__ = ["curve_auc", "deletion_curve", "random_curve"]


def deletion_curve(
    model: Any,
    clips: Tensor,
    relevance: Tensor,
    target: Any = None,
    *,
    steps: int = 10,
    reference: str = "freeze",
    insertion: bool = False,
    blur_sigma: float = 5.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_builder: InputBuilder | None = None,
) -> Tensor:
    """Target probability while the explanation's voxels are removed (or inserted), float32 ``(B, steps + 1)``.

    Voxels ``(t, h, w)`` are ordered by ``A = relevance.sum(C)``, largest first, ties by flat index (stable). At
    step ``k = 0..K`` (``K = steps``) the first ``n_k = floor(k * N / K)`` voxels (``N = T*H*W``) have all their
    channels replaced by the reference; ``curve[:, k]`` is the softmax probability of the target for that input.
    With ``insertion=True`` the input starts as the reference and the voxels are put back in the same order (step
    ``K`` is the clip itself). See :func:`curve_auc` for the area, ``docs/method.md`` for the method.

    Args:
        model: ``model(inputs) -> logits (B, num_classes)``; run in eval mode without gradients, each module's
            training flag restored afterwards.
        clips: ``(B, C, T, H, W)`` floating point.
        relevance: the explanation, ``(B, 1, T, H, W)`` (e.g. Grad-CAM) or ``(B, C, T, H, W)`` (pixel methods).
        target: class per clip: an int, ``B`` ints, or None for the predicted class of the clean clip.
        steps: ``K`` in ``[1, T*H*W]`` (at most one step per voxel).
        reference: ``"freeze"``, ``"mean"`` or ``"blur"`` (:func:`~.references.reference`).
        insertion: insertion curve instead of deletion.
        blur_sigma: Gaussian std in pixels for ``"blur"`` (> 0).
        batch_size: perturbed clips per forward pass (>= 1); the ``B * K`` perturbed inputs (plus the ``B`` clean
            clips, run first) go through the model in batches of this size, mixing clips.
        input_builder: optional ``clip batch -> model input`` (e.g. the pathways of a SlowFast network).

    Raises:
        ValueError / TypeError (before any forward pass): ``steps`` outside ``[1, T*H*W]``, ``blur_sigma`` <= 0, an
            unknown ``reference``, ``batch_size`` < 1, relevance not ``(B, 1 or C, T, H, W)`` like the clips or
            holding NaN, clips not finite floating point; a ``target`` outside the model's classes is reported after
            the one clean forward pass, before any perturbed one.
    """
    batch_size = check_call(model, clips, batch_size, input_builder)
    kind, sigma = check_reference(reference, blur_sigma)
    steps = check_steps(steps, clips[0, 0].numel())
    a = voxel_scores(relevance, clips)
    return curves(model, clips, ranks_of_scores(a), target, steps, kind, bool(insertion), sigma, batch_size,
                  input_builder)


def random_curve(
    model: Any,
    clips: Tensor,
    target: Any = None,
    *,
    steps: int = 10,
    reference: str = "freeze",
    insertion: bool = False,
    blur_sigma: float = 5.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_builder: InputBuilder | None = None,
    seed: Seed = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The random-order floor: :func:`deletion_curve` with a seeded uniformly random voxel order per clip.

    The order comes from :func:`~.ranking.random_ranks` (``generator``, else a generator seeded with ``seed``, or one
    generator per clip when ``seed`` holds ``B`` integers), drawn on the CPU: the same seed gives the same curve on
    any device and for any ``batch_size``. Other arguments and errors as :func:`deletion_curve`.
    """
    batch_size = check_call(model, clips, batch_size, input_builder)
    kind, sigma = check_reference(reference, blur_sigma)
    b, _, t, h, w = clips.shape
    steps = check_steps(steps, t * h * w)
    ranks = random_ranks(b, t * h * w, seed=seed, generator=generator, device=clips.device)
    return curves(model, clips, ranks, target, steps, kind, bool(insertion), sigma, batch_size, input_builder)


def curve_auc(curve: Tensor) -> Tensor:
    """Area under curves ``(B, K + 1)`` over ``k / K in [0, 1]`` (trapezoid rule) → ``(B,)``.

    ``(s_0 / 2 + s_1 + ... + s_(K-1) + s_K / 2) / K``; a faithful explanation has a low deletion and a high insertion
    area.
    """
    if not isinstance(curve, Tensor) or curve.dim() != 2 or curve.shape[1] < 2:
        raise ValueError(f"curve must be a tensor (B, steps + 1) with steps >= 1, got {getattr(curve, 'shape', curve)}")
    k = curve.shape[1] - 1
    return (curve[:, 1:-1].sum(1) + 0.5 * (curve[:, 0] + curve[:, -1])) / k
