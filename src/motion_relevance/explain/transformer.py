"""Explanations of video transformers at token resolution: token Grad-CAM and attention rollout.

Both work on models that cut clips into tubelets (``models.VideoMAE``, transformers' classifiers through
``models.hf``: a ``token_grid(shape)`` method and ``tubelet_size`` / ``patch_size`` attributes), compute one value
per token on the grid ``(T / tubelet, H / patch, W / patch)`` and map it back to the input with
:func:`tokens_to_frames`; the result is ``(B, 1, T, H, W)`` like :class:`~motion_relevance.explain.explainers.GradCAM`.
Rollout reads each model's attention layout (class tokens, token order, read-out, TimeSformer's divided attention)
from :func:`_layout`. The method is described in ``docs/method.md``
("Video transformers (token maps, rollout, tubelet-resolution selective relevance)").

Mapping tokens to frames is frame-aligned: a token covers exactly the ``tubelet`` frames and ``patch x patch``
pixels its tubelet was cut from (the tubelet embedding is a convolution with kernel = stride). ``"nearest"``
(default) copies each token's value to those voxels, so no value reaches a frame its token never saw and the map is
constant within a tubelet; ``"trilinear"`` (``align_corners=False``) puts each token's value at the centre of its
tubelet and interpolates linearly between neighbouring tubelets (smoother, as Grad-CAM of the CNNs here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from motion_relevance.checks import check_pair
from motion_relevance.explain.base import Explainer
from motion_relevance.explain.validation import ModelStructure, get_layer
from motion_relevance.models.hf import HFVideoClassifier
from motion_relevance.models.videomae import VideoMAELayer

__all__ = ["AttentionRollout", "TokenGradCAM", "block_names", "token_model", "tokens_to_frames"]

_MODES = ("nearest", "trilinear")
_FUSIONS = ("mean", "max", "min")


def tokens_to_frames(
    maps: Tensor,
    tubelet: int,
    patch: int | Sequence[int],
    size: Sequence[int],
    mode: str = "nearest",
) -> Tensor:
    """Token maps ``(B, T', H', W')`` -> input-resolution maps ``(B, 1, T, H, W)``.

    Args:
        maps: one value per token on the grid ``(T / tubelet, H / patch_h, W / patch_w)``.
        tubelet: frames per token.
        patch: pixels per token side (int or ``(patch_h, patch_w)``).
        size: ``(T, H, W)`` of the clip; must equal the grid times the tubelet / patch sizes.
        mode: ``"nearest"`` (each token's value over its own tubelet's voxels) or ``"trilinear"`` (value at the
            tubelet centre, linear in between; ``align_corners=False``).
    """
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"token maps must have shape (B, T', H', W'), got {shape}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if isinstance(tubelet, bool) or not isinstance(tubelet, int) or tubelet <= 0:
        raise ValueError(f"tubelet must be a positive int, got {tubelet!r}")
    ph, pw = check_pair("patch", patch)
    size_t = tuple(int(s) for s in size)
    if len(size_t) != 3:
        raise ValueError(f"size must be (T, H, W), got {tuple(size)!r}")
    grid = tuple(maps.shape[1:])
    expected = (grid[0] * tubelet, grid[1] * ph, grid[2] * pw)
    if expected != size_t:
        raise ValueError(
            f"token grid {'x'.join(map(str, grid))} with tubelet {tubelet} and patch {ph}x{pw} covers "
            f"{'x'.join(map(str, expected))} (T x H x W), not the clip's {'x'.join(map(str, size_t))}"
        )
    volume = maps.unsqueeze(1)
    if mode == "nearest":
        return volume.repeat_interleave(tubelet, 2).repeat_interleave(ph, 3).repeat_interleave(pw, 4)
    return F.interpolate(volume, size=size_t, mode="trilinear", align_corners=False)


def token_model(model: nn.Module) -> nn.Module:
    """The module that cuts clips into tokens (``model`` itself or its first submodule with ``token_grid``)."""
    for _, module in model.named_modules():
        if callable(getattr(module, "token_grid", None)) and hasattr(module, "tubelet_size"):
            return module
    raise TypeError(
        f"{type(model).__name__} is not a token model: token-level explanations need a model with token_grid(shape),"
        " tubelet_size and patch_size (e.g. motion_relevance.models.VideoMAE)"
    )


def block_names(model: nn.Module) -> list[str]:
    """Names of the transformer blocks of ``model`` (``VideoMAELayer`` modules), in order."""
    return [name for name, module in model.named_modules() if isinstance(module, VideoMAELayer)]


def _grid(model: nn.Module, clips: Tensor) -> tuple[tuple[int, int, int], int, tuple[int, int]]:
    tokens = token_model(model)
    grid = tuple(int(g) for g in tokens.token_grid(tuple(clips.shape)))
    patch = check_pair("patch_size", tokens.patch_size)
    return grid, int(tokens.tubelet_size), patch  # type: ignore[return-value]


def _check_upsample(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"upsample must be one of {_MODES}, got {mode!r}")
    return mode


class TokenGradCAM(Explainer):
    """Grad-CAM on a transformer block's output tokens ``(B, N, D)``, mapped to the clip; ``C = 1``.

    The block's tokens are reshaped to the grid ``(T / tubelet, H / patch, W / patch)``; channel weights are the
    target logit's gradient averaged over all tokens, the map is ``ReLU(sum_d weight_d * token_d)`` per token,
    then :func:`tokens_to_frames`.

    Args:
        layer: module path of the block (``"videomae.encoder.layer.11"``); ``None``: the model's
            ``explain_layer`` (the last block). Any module whose output is the token tensor ``(B, N, D)`` is
            accepted; others are refused, naming the module and listing the blocks.
        upsample: ``"nearest"`` (each token over its own tubelet's frames and pixels) or ``"trilinear"``.
        name: metric-key name (default ``"token_gradcam"``).
    """

    name = "token_gradcam"

    def __init__(self, layer: str | None = None, upsample: str = "nearest", name: str | None = None) -> None:
        super().__init__(name)
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise TypeError(f"layer must be a module path such as 'videomae.encoder.layer.11' or None, got {layer!r}")
        self.layer = layer
        self.upsample = _check_upsample(upsample)

    def __repr__(self) -> str:
        return f"TokenGradCAM(layer={self.layer!r}, upsample={self.upsample!r}, name={self.name!r})"

    def _layer_name(self, model: nn.Module) -> str:
        if self.layer is not None:
            return self.layer
        tokens = token_model(model)
        explain_layer = getattr(tokens, "explain_layer", None)
        if isinstance(explain_layer, str):
            prefix = next((n for n, m in model.named_modules() if m is tokens), "")
            return f"{prefix}.{explain_layer}" if prefix else explain_layer
        blocks = block_names(model)
        if not blocks:
            raise ValueError("TokenGradCAM found no transformer block; pass layer=<module path of a block>")
        return blocks[-1]

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        grid, _, _ = _grid(model, clips)
        name = self._layer_name(model)
        module = get_layer(model, name)
        tokens = grid[0] * grid[1] * grid[2]
        shape = structure.output_shapes.get(name)
        if shape is None or len(shape) != 3 or shape[1] != tokens:
            raise ValueError(
                f"TokenGradCAM needs a transformer block whose output is the tokens (B, N={tokens}, D), but "
                f"{name!r} ({type(module).__name__}) outputs {shape}; blocks: {block_names(model)}"
            )
        calls = structure.calls.get(name, 0)
        if calls != 1:
            raise ValueError(
                f"TokenGradCAM needs layer {name!r} to run exactly once per forward pass, but it ran {calls} times"
            )

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        grid, tubelet, patch = _grid(model, clips)
        captured: list[Tensor] = []
        handle = get_layer(model, self._layer_name(model)).register_forward_hook(
            lambda _m, _i, out: captured.append(out)
        )
        try:
            logits = model(clips)
        finally:
            handle.remove()
        tokens = captured[0]
        index = logits.detach().argmax(1) if target is None else target.to(logits.device)
        score = logits.gather(1, index.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, tokens)
        weights = grad.mean(dim=1, keepdim=True)  # (B, 1, D): mean gradient over tokens, per channel
        cam = torch.relu((weights * tokens).sum(dim=-1)).detach()  # (B, N)
        return tokens_to_frames(cam.reshape(cam.shape[0], *grid), tubelet, patch, clips.shape[2:], self.upsample)


@dataclass(frozen=True)
class _Layout:
    """How a token model's attention is laid out, for rollout.

    ``prefix``: class tokens before the patch tokens on the attention's token axis; ``order``: order of the patch
    tokens (``"thw"``, or ``"hwt"`` for TimeSformer); ``readout``: what the classifier reads, ``"mean"`` (mean of the
    output tokens), ``"first"`` (output token 0: the class token, or the first patch token without one) or
    ``"query"`` (the cross-attention of one learned query, V-JEPA 2's attentive pooler); ``divided``: module path of
    the block list when each block runs a time and a space attention (TimeSformer's divided space-time attention),
    else ``None``.
    """

    prefix: int = 0
    order: str = "thw"
    readout: str = "mean"
    divided: str | None = None


def _layout(model: nn.Module) -> _Layout:
    """The attention layout of ``model``'s token model (transformers' classes by their config, others by
    ``use_mean_pooling``)."""
    tokens = token_model(model)
    if isinstance(tokens, HFVideoClassifier):
        config, spec = tokens.hf.config, tokens.spec
        where = next(name for name, module in model.named_modules() if module is tokens)
        blocks = f"{where}.hf.{spec.blocks}" if where else f"hf.{spec.blocks}"
        readout = {"videomae": "mean" if getattr(config, "use_mean_pooling", True) else "first",
                   "vjepa2": "query"}.get(spec.model_type, "first")
        return _Layout(spec.prefix_tokens, spec.order, readout, blocks if tokens.divided_attention else None)
    return _Layout(readout="mean" if bool(getattr(tokens, "use_mean_pooling", True)) else "first")


def _token_index(grid: Sequence[int], layout: _Layout, device: torch.device) -> Tensor:
    """``(T', H' W')``: the position of patch token ``(t, s)`` (``s = h W' + w``) on the attention's token axis."""
    t, h, w = grid
    s = torch.arange(h * w, device=device)
    frames = torch.arange(t, device=device)[:, None]
    if layout.order == "hwt":
        return layout.prefix + s[None, :] * t + frames
    return layout.prefix + frames * (h * w) + s[None, :]


class AttentionRollout(Explainer):
    """Attention rollout (Abnar & Zuidema, 2020) over every block, mapped to the clip; ``C = 1``, class-agnostic.

    Each attention's probabilities (the outputs of its ``nn.Softmax`` module, captured with forward hooks) are fused
    over heads, written as a token-by-token matrix ``A`` over all tokens (class token first), mixed with the
    residual path as ``A_hat = 0.5 * A + 0.5 * I`` and renormalised to rows summing to 1; the rollout is the
    product of the ``A_hat`` in the order the attentions run (row i: how much output token i draws from each input
    token), read out as the classifier reads the tokens:

    * mean pooling (VideoMAE): input token j gets the mean over i of ``rollout[i, j]``; first-token pooling or a
      class token (ViViT, TimeSformer): ``rollout[0, j]``;
    * V-JEPA 2's attentive pooler: its self-attention layers are blocks like the encoder's; its cross-attention from
      the one learned query is the read-out row (fused over heads, no identity: the residual there is the query, a
      constant);
    * TimeSformer's divided attention: per block the time attention (each spatial position over the frames; the
      class token passes unchanged) then the space attention (each frame with the class token; the class token's
      output is the mean over frames of its per-frame rows), each its own ``A_hat``.

    The class token's own share is dropped: the patch token values sum to 1 minus it (1 without a class token). The
    model's method is described in ``docs/method.md`` ("Video transformers").

    A model whose attention softmax is a function (transformers' models through ``models.hf``) is canonized first
    (once per model; :mod:`.canonize_trace`): every softmax call becomes its own ``nn.Softmax`` module, with the same
    parameters and logits. The target is ignored: rollout depends on the attention only.

    Args:
        head_fusion: ``"mean"`` (the paper's), ``"max"`` or ``"min"`` over heads.
        discard_ratio: share of the smallest fused attention entries set to 0 per clip and attention before the
            identity is added (0 = the paper's rollout); for a divided attention, of the entries it computes (all
            groups of the clip together).
        upsample: ``"nearest"`` or ``"trilinear"`` (see :func:`tokens_to_frames`).
        name: metric-key name (default ``"rollout"``).
        canonize: canonize a model without attention ``nn.Softmax`` modules (``False`` refuses it).
    """

    name = "rollout"

    def __init__(
        self,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        upsample: str = "nearest",
        name: str | None = None,
        canonize: bool = True,
    ) -> None:
        super().__init__(name)
        if head_fusion not in _FUSIONS:
            raise ValueError(f"head_fusion must be one of {_FUSIONS}, got {head_fusion!r}")
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not (
            0.0 <= float(discard_ratio) < 1.0
        ):
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.upsample = _check_upsample(upsample)
        self.canonize = bool(canonize)

    def __repr__(self) -> str:
        return (
            f"AttentionRollout(head_fusion={self.head_fusion!r}, discard_ratio={self.discard_ratio}, "
            f"upsample={self.upsample!r}, name={self.name!r})"
        )

    def _wants_canonical(self, model: nn.Module, structure: ModelStructure) -> bool:
        """Canonize only a model with no attention-shaped ``nn.Softmax`` or with one that runs more than once."""
        names = [name for name, module in model.named_modules()
                 if isinstance(module, nn.Softmax) and len(structure.output_shapes.get(name) or ()) == 4]
        return not names or any(structure.calls.get(name, 0) != 1 for name in names)

    @staticmethod
    def _attentions(model: nn.Module, structure: ModelStructure, clips: Tensor) -> dict[str, str]:
        """Attention softmax module path -> kind (``"joint"``, ``"time"``, ``"space"``, ``"query"``), from the
        shapes of the analysis pass (one clip)."""
        layout = _layout(model)
        t, h, w = _grid(model, clips)[0]
        n = layout.prefix + t * h * w
        kinds: dict[str, str] = {}
        for name, module in model.named_modules():
            shape = structure.output_shapes.get(name)
            if not isinstance(module, nn.Softmax) or shape is None or len(shape) != 4:
                continue
            rows = tuple(shape[2:])
            if layout.divided is not None and name.startswith(f"{layout.divided}."):
                branch = name[len(layout.divided) + 1:].split(".")[1:2]
                if branch == ["temporal_attention"] and shape[0] == h * w and rows == (t, t):
                    kinds[name] = "time"
                elif branch == ["attention"] and shape[0] == t and rows == (1 + h * w, 1 + h * w):
                    kinds[name] = "space"
            elif rows == (n, n):
                kinds[name] = "joint"
            elif layout.readout == "query" and rows == (1, n):
                kinds[name] = "query"
        return kinds

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        layout = _layout(model)
        grid = _grid(model, clips)[0]
        tokens = layout.prefix + grid[0] * grid[1] * grid[2]
        kinds = self._attentions(model, structure, clips)
        if not kinds:
            raise ValueError(
                f"AttentionRollout found no attention softmax: it needs the attention (B, heads, N={tokens}, "
                f"N={tokens}) as the output of an nn.Softmax module, and {type(model).__name__} has none"
                + ("" if self.canonize else "; pass canonize=True to rewrite a functional softmax as modules")
                + "; explain models with attention (e.g. motion_relevance.models.VideoMAE or models.hf)"
            )
        for name in kinds:
            if structure.calls.get(name, 0) != 1:
                raise ValueError(
                    f"AttentionRollout needs each attention softmax to run once per forward pass, but {name!r} ran "
                    f"{structure.calls.get(name, 0)} times; give each block its own nn.Softmax module"
                )
        counts = {kind: list(kinds.values()).count(kind) for kind in ("time", "space", "query")}
        if layout.divided is not None and not (counts["time"] == counts["space"] > 0):
            raise ValueError(
                f"AttentionRollout found {counts['time']} time and {counts['space']} space attentions under "
                f"{layout.divided!r}, not one of each per block; explain this model with canonize=True"
            )
        if layout.readout == "query" and counts["query"] != 1:
            raise ValueError(
                f"AttentionRollout needs one cross-attention from the pooler's query to the {tokens} tokens, found "
                f"{counts['query']}; only an attentive pooler with one query token is supported"
            )

    def _heads(self, probs: Tensor) -> Tensor:
        """Heads fused: ``(..., heads, a, b) -> (..., a, b)``."""
        if self.head_fusion == "mean":
            return probs.mean(dim=-3)
        if self.head_fusion == "max":
            return probs.amax(dim=-3)
        return probs.amin(dim=-3)

    def _discard(self, fused: Tensor) -> Tensor:
        """The ``discard_ratio`` share of each clip's smallest entries (first dimension: clips) set to 0."""
        flat = fused.reshape(fused.shape[0], -1)
        drop = int(self.discard_ratio * flat.shape[1])
        if not drop:
            return fused
        flat = flat.clone()
        flat.scatter_(1, flat.topk(drop, dim=1, largest=False).indices, 0.0)
        return flat.reshape(fused.shape)

    @staticmethod
    def _mix(full: Tensor) -> Tensor:
        """``(B, N, N)``: ``0.5 * A + 0.5 * I`` with rows renormalised to sum to 1."""
        eye = torch.eye(full.shape[-1], dtype=full.dtype, device=full.device)
        mixed = 0.5 * full + 0.5 * eye
        return mixed / mixed.sum(dim=-1, keepdim=True)

    def _fuse(self, probs: Tensor) -> Tensor:
        """Joint attention ``(B, heads, N, N) -> A_hat (B, N, N)``: heads fused, smallest entries discarded,
        identity mixed in."""
        return self._mix(self._discard(self._heads(probs)))

    def _divided(self, probs: Tensor, kind: str, index: Tensor, batch: int) -> Tensor:
        """One divided attention ``(B G, heads, a, a)`` -> ``A_hat (B, 1 + N, 1 + N)`` over all tokens.

        ``index`` ``(T', S)``: each patch token's position. Time (``G = S`` positions, ``a = T'``): patch ``(t, s)``
        draws ``A_s[t, u]`` from ``(u, s)``; the class token only from itself. Space (``G = T'`` frames, ``a = 1 + S``,
        class token first): patch ``(t, s)`` draws ``A_t[s, s']`` from ``(t, s')`` and ``A_t[s, cls]`` from the class
        token; the class token's output is the mean over frames of its rows, so it draws ``mean_t A_t[cls, cls]``
        from itself and ``A_t[cls, s'] / T'`` from ``(t, s')``.
        """
        frames, positions = index.shape
        fused = self._heads(probs)
        fused = self._discard(fused.reshape(batch, -1, *fused.shape[-2:]))  # (B, G, a, a)
        size = 1 + frames * positions
        full = fused.new_zeros(batch, size, size)
        if kind == "time":
            by_position = index.t()  # (S, T')
            rows = by_position[:, :, None].expand(positions, frames, frames)
            cols = by_position[:, None, :].expand(positions, frames, frames)
            full[:, rows, cols] = fused
            full[:, 0, 0] = 1.0
        else:
            rows = index[:, :, None].expand(frames, positions, positions)
            cols = index[:, None, :].expand(frames, positions, positions)
            full[:, rows, cols] = fused[:, :, 1:, 1:]
            full[:, index, 0] = fused[:, :, 1:, 0]
            full[:, 0, index] = fused[:, :, 0, 1:] / frames
            full[:, 0, 0] = fused[:, :, 0, 0].mean(dim=1)
        return self._mix(full)

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        grid, tubelet, patch = _grid(model, clips)
        layout = _layout(model)
        kinds = self._attentions(model, structure, clips)
        modules = dict(model.named_modules())
        captured: list[tuple[str, Tensor]] = []

        def hook(name: str) -> Callable[..., None]:
            return lambda _m, _i, out: captured.append((name, out.detach()))

        handles = [modules[name].register_forward_hook(hook(name)) for name in kinds]
        try:
            with torch.no_grad():
                model(clips)
        finally:
            for handle in handles:
                handle.remove()
        batch, size = clips.shape[0], layout.prefix + grid[0] * grid[1] * grid[2]
        dtype = captured[0][1].dtype
        if layout.readout == "query":  # V-JEPA 2: the pooler's cross-attention, the last attention to run
            probs = next(p for n, p in captured if kinds[n] == "query")
            captured = [(n, p) for n, p in captured if kinds[n] != "query"]
            row = self._heads(probs).reshape(batch, 1, size).to(dtype)
            row = row / row.sum(dim=-1, keepdim=True)
        elif layout.readout == "first":  # the classifier reads output token 0 (the class token, if any)
            row = torch.zeros(batch, 1, size, dtype=dtype, device=clips.device)
            row[..., 0] = 1.0
        else:  # the classifier reads the mean of the output tokens
            row = torch.full((batch, 1, size), 1.0 / size, dtype=dtype, device=clips.device)
        index = _token_index(grid, layout, clips.device)
        with torch.no_grad():
            for name, probs in reversed(captured):  # row @ A_hat_L @ … @ A_hat_1, without forming the N x N product
                kind = kinds[name]
                step = self._fuse(probs) if kind == "joint" else self._divided(probs, kind, index, batch)
                row = row @ step.to(row.dtype)
        values = row[:, 0].gather(1, index.reshape(1, -1).expand(batch, -1))  # (B, T' S) in (t, s) order
        maps = values.reshape(batch, *grid).to(clips.dtype)
        return tokens_to_frames(maps, tubelet, patch, clips.shape[2:], self.upsample)
