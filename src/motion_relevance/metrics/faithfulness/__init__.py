"""Faithfulness of an explanation: remove what it marks and watch the model's answer (``docs/method.md``,
"Faithfulness and sanity checks").

Scores are the softmax probability of the target class. A *voxel* is a ``(t, h, w)`` position of a clip
``(B, C, T, H, W)``; removing it replaces all ``C`` channels with a **reference** (:func:`reference`):

* ``"freeze"``: every frame is the clip's temporal mean (removes motion, keeps appearance);
* ``"mean"``: each channel's mean over the clip's ``T*H*W`` voxels (removes appearance and motion);
* ``"blur"``: each frame blurred spatially with a Gaussian of std ``blur_sigma`` pixels.

Modules, one job each: :mod:`.references` (the references), :mod:`.ranking` (voxel orders and masks),
:mod:`.scoring` (the batched forward-pass engine), :mod:`.curves` (deletion/insertion curves and their area),
:mod:`.drops` (score drops, motion reliance, the matched-budget test); every public name is importable from here.

Functions (all batched, no Python loop over voxels; every perturbed input of every clip goes through the model in
batches of ``batch_size`` under ``torch.no_grad()`` with the model in eval mode, each module's training flag
restored afterwards; every argument is checked before any forward pass, the target's range right after the one
clean forward pass and before any perturbed one):

* :func:`deletion_curve` / :func:`random_curve`: scores ``(B, steps + 1)`` while the voxels are removed (or, with
  ``insertion=True``, put back into the reference) in the explanation's order or in a seeded random order;
* :func:`curve_auc`: trapezoid area under such a curve over ``k / K in [0, 1]``;
* :func:`freeze_drop`: ``s(x) - s(x with the mask's voxels replaced)``;
* :func:`matched_budget_masks` / :func:`matched_budget_drops`: the voxels selective relevance keeps, the same number
  of top voxels of the baseline explanation and of random voxels, and the drop of each;
* :func:`motion_reliance`: the drops with the motion removed (freeze), the appearance removed
  (:func:`static_removed`) and everything removed (mean), ``(B, 3)``.

Models: any ``model(inputs) -> logits (B, num_classes)``. ``input_builder`` turns a (perturbed) clip batch into the
model's input, e.g. ``lambda x: pack_pathways(x, alpha)`` for a two-pathway network: perturbations always act on
the full-rate clip.

Example::

    rel = GuidedBackprop()(model, clips)                        # (B, 3, T, H, W)
    curve = deletion_curve(model, clips, rel, steps=10)         # (B, 11), reference "freeze"
    floor = random_curve(model, clips, steps=10, seed=seeds)    # seeds: one int per clip, e.g. dataset indices
    auc, floor_auc = curve_auc(curve), curve_auc(floor)         # (B,) each: low = faithful deletion
    drops = matched_budget_drops(model, clips, rel, selective_relevance(rel, 4.0))
"""

from __future__ import annotations

from motion_relevance.metrics.faithfulness.curves import curve_auc, deletion_curve, random_curve
from motion_relevance.metrics.faithfulness.drops import freeze_drop, matched_budget_drops, motion_reliance
from motion_relevance.metrics.faithfulness.ranking import (
    Seed,
    kept_voxels,
    matched_budget_masks,
    random_mask,
    random_ranks,
    relevance_ranks,
    top_m_mask,
)
from motion_relevance.metrics.faithfulness.references import REFERENCES, reference, static_removed
from motion_relevance.metrics.faithfulness.scoring import DEFAULT_BATCH_SIZE, InputBuilder

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "REFERENCES",
    "InputBuilder",
    "Seed",
    "curve_auc",
    "deletion_curve",
    "freeze_drop",
    "kept_voxels",
    "matched_budget_drops",
    "matched_budget_masks",
    "motion_reliance",
    "random_curve",
    "random_mask",
    "random_ranks",
    "reference",
    "relevance_ranks",
    "static_removed",
    "top_m_mask",
]
