"""When: the share of relevance in each frame, and the temporal-window freeze test (docs/method.md, "When").

Per-frame relevance of a map ``A = R.sum(C)`` is ``a_t = sum_hw A+[t] / sum A+`` (the positive part, as the other
metrics); a clip with no positive relevance has no shares (NaN row). The temporal-window test freezes ``w``
consecutive frames (each replaced by the clip's temporal mean, as the freeze reference) centred on a chosen frame and
reports the drop of the target's probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from motion_relevance.checks import check_clips, check_int
from motion_relevance.metrics.faithfulness import freeze_drop


def frame_shares(relevance: Tensor) -> Tensor:
    """Share of positive relevance in each frame, float32 ``(B, T)``; each row sums to 1, or is NaN when the clip has
    no positive relevance.

    Args:
        relevance: ``(B, C, T, H, W)``.
    """
    check_clips("relevance", relevance)
    a = relevance.detach().sum(1).clamp_min(0).float()
    per_frame = a.flatten(2).sum(-1)
    total = per_frame.sum(-1, keepdim=True)
    return torch.where(total > 0, per_frame / total.clamp_min(torch.finfo(torch.float32).tiny),
                       torch.full_like(per_frame, float("nan")))


def top_frames(shares: Tensor) -> Tensor:
    """Index of the frame with the largest share per clip, int64 ``(B,)`` (the first on ties; 0 for a NaN row)."""
    return torch.nan_to_num(shares, nan=-1.0).argmax(dim=1)


def default_window(frames: int) -> int:
    """The default window length: a quarter of the clip, at least one frame."""
    return max(1, check_int("frames", frames, 1) // 4)


def window_start(centre: Tensor, window: int, frames: int) -> Tensor:
    """First frame of the window ``[c - w//2, c - w//2 + w)``, shifted to lie inside ``[0, frames)``, ``(B,)``.

    Shifting (rather than truncating) keeps every window ``w`` frames long, so windows at the clip's ends remove as
    much as windows in the middle.
    """
    check_int("window", window, 1, frames)
    return (centre.long() - window // 2).clamp(0, frames - window)


def window_masks(centre: Tensor, window: int, shape: Sequence[int]) -> Tensor:
    """Bool ``(B, T, H, W)``: the ``window`` frames around each clip's ``centre`` (see :func:`window_start`)."""
    b, t, h, w = (int(s) for s in shape)
    start = window_start(centre, window, t).view(b, 1)
    frames = torch.arange(t, device=centre.device).view(1, t)
    inside = (frames >= start) & (frames < start + window)
    return inside.view(b, t, 1, 1).expand(b, t, h, w).clone()


def random_centres(seeds: Sequence[int], frames: int) -> Tensor:
    """One uniformly random centre frame per clip, int64 ``(B,)``, each drawn from its own seeded generator (the
    same clip gets the same centre in any batch or process, like the other random floors)."""
    check_int("frames", frames, 1)
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        out.append(int(torch.randint(frames, (1,), generator=gen)))
    return torch.tensor(out, dtype=torch.long)


def temporal_window_drops(
    model: Any,
    clips: Tensor,
    relevance: Tensor,
    selective: Tensor,
    seeds: Sequence[int],
    target: Any = None,
    *,
    window: int | None = None,
    batch_size: int = 64,
    input_builder: Any = None,
) -> dict[str, Tensor]:
    """Drops from freezing a ``window`` of frames around three centres, float32 ``(B,)`` each.

    Keys: ``selective`` (the selective map's top frame), ``baseline`` (the baseline map's top frame), ``random``
    (a seeded random frame), and ``advantage`` (``selective - random``, paired per clip). A clip whose selective map
    is empty has a NaN selective drop and advantage (undefined, counted as such by the metrics).

    Args:
        clips: ``(B, C, T, H, W)``, the input of ``model``; relevance, selective: maps of the same shape at the
            input frame rate.
        seeds: one integer per clip for the random centre.
        window: frames frozen (default :func:`default_window` of ``T``).
    """
    check_clips("clips", clips)
    b, _, t, h, w = clips.shape
    for key, value in (("relevance", relevance), ("selective", selective)):
        check_clips(key, value)
        if value.shape[0] != b or value.shape[2:] != clips.shape[2:]:
            raise ValueError(f"{key} must cover the clips' frames and pixels {(b, t, h, w)}, got {tuple(value.shape)}")
    if len(seeds) != b:
        raise ValueError(f"seeds: expected {b} integers (one per clip), got {len(seeds)}")
    window = default_window(t) if window is None else check_int("temporal.window", window, 1, t)
    sel_shares = frame_shares(selective)
    centres = {
        "selective": top_frames(sel_shares),
        "baseline": top_frames(frame_shares(relevance)),
        "random": random_centres(seeds, t),
    }
    masks = [window_masks(c.to(clips.device), window, (b, t, h, w)) for c in centres.values()]
    out = {name: freeze_drop(model, clips, m, target, reference="freeze", batch_size=batch_size,
                             input_builder=input_builder)
           for name, m in zip(centres, masks, strict=True)}
    empty = torch.isnan(sel_shares).all(dim=1).to(out["selective"].device)
    out["selective"] = torch.where(empty, torch.full_like(out["selective"], float("nan")), out["selective"])
    out["advantage"] = out["selective"] - out["random"]
    return out
