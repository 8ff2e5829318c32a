"""Voxel orders and masks of the faithfulness tests: removal ranks from an explanation or seeded at random, the
top-``m`` / random-``m`` / kept-voxel masks of the matched-budget test, and the conversion of an explanation or a
mask of a clip batch ``(B, C, T, H, W)`` into per-voxel ``(B, T*H*W)`` tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from motion_relevance.checks import check_int

__all__ = [
    "Seed",
    "kept_voxels",
    "matched_budget_masks",
    "random_mask",
    "random_ranks",
    "ranks_of_scores",
    "relevance_ranks",
    "top_m_mask",
    "voxel_mask",
    "voxel_scores",
]

Seed = int | Sequence[int] | Tensor


def voxel_scores(relevance: Any, clips: Tensor, name: str = "relevance") -> Tensor:
    """``A = relevance.sum(C)`` flattened to ``(B, T*H*W)`` on the clips' device; ``relevance`` must be
    ``(B, 1 or C, T, H, W)`` like the clips, floating point and free of NaN (voxels must be orderable)."""
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


def voxel_mask(mask: Any, clips: Tensor, name: str = "mask") -> Tensor:
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


def _ranks_from_order(order: Tensor) -> Tensor:
    """``rank[b, order[b, i]] = i``: the position of each voxel in the removal order, int64 ``(B, N)``."""
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def ranks_of_scores(a: Tensor) -> Tensor:
    """Ranks of ``a`` ``(B, N)``: largest first, ties by flat index (stable sort)."""
    return _ranks_from_order(torch.sort(a, dim=1, descending=True, stable=True).indices)


def relevance_ranks(relevance: Tensor) -> Tensor:
    """Removal order of the voxels of ``relevance`` ``(B, C, T, H, W)`` as ranks, int64 ``(B, T*H*W)``.

    Voxels are ordered by ``A = relevance.sum(C)``, largest first; equal values keep their flat ``(t, h, w)`` index
    order (stable sort). ``rank[b, i]`` is the position of voxel ``i``: it is removed at step ``k`` iff
    ``rank < floor(k * N / K)``.
    """
    if not isinstance(relevance, Tensor) or relevance.dim() != 5:
        raise ValueError(f"relevance must be a tensor (B, C, T, H, W), got {getattr(relevance, 'shape', relevance)}")
    return ranks_of_scores(relevance.detach().sum(1).flatten(1))


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


def kept_voxels(selective: Tensor) -> Tensor:
    """The voxels a selective map keeps, ``R_sel.sum(C) != 0`` → bool ``(B, T, H, W)``."""
    if not isinstance(selective, Tensor) or selective.dim() != 5:
        raise ValueError(f"selective must be a tensor (B, C, T, H, W), got {getattr(selective, 'shape', selective)}")
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
    if not isinstance(relevance, Tensor) or not isinstance(selective, Tensor) or relevance.dim() != 5:
        raise ValueError("relevance and selective must be tensors (B, C, T, H, W)")
    if selective.dim() != 5 or selective.shape[0] != relevance.shape[0] or selective.shape[2:] != relevance.shape[2:]:
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
