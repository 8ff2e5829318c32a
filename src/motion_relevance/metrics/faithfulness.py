"""Faithfulness of an explanation: remove what it marks and watch the model's answer (``docs/method.md``,
"Faithfulness and sanity checks").

Scores are the softmax probability of the target class. A *voxel* is a ``(t, h, w)`` position of a clip
``(B, C, T, H, W)``; removing it replaces all ``C`` channels with a **reference** (:func:`reference`):

* ``"freeze"``: every frame is the clip's temporal mean (removes motion, keeps appearance);
* ``"mean"``: each channel's mean over the clip's ``T*H*W`` voxels (removes appearance and motion);
* ``"blur"``: each frame blurred spatially with a Gaussian of std ``blur_sigma`` pixels.

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
* :func:`motion_reliance`: the drop under a full freeze and under a full mean, ``(B, 2)``.

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

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from motion_relevance import checks
from motion_relevance.checks import check_choice, check_int, check_positive
from motion_relevance.explain.validation import check_clips, normalise_target

__all__ = [
    "REFERENCES",
    "curve_auc",
    "deletion_curve",
    "freeze_drop",
    "matched_budget_drops",
    "matched_budget_masks",
    "motion_reliance",
    "random_curve",
    "random_ranks",
    "reference",
    "relevance_ranks",
    "top_m_mask",
    "random_mask",
    "kept_voxels",
]

#: Reference kinds accepted by :func:`reference` and every function's ``reference`` argument.
REFERENCES: tuple[str, ...] = ("freeze", "mean", "blur")
DEFAULT_BATCH_SIZE = 16

InputBuilder = Callable[[Tensor], Any]


# --------------------------------------------------------------------------------------------------- checks


def _check_builder(input_builder: Any) -> None:
    if input_builder is not None and not callable(input_builder):
        raise TypeError(f"input_builder must be None or a callable clip -> model input, got {input_builder!r}")


def _check_model(model: Any) -> None:
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module (or a callable), got {type(model).__name__}")


def _check_relevance(relevance: Any, clips: Tensor, name: str = "relevance") -> Tensor:
    """``relevance`` must be ``(B, 1 or C, T, H, W)`` like the clips, floating point and finite."""
    b, c, t, h, w = clips.shape
    allowed = f"({b}, 1 or {c}, {t}, {h}, {w})"
    if not isinstance(relevance, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {allowed}, got {type(relevance).__name__}")
    if relevance.dim() != 5 or relevance.shape[0] != b or tuple(relevance.shape[2:]) != (t, h, w):
        raise ValueError(
            f"{name} must have shape {allowed} to match clips {tuple(clips.shape)}, got {tuple(relevance.shape)}"
        )
    if relevance.shape[1] not in (1, c):
        raise ValueError(
            f"{name} must have 1 channel or as many as the clips ({c}): shape {allowed}, got {tuple(relevance.shape)}"
        )
    if not relevance.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {relevance.dtype}")
    if bool(torch.isnan(relevance).any()):
        raise ValueError(f"{name} contains {int(torch.isnan(relevance).sum())} NaN value(s); voxels cannot be ordered")
    a = relevance.detach().to(clips.device).sum(1).flatten(1)
    if bool(torch.isnan(a).any()):
        raise ValueError(f"{name} sums to NaN over channels (+Inf and -Inf in one voxel); voxels cannot be ordered")
    return a


def _check_mask(mask: Any, clips: Tensor, name: str = "mask") -> Tensor:
    """A bool mask ``(B, T, H, W)`` or ``(B, 1, T, H, W)`` like the clips → bool ``(B, T*H*W)`` on their device."""
    b, _, t, h, w = clips.shape
    allowed = f"({b}, {t}, {h}, {w}) or ({b}, 1, {t}, {h}, {w})"
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor of shape {allowed}, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor of shape {allowed}, got dtype {mask.dtype}")
    if mask.dim() == 5 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != (b, t, h, w):
        raise ValueError(
            f"{name} must have shape {allowed} to match clips {tuple(clips.shape)}, got {tuple(mask.shape)}"
        )
    return mask.to(clips.device).flatten(1)


def _check_common(clips: Any, reference_kind: Any, blur_sigma: Any, batch_size: Any, input_builder: Any) -> None:
    check_clips(clips)
    check_choice("reference", reference_kind, REFERENCES)
    check_positive("blur_sigma", blur_sigma)
    check_int("batch_size", batch_size, 1)
    _check_builder(input_builder)


Seed = int | Sequence[int] | Tensor


def _generators(seed: Any, generator: torch.Generator | None, batch: int) -> list[torch.Generator]:
    """One CPU generator per clip: ``generator`` (shared), one seeded with ``seed`` (shared), or one per clip seed."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        return [generator] * batch
    if isinstance(seed, int) and not isinstance(seed, bool):
        return [torch.Generator().manual_seed(seed)] * batch
    ok = isinstance(seed, (Sequence, Tensor)) and not isinstance(seed, str)
    if ok and isinstance(seed, Tensor):
        ok = seed.dim() == 1 and not (seed.is_floating_point() or seed.is_complex() or seed.dtype == torch.bool)
        seed = seed.tolist() if ok else seed
    if ok:
        ok = len(seed) == batch and all(isinstance(s, int) and not isinstance(s, bool) for s in seed)
    if not ok:
        raise TypeError(f"seed must be an integer or {batch} integers (one per clip), got {seed!r}")
    return [torch.Generator().manual_seed(int(s)) for s in seed]


# ------------------------------------------------------------------------------------------------ reference


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = math.ceil(3.0 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _blur(clips: Tensor, sigma: float) -> Tensor:
    """Separable spatial Gaussian blur of every frame, replicate padding, radius ``ceil(3 sigma)``."""
    b, c, t, h, w = clips.shape
    k = _gaussian_kernel(sigma, clips.dtype, clips.device)
    r = (k.numel() - 1) // 2
    x = clips.reshape(b * c * t, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(b, c, t, h, w)


def _reference_compact(clips: Tensor, kind: str, blur_sigma: float) -> Tensor:
    """The reference in a shape that broadcasts to the clips: ``(B,C,1,H,W)``, ``(B,C,1,1,1)`` or full."""
    if kind == "freeze":
        return clips.mean(2, keepdim=True)
    if kind == "mean":
        return clips.mean((2, 3, 4), keepdim=True)
    return _blur(clips, blur_sigma)


def reference(clips: Tensor, kind: str = "freeze", blur_sigma: float = 5.0) -> Tensor:
    """The reference that replaces removed voxels, a new tensor shaped like ``clips`` ``(B, C, T, H, W)``.

    Args:
        clips: ``(B, C, T, H, W)`` floating point (the model's normalised input).
        kind: ``"freeze"``: every frame is the clip's temporal mean, ``x_ref[:, :, t] = x.mean(T)`` (removes motion,
            keeps appearance); ``"mean"``: each channel's mean over the clip's ``T*H*W`` voxels (removes appearance
            and motion); ``"blur"``: each frame blurred spatially (H and W, never across time or channels) with a
            normalised Gaussian of standard deviation ``blur_sigma`` pixels, truncated at radius
            ``ceil(3 * blur_sigma)`` and applied separably with *replicate* padding (edge pixels repeated, which
            works for frames of any size, also smaller than the kernel; ``scipy.ndimage.gaussian_filter`` with
            ``mode="nearest"`` and that radius gives the same frames).
        blur_sigma: standard deviation of the blur in pixels (> 0); used by ``"blur"`` only, checked always.

    Raises:
        ValueError / TypeError: clips not a finite floating-point 5-D tensor, an unknown ``kind``, ``blur_sigma`` <= 0.
    """
    check_clips(clips)
    kind = check_choice("reference", kind, REFERENCES)
    sigma = float(check_positive("blur_sigma", blur_sigma))
    return _reference_compact(clips, kind, sigma).expand_as(clips).contiguous()


# ----------------------------------------------------------------------------------------------- orderings


def _ranks_from_order(order: Tensor) -> Tensor:
    """``rank[b, order[b, i]] = i``: the position of each voxel in the removal order, int64 ``(B, N)``."""
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def _ranks_of_scores(a: Tensor) -> Tensor:
    """Ranks of ``a`` ``(B, N)``: largest first, ties by flat index (stable sort)."""
    return _ranks_from_order(torch.sort(a, dim=1, descending=True, stable=True).indices)


def relevance_ranks(relevance: Tensor) -> Tensor:
    """Removal order of the voxels of ``relevance`` ``(B, C, T, H, W)`` as ranks, int64 ``(B, T*H*W)``.

    Voxels are ordered by ``A = relevance.sum(C)``, largest first; equal values keep their flat ``(t, h, w)`` index
    order (stable sort). ``rank[b, i]`` is the position of voxel ``i``: it is removed at step ``k`` iff
    ``rank < floor(k * N / K)``.
    """
    checks.check_clips("relevance", relevance, floating=False)
    return _ranks_of_scores(relevance.detach().sum(1).flatten(1))


def random_ranks(
    batch: int, voxels: int, *, seed: Seed = 0, generator: torch.Generator | None = None, device: Any = None
) -> Tensor:
    """A uniformly random removal order per clip, as ranks int64 ``(batch, voxels)`` (each row a permutation).

    Drawn on the CPU, so the order is the same on every device; ``device`` says where the result goes. The orders
    come from ``generator``, else from one generator seeded with ``seed`` (an int: clip ``b`` gets the ``b``-th
    permutation it draws, so the order depends on the clip's place in the batch), or from one generator per clip
    when ``seed`` holds ``batch`` integers: pass e.g. ``base_seed + dataset_index`` to make the random floor
    independent of batching and of the number of processes.
    """
    check_int("batch", batch, 1)
    check_int("voxels", voxels, 1)
    gens = _generators(seed, generator, batch)
    order = torch.stack([torch.randperm(voxels, generator=g) for g in gens])
    return _ranks_from_order(order).to(device if device is not None else "cpu")


# ------------------------------------------------------------------------------------------- forward passes


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode and no gradients for the duration; every module's training flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    try:
        if isinstance(model, nn.Module):
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _logits(model: Any, x: Tensor, input_builder: InputBuilder | None) -> Tensor:
    out = model(input_builder(x) if input_builder is not None else x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model must return logits (B, num_classes) = ({x.shape[0]}, K) for {x.shape[0]} clips, got {shape}"
        )
    return out


def _probabilities(logits: Tensor, target: Tensor) -> Tensor:
    return torch.softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)


class _Scorer:
    """One clean forward (target check, ``s(x)``) and the perturbed forwards of a batch of clips."""

    def __init__(
        self, model: Any, clips: Tensor, target: Any, batch_size: int, input_builder: InputBuilder | None
    ) -> None:
        self.model, self.clips, self.batch_size, self.input_builder = model, clips, batch_size, input_builder
        self.target_in = normalise_target(target, clips.shape[0])  # type check before any forward pass

    def clean(self) -> Tensor:
        """``s(x)`` float32 ``(B,)``; also fixes ``self.target`` (given, else predicted) after checking its range."""
        logits = torch.cat(
            [
                _logits(self.model, self.clips[i : i + self.batch_size], self.input_builder)
                for i in range(0, self.clips.shape[0], self.batch_size)
            ]
        )
        classes = logits.shape[1]
        if self.target_in is None:
            target = logits.argmax(1)
        else:
            low, high = int(self.target_in.min()), int(self.target_in.max())
            if low < 0 or high >= classes:
                raise ValueError(
                    f"target must be class indices in [0, {classes - 1}] (the model has {classes} outputs), "
                    f"got {low}..{high}"
                )
            target = self.target_in.to(logits.device)
        self.target = target
        return _probabilities(logits, target)

    def perturbed(self, clip_of: Tensor, fill: Callable[[int, int, Tensor], None]) -> Tensor:
        """Scores of ``J = len(clip_of)`` perturbed inputs; ``fill(start, stop, out)`` writes items ``start:stop``."""
        n = int(clip_of.numel())
        scores = torch.empty(n, dtype=torch.float32, device=self.target.device)
        if n == 0:
            return scores
        buf = self.clips.new_empty((min(self.batch_size, n), *self.clips.shape[1:]))
        target = self.target[clip_of.to(self.target.device)]
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            x = buf[: stop - start]
            fill(start, stop, x)
            scores[start:stop] = _probabilities(_logits(self.model, x, self.input_builder), target[start:stop])
        return scores


def _runs(clip_of: Tensor, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """Maximal runs ``(b, i, j)`` of equal clip index in ``clip_of[start:stop]`` (items sorted by clip)."""
    i = start
    values = clip_of[start:stop].tolist()
    while i < stop:
        b = values[i - start]
        j = i
        while j < stop and values[j - start] == b:
            j += 1
        yield b, i, j
        i = j


def _curves(
    model: Any,
    clips: Tensor,
    ranks: Tensor,
    target: Any,
    steps: int,
    kind: str,
    insertion: bool,
    blur_sigma: float,
    batch_size: int,
    input_builder: InputBuilder | None,
) -> Tensor:
    b, c, t, h, w = clips.shape
    n_vox = t * h * w
    scorer = _Scorer(model, clips, target, batch_size, input_builder)
    with _eval_mode(model):
        s_clean = scorer.clean()
        ref = _reference_compact(clips, kind, blur_sigma)
        # The clean clip is step 0 of deletion and step K of insertion: its score is s_clean, no forward needed.
        ks = (
            torch.arange(0, steps, device=clips.device)
            if insertion
            else torch.arange(1, steps + 1, device=clips.device)
        )
        n_k = (ks * n_vox) // steps  # floor(k * N / K), exact in integers
        clip_of = torch.arange(b, device=clips.device).repeat_interleave(steps)
        n_of = n_k.repeat(b)
        ranks = ranks.to(clips.device)

        rows = min(batch_size, b * steps)
        take_buf, keep_buf = clips.new_empty((rows, n_vox)), clips.new_empty((rows, n_vox))

        def fill(start: int, stop: int, out: Tensor) -> None:
            # out = first * keep + second * take with 0/1 float masks: exact (x * 1 + y * 0 == x for finite values)
            # and cheaper on CPU than torch.where with a bool mask broadcast over the channels.
            for clip, i, j in _runs(clip_of, start, stop):
                take, keep = take_buf[: j - i], keep_buf[: j - i]
                torch.lt(ranks[clip], n_of[i:j, None], out=take)  # changed at this step iff rank < n_k
                torch.ge(ranks[clip], n_of[i:j, None], out=keep)
                x, r = clips[clip : clip + 1], ref[clip : clip + 1]
                first, second = (r, x) if insertion else (x, r)
                o = out[i - start : j - start]
                torch.mul(first, keep.view(j - i, 1, t, h, w), out=o)
                o.addcmul_(second, take.view(j - i, 1, t, h, w))

        perturbed = scorer.perturbed(clip_of, fill).view(b, steps)
    curve = torch.empty((b, steps + 1), dtype=torch.float32, device=perturbed.device)
    if insertion:
        curve[:, :steps], curve[:, steps] = perturbed, s_clean
    else:
        curve[:, 0], curve[:, 1:] = s_clean, perturbed
    return curve


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
        steps: ``K`` >= 1.
        reference: ``"freeze"``, ``"mean"`` or ``"blur"`` (:func:`reference`).
        insertion: insertion curve instead of deletion.
        blur_sigma: Gaussian std in pixels for ``"blur"`` (> 0).
        batch_size: perturbed clips per forward pass (>= 1); the ``B * K`` perturbed inputs (plus the ``B`` clean
            clips, run first) go through the model in batches of this size, mixing clips.
        input_builder: optional ``clip batch -> model input`` (e.g. the pathways of a SlowFast network).

    Raises:
        ValueError / TypeError (before any forward pass): ``steps`` < 1, ``blur_sigma`` <= 0, an unknown
            ``reference``, ``batch_size`` < 1, relevance not ``(B, 1 or C, T, H, W)`` like the clips or holding NaN,
            clips not finite floating point; a ``target`` outside the model's classes is reported after the one clean
            forward pass, before any perturbed one.
    """
    _check_model(model)
    steps = check_int("steps", steps, 1)
    _check_common(clips, reference, blur_sigma, batch_size, input_builder)
    a = _check_relevance(relevance, clips)
    return _curves(
        model,
        clips,
        _ranks_of_scores(a),
        target,
        steps,
        reference,
        bool(insertion),
        float(blur_sigma),
        batch_size,
        input_builder,
    )


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

    The order comes from :func:`random_ranks` (``generator``, else a generator seeded with ``seed``, or one generator
    per clip when ``seed`` holds ``B`` integers), drawn on the CPU: the same seed gives the same curve on any device
    and for any ``batch_size``. Other arguments and errors as :func:`deletion_curve`.
    """
    _check_model(model)
    steps = check_int("steps", steps, 1)
    _check_common(clips, reference, blur_sigma, batch_size, input_builder)
    b, _, t, h, w = clips.shape
    ranks = random_ranks(b, t * h * w, seed=seed, generator=generator, device=clips.device)
    return _curves(
        model, clips, ranks, target, steps, reference, bool(insertion), float(blur_sigma), batch_size, input_builder
    )


def curve_auc(curve: Tensor) -> Tensor:
    """Area under curves ``(B, K + 1)`` over ``k / K in [0, 1]`` (trapezoid rule) → ``(B,)``.

    ``(s_0 / 2 + s_1 + ... + s_(K-1) + s_K / 2) / K``; a faithful explanation has a low deletion and a high insertion
    area.
    """
    if not isinstance(curve, Tensor) or curve.dim() != 2 or curve.shape[1] < 2:
        raise ValueError(f"curve must be a tensor (B, steps + 1) with steps >= 1, got {getattr(curve, 'shape', curve)}")
    k = curve.shape[1] - 1
    return (curve[:, 1:-1].sum(1) + 0.5 * (curve[:, 0] + curve[:, -1])) / k


# ------------------------------------------------------------------------------------------ freeze tests


def _drops(
    model: Any,
    clips: Tensor,
    masks: list[Tensor | None],
    target: Any,
    kinds: list[str],
    blur_sigma: float,
    batch_size: int,
    input_builder: InputBuilder | None,
) -> Tensor:
    """``s(x) - s(x with masks[i] replaced by reference kinds[i])`` → float32 ``(B, len(masks))``.

    A mask is bool ``(B, N)``; ``None`` replaces every voxel (the input is the reference itself).
    """
    b, c, t, h, w = clips.shape
    q = len(masks)
    scorer = _Scorer(model, clips, target, batch_size, input_builder)
    with _eval_mode(model):
        s_clean = scorer.clean()
        refs = {kind: _reference_compact(clips, kind, blur_sigma) for kind in dict.fromkeys(kinds)}
        clip_of = torch.arange(b, device=clips.device).repeat_interleave(q)

        def fill(start: int, stop: int, out: Tensor) -> None:
            for j in range(start, stop):
                clip, which = divmod(j, q)
                r = refs[kinds[which]][clip : clip + 1]
                mask = masks[which]
                if mask is None:
                    out[j - start].copy_(r[0].expand(c, t, h, w))
                else:
                    torch.where(mask[clip].view(1, t, h, w), r[0], clips[clip], out=out[j - start])

        perturbed = scorer.perturbed(clip_of, fill).view(b, q)
    return s_clean[:, None] - perturbed


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
        Others as :func:`deletion_curve`.

    Raises:
        ValueError / TypeError before any forward pass (bad mask shape or dtype, unknown reference, ``blur_sigma``
        <= 0, ``batch_size`` < 1); a target outside the classes after the clean forward pass.
    """
    _check_model(model)
    _check_common(clips, reference, blur_sigma, batch_size, input_builder)
    flat = _check_mask(mask, clips)
    return _drops(model, clips, [flat], target, [reference], float(blur_sigma), batch_size, input_builder)[:, 0]


def motion_reliance(
    model: Any,
    clips: Tensor,
    target: Any = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    input_builder: InputBuilder | None = None,
) -> Tensor:
    """Drops ``[s(x) - s(freeze(x)), s(x) - s(mean(x))]`` with every voxel replaced, float32 ``(B, 2)``.

    The first column is what the model loses when all motion is removed (appearance kept), the second what it loses
    when everything is removed; their ratio (see ``MotionReliance``) is the share of the decision that hangs on
    motion. Arguments and errors as :func:`freeze_drop`.
    """
    _check_model(model)
    _check_common(clips, "freeze", 1.0, batch_size, input_builder)
    return _drops(model, clips, [None, None], target, ["freeze", "mean"], 1.0, batch_size, input_builder)


# ------------------------------------------------------------------------------------------ matched budget


def kept_voxels(selective: Tensor) -> Tensor:
    """The voxels a selective map keeps, ``R_sel.sum(C) != 0`` → bool ``(B, T, H, W)``."""
    checks.check_clips("selective", selective, floating=False)
    return selective.sum(1) != 0


def _budget(m: Any, batch: int, voxels: int) -> Tensor:
    mt = torch.as_tensor(m).long().cpu().reshape(-1)
    if mt.numel() == 1:
        mt = mt.expand(batch)
    if mt.numel() != batch or bool((mt < 0).any()) or bool((mt > voxels).any()):
        raise ValueError(f"m must be an int or {batch} ints in [0, {voxels}] (voxels per clip), got {m!r}")
    return mt


def top_m_mask(relevance: Tensor, m: Any) -> Tensor:
    """The top ``m`` voxels of ``relevance`` ``(B, C, T, H, W)`` per clip (order of :func:`relevance_ranks`).

    ``m`` is an int or ``B`` ints; returns bool ``(B, T, H, W)`` with exactly ``m[b]`` voxels set in clip ``b``.
    """
    ranks = relevance_ranks(relevance)
    b, _, t, h, w = relevance.shape
    mt = _budget(m, b, t * h * w).to(ranks.device)
    return (ranks < mt[:, None]).view(b, t, h, w)


def random_mask(
    shape: tuple[int, int, int, int],
    m: Any,
    *,
    seed: Seed = 0,
    generator: torch.Generator | None = None,
    device: Any = None,
) -> Tensor:
    """``m[b]`` uniformly random voxels per clip → bool ``(B, T, H, W)`` of ``shape``; seeds as :func:`random_ranks`."""
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, T, H, W), got {shape!r}")
    b, t, h, w = (int(s) for s in shape)
    ranks = random_ranks(b, t * h * w, seed=seed, generator=generator)
    mt = _budget(m, b, t * h * w)
    return (ranks < mt[:, None]).view(b, t, h, w).to(device if device is not None else "cpu")


def matched_budget_masks(
    relevance: Tensor, selective: Tensor, *, seed: Seed = 0, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Three masks of the same size ``m = |M|`` per clip, bool ``(B, T, H, W)``, plus the budget.

    ``selective``: ``M``, the voxels selective relevance keeps (``R_sel.sum(C) != 0``); ``baseline``: the top ``m``
    voxels of ``relevance`` (the baseline explanation); ``random``: ``m`` random voxels (seeded); ``budget``: ``m``
    int64 ``(B,)``.
    """
    checks.check_clips("relevance", relevance, floating=False)
    checks.check_clips("selective", selective, floating=False)
    if selective.shape[0] != relevance.shape[0] or selective.shape[2:] != relevance.shape[2:]:
        raise ValueError(
            f"selective must have the shape of relevance (B, C, T, H, W) = {tuple(relevance.shape)}, "
            f"got {tuple(selective.shape)}"
        )
    kept = kept_voxels(selective)
    m = kept.flatten(1).sum(1).cpu()
    b, _, t, h, w = relevance.shape
    return {
        "selective": kept,
        "baseline": top_m_mask(relevance, m),
        "random": random_mask((b, t, h, w), m, seed=seed, generator=generator, device=kept.device),
        "budget": m,
    }


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
    the clips. Errors as :func:`freeze_drop` and :func:`deletion_curve`.
    """
    _check_model(model)
    _check_common(clips, reference, blur_sigma, batch_size, input_builder)
    _check_relevance(relevance, clips)
    _check_relevance(selective, clips, "selective")
    masks = matched_budget_masks(relevance.to(clips.device), selective.to(clips.device), seed=seed, generator=generator)
    order = ("selective", "baseline", "random")
    flat = [masks[k].to(clips.device).flatten(1) for k in order]
    drops = _drops(model, clips, flat, target, [reference] * 3, float(blur_sigma), batch_size, input_builder)
    out = {k: drops[:, i] for i, k in enumerate(order)}
    out["budget"] = masks["budget"]
    return out
