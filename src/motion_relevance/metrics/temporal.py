"""When: the share of relevance in each frame, and the temporal-window freeze test (docs/method.md, "When").

Per-frame relevance of a map ``A = R.sum(C)`` is ``a_t = sum_hw A+[t] / sum A+`` (the positive part, as the other
metrics); a clip with no positive relevance has no shares (NaN row). The temporal-window test freezes ``w``
consecutive frames (each replaced by the clip's temporal mean, as the freeze reference) centred on a chosen frame and
reports the drop of the target's probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from motion_relevance.checks import check_clips, check_int
from motion_relevance.metrics.faithfulness.scoring import check_call, drops
from motion_relevance.metrics.stats import MeanStdMetric


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


def _check_maps(clips: Tensor, maps: Mapping[str, Tensor]) -> None:
    b, _, t, h, w = clips.shape
    for key, value in maps.items():
        check_clips(key, value)
        if value.shape[0] != b or value.shape[2:] != clips.shape[2:]:
            raise ValueError(f"{key} must cover the clips' frames and pixels {(b, t, h, w)}, got {tuple(value.shape)}")


def temporal_window_test(
    model: Any,
    clips: Tensor,
    relevance: Tensor,
    selective: Sequence[Tensor],
    seeds: Sequence[int],
    target: Any = None,
    *,
    window: int | None = None,
    batch_size: int = 64,
    input_builder: Any = None,
) -> dict[str, Tensor]:
    """Drops from freezing a ``window`` of frames around the top frame of the baseline map, of a seeded random
    frame and of each selective map in ``selective`` (one per sigma), with one clean forward pass shared by all.

    Returns float32 ``baseline`` ``(B,)``, ``random`` ``(B,)`` and ``selective`` ``(B, len(selective))``, and the
    int64 centres ``centre_baseline``, ``centre_random`` ``(B,)``, ``centre_selective`` ``(B, S)``. A map without
    positive relevance has no top frame: its drop is NaN (undefined). Arguments as :func:`temporal_window_drops`.
    """
    check_clips("clips", clips)
    b, _, t, h, w = clips.shape
    _check_maps(clips, {"relevance": relevance, **{"selective" if len(selective) == 1 else f"selective[{i}]": m
                                                   for i, m in enumerate(selective)}})
    if len(seeds) != b:
        raise ValueError(f"seeds: expected {b} integers (one per clip), got {len(seeds)}")
    window = default_window(t) if window is None else check_int("temporal.window", window, 1, t)
    shares = [frame_shares(relevance), *(frame_shares(m) for m in selective)]
    centres = [top_frames(shares[0]), random_centres(seeds, t), *(top_frames(s) for s in shares[1:])]
    empty = [torch.isnan(s).all(dim=1) for s in shares]
    empty.insert(1, torch.zeros(b, dtype=torch.bool))
    masks = [window_masks(c.to(clips.device), window, (b, t, h, w)).flatten(1) for c in centres]
    scores = drops(model, clips, masks, target, ["freeze"] * len(masks), 1.0,
                   check_call(model, clips, batch_size, input_builder), input_builder)
    scores = torch.where(torch.stack(empty, 1).to(scores.device), torch.full_like(scores, float("nan")), scores)
    return {"baseline": scores[:, 0], "random": scores[:, 1], "selective": scores[:, 2:],
            "centre_baseline": centres[0], "centre_random": centres[1],
            "centre_selective": torch.stack(centres[2:], 1) if selective else torch.zeros(b, 0, dtype=torch.long)}


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
    is empty has a NaN selective drop and advantage, one whose baseline map is empty a NaN baseline drop
    (undefined, counted as such by the metrics).

    Args:
        clips: ``(B, C, T, H, W)``, the input of ``model``; relevance, selective: maps of the same shape at the
            input frame rate.
        seeds: one integer per clip for the random centre.
        window: frames frozen (default :func:`default_window` of ``T``).
    """
    check_clips("selective", selective)
    out = temporal_window_test(model, clips, relevance, [selective], seeds, target, window=window,
                               batch_size=batch_size, input_builder=input_builder)
    sel = out["selective"][:, 0]
    return {"selective": sel, "baseline": out["baseline"], "random": out["random"], "advantage": sel - out["random"]}


class TemporalWindowDrop(MeanStdMetric):
    """Mean/std over clips of the temporal-window test (:func:`temporal_window_test`) of one map at one sigma.

    ``update(selective, baseline, random)`` with per-clip drops ``(B,)``. Quantities: the three drops and
    ``advantage`` = ``selective - random`` (paired per clip). NaN drops (a map without positive relevance) are
    undefined: counted in ``n_undefined``, never averaged.
    """

    higher_is_better: ClassVar[bool | None] = True
    quantities: ClassVar[tuple[str, ...]] = ("selective", "baseline", "random", "advantage")

    def update(self, selective: Tensor, baseline: Tensor, random: Tensor) -> None:
        values = [torch.as_tensor(v).detach().flatten().float() for v in (selective, baseline, random)]
        if len({v.shape[0] for v in values}) != 1:
            raise ValueError(f"temporal drops must have one shape (B,), got {[tuple(v.shape) for v in values]}")
        sel, base, rnd = values
        for i, v in enumerate((sel, base, rnd, sel - rnd)):
            self._accumulate(i, v)


class FrameShareCurve(MeanStdMetric):
    """Mean/std over clips of the per-frame relevance shares (:func:`frame_shares`), one value per frame.

    ``update(shares)`` with ``(B, frames)``; a NaN row (no positive relevance) is an undefined clip. States are sums
    with a trailing frame axis (exact under DDP); ``compute()`` gives ``share_mean`` ``(frames,)``, ``share_std``,
    ``share_n``, ``share_n_undefined``.
    """

    quantities: ClassVar[tuple[str, ...]] = ("share",)

    def __init__(self, frames: int, **kwargs: Any) -> None:
        self.frames = check_int("frames", frames, 1)
        super().__init__(width=(self.frames,), **kwargs)

    def update(self, shares: Tensor) -> None:
        if shares.dim() != 2 or shares.shape[1] != self.frames:
            raise ValueError(f"shares must have shape (B, {self.frames}), got {tuple(shares.shape)}")
        defined = ~torch.isnan(shares).all(dim=1)
        self._accumulate(0, shares, defined)
