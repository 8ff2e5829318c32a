"""The batched scoring engine of the faithfulness tests: one clean forward pass per clip batch (``s(x)``, the
target's range check), then every perturbed input of every clip through the model in batches of ``batch_size``
under ``torch.no_grad()`` in eval mode (each module's training flag restored afterwards), built in place in one
reused buffer. :func:`curves` drives the deletion/insertion curves, :func:`drops` the score drops of masks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.checks import check_clips, check_int, resolve_targets
from motion_relevance.metrics.faithfulness.references import reference_compact

__all__ = ["DEFAULT_BATCH_SIZE", "InputBuilder", "batch_bytes", "check_call", "check_steps", "curves", "drops"]

DEFAULT_BATCH_SIZE = 16
InputBuilder = Callable[[Tensor], Any]


def check_call(model: Any, clips: Any, batch_size: Any, input_builder: Any) -> int:
    """The arguments every model-calling function shares; returns ``batch_size``."""
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module (or a callable), got {type(model).__name__}")
    check_clips("clips", clips, finite=True)
    if input_builder is not None and not callable(input_builder):
        raise TypeError(f"input_builder must be None or a callable clip -> model input, got {input_builder!r}")
    return check_int("batch_size", batch_size, 1)


def check_steps(steps: Any, voxels: int) -> int:
    """``steps`` ``K`` in ``[1, voxels]``: a curve has at most one step per voxel of a clip (``T*H*W``)."""
    k = check_int("steps", steps, 1)
    if k > voxels:
        raise ValueError(f"steps={k} exceeds the {voxels} voxels (T*H*W) of a clip: a curve removes at least one "
                         f"voxel per step; set steps <= {voxels}")
    return k


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
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


class Scorer:
    """One clean forward (target check, ``s(x)``) and the perturbed forwards of a batch of clips."""

    def __init__(
        self, model: Any, clips: Tensor, target: Any, batch_size: int, input_builder: InputBuilder | None
    ) -> None:
        self.model, self.clips, self.batch_size, self.input_builder = model, clips, batch_size, input_builder
        self.target_in = resolve_targets("target", target, clips.shape[0])  # type check before any forward pass

    def clean(self) -> Tensor:
        """``s(x)`` float32 ``(B,)``; also fixes ``self.target`` (given, else predicted) after checking its range."""
        logits = torch.cat(
            [
                _logits(self.model, self.clips[i : i + self.batch_size], self.input_builder)
                for i in range(0, self.clips.shape[0], self.batch_size)
            ]
        )
        if self.target_in is None:
            target = logits.argmax(1)
        else:
            target = resolve_targets("target", self.target_in, self.clips.shape[0], logits.shape[1])
            assert target is not None
            target = target.to(logits.device)
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


def curves(
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
    """Scores ``(B, steps + 1)`` while the voxels are removed (inserted) in the order ``ranks`` ``(B, T*H*W)``."""
    b, c, t, h, w = clips.shape
    n_vox = t * h * w
    scorer = Scorer(model, clips, target, batch_size, input_builder)
    with eval_mode(model):
        s_clean = scorer.clean()
        ref = reference_compact(clips, kind, blur_sigma)
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


def drops(
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
    scorer = Scorer(model, clips, target, batch_size, input_builder)
    with eval_mode(model):
        s_clean = scorer.clean()
        refs = {kind: reference_compact(clips, kind, blur_sigma) for kind in dict.fromkeys(kinds)}
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


def batch_bytes(clip_shape: tuple[int, ...], itemsize: int, clips: int, steps: int, batch_size: int,
                blur: bool = False, *, full_copy: bool = False) -> dict[str, int]:
    """Bytes of the tensors :func:`curves` and :func:`drops` hold for ``clips`` clips of ``clip_shape``
    ``(C, T, H, W)`` (elements of ``itemsize`` bytes), by the setting that scales them:

    * ``"batch_size"``: the perturbed-input buffer (``rows x C*T*H*W``) and the two 0/1 masks (``rows x T*H*W``),
      ``rows = min(batch_size, clips * max(steps, 3))``;
    * ``"steps"``: the per-item index and score vectors (``clips * steps`` items: clip and voxel-count indices,
      gathered target, score: 28 bytes each);
    * ``"clips"``: the references (a full blurred copy of the clips and its two separable passes for ``blur``, the
      temporal mean for the others, plus a full copy of the clips with ``full_copy``: the static-removed clip of
      motion reliance) and the clean scores.

    The model's own activations for a forward pass of ``rows`` inputs are not counted (they depend on the model).
    """
    c, t, h, w = (int(v) for v in clip_shape)
    voxels = t * h * w
    rows = min(batch_size, clips * max(steps, 3))
    ref = 3 * clips * c * voxels if blur else clips * c * (h * w + (voxels if full_copy else 0))
    return {
        "batch_size": rows * (c * voxels + 2 * voxels) * itemsize,
        "steps": clips * steps * 28,
        "clips": ref * itemsize + clips * 8,
    }
