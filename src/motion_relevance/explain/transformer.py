"""Explanations of video transformers at token resolution: token Grad-CAM and attention rollout.

Both work on models that cut clips into tubelets (``models.VideoMAE``: a ``token_grid(shape)`` method and
``tubelet_size`` / ``patch_size`` attributes), compute one value per token on the grid ``(T / tubelet, H / patch,
W / patch)`` and map it back to the input with :func:`tokens_to_frames`; the result is ``(B, 1, T, H, W)`` like
:class:`~motion_relevance.explain.explainers.GradCAM`. The method is described in ``docs/method.md``
("Video transformers (token maps, rollout, tubelet-resolution selective relevance)").

Mapping tokens to frames is frame-aligned: a token covers exactly the ``tubelet`` frames and ``patch x patch``
pixels its tubelet was cut from (the tubelet embedding is a convolution with kernel = stride). ``"nearest"``
(default) copies each token's value to those voxels, so no value reaches a frame its token never saw and the map is
constant within a tubelet; ``"trilinear"`` (``align_corners=False``) puts each token's value at the centre of its
tubelet and interpolates linearly between neighbouring tubelets (smoother, as Grad-CAM of the CNNs here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from motion_relevance.checks import check_pair
from motion_relevance.explain.base import Explainer
from motion_relevance.explain.validation import ModelStructure, get_layer
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


class AttentionRollout(Explainer):
    """Attention rollout (Abnar & Zuidema, 2020) over every block, mapped to the clip; ``C = 1``, class-agnostic.

    Each block's attention probabilities ``(B, heads, N, N)`` (the outputs of its ``nn.Softmax`` module, captured
    with forward hooks) are fused over heads, mixed with the residual path as ``A_hat = 0.5 * A + 0.5 * I`` and
    renormalised to rows summing to 1; the rollout is the product ``A_hat_L … A_hat_1`` (row i: how much output
    token i draws from each input token). VideoMAE has no CLS token: with mean pooling the classifier sees the mean
    of the output tokens, so input token j gets the mean over i of ``rollout[i, j]``; without mean pooling it sees
    the first token, so token j gets ``rollout[0, j]``. The token values sum to 1 per clip.

    The target is ignored: rollout depends on the attention only, not on the class (the same map for every class).

    Args:
        head_fusion: ``"mean"`` (the paper's), ``"max"`` or ``"min"`` over heads.
        discard_ratio: share of the smallest fused attention entries set to 0 per clip and block before the
            identity is added (0 = the paper's rollout).
        upsample: ``"nearest"`` or ``"trilinear"`` (see :func:`tokens_to_frames`).
        name: metric-key name (default ``"rollout"``).
    """

    name = "rollout"

    def __init__(
        self,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        upsample: str = "nearest",
        name: str | None = None,
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

    def __repr__(self) -> str:
        return (
            f"AttentionRollout(head_fusion={self.head_fusion!r}, discard_ratio={self.discard_ratio}, "
            f"upsample={self.upsample!r}, name={self.name!r})"
        )

    @staticmethod
    def _softmax_names(model: nn.Module, structure: ModelStructure, tokens: int) -> list[str]:
        names = []
        for name, module in model.named_modules():
            if not isinstance(module, nn.Softmax):
                continue
            shape = structure.output_shapes.get(name)
            if shape is not None and len(shape) == 4 and shape[2] == shape[3] == tokens:
                names.append(name)
        return names

    def _validate(self, model: nn.Module, structure: ModelStructure, clips: Tensor) -> None:
        grid, _, _ = _grid(model, clips)
        tokens = grid[0] * grid[1] * grid[2]
        names = self._softmax_names(model, structure, tokens)
        if not names:
            raise ValueError(
                f"AttentionRollout found no attention softmax: it needs nn.Softmax modules whose output is the "
                f"attention (B, heads, N={tokens}, N={tokens}); {type(model).__name__} has none"
            )
        for name in names:
            if structure.calls.get(name, 0) != 1:
                raise ValueError(
                    f"AttentionRollout needs each attention softmax to run once per forward pass, but {name!r} ran "
                    f"{structure.calls.get(name, 0)} times; give each block its own nn.Softmax module"
                )

    def _fuse(self, probs: Tensor) -> Tensor:
        """``(B, heads, N, N) -> (B, N, N)``: heads fused, smallest entries discarded, identity mixed in."""
        if self.head_fusion == "mean":
            fused = probs.mean(dim=1)
        elif self.head_fusion == "max":
            fused = probs.amax(dim=1)
        else:
            fused = probs.amin(dim=1)
        batch, n, _ = fused.shape
        drop = int(self.discard_ratio * n * n)
        if drop:
            flat = fused.reshape(batch, -1).clone()
            flat.scatter_(1, flat.topk(drop, dim=1, largest=False).indices, 0.0)
            fused = flat.reshape(batch, n, n)
        eye = torch.eye(n, dtype=fused.dtype, device=fused.device)
        mixed = 0.5 * fused + 0.5 * eye
        return mixed / mixed.sum(dim=-1, keepdim=True)

    def _explain(self, model: nn.Module, clips: Tensor, target: Tensor | None, structure: ModelStructure) -> Tensor:
        grid, tubelet, patch = _grid(model, clips)
        tokens = grid[0] * grid[1] * grid[2]
        modules = dict(model.named_modules())
        captured: list[Tensor] = []
        handles = [
            modules[name].register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
            for name in self._softmax_names(model, structure, tokens)
        ]
        try:
            with torch.no_grad():
                model(clips)
        finally:
            for handle in handles:
                handle.remove()
        batch = clips.shape[0]
        dtype = captured[0].dtype
        first_token = not bool(getattr(token_model(model), "use_mean_pooling", True))
        if first_token:  # the classifier reads output token 0
            row = torch.zeros(batch, 1, tokens, dtype=dtype, device=clips.device)
            row[..., 0] = 1.0
        else:  # the classifier reads the mean of the output tokens
            row = torch.full((batch, 1, tokens), 1.0 / tokens, dtype=dtype, device=clips.device)
        with torch.no_grad():
            for probs in reversed(captured):  # row @ A_hat_L @ … @ A_hat_1, without forming the N x N product
                row = row @ self._fuse(probs)
        maps = row.reshape(batch, *grid).to(clips.dtype)
        return tokens_to_frames(maps, tubelet, patch, clips.shape[2:], self.upsample)
