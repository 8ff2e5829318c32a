"""Masked video modelling with tube masking: the self-supervised pre-training of the video transformers.

VideoMAE's masking (Tong et al., 2022): a clip's token grid ``(T', H', W')`` is masked in *tubes*, the same
spatial positions in every time step, so that a masked patch cannot be copied from the frame before or after it;
reconstructing it needs where things are at each time, i.e. their motion. The encoder sees masked tokens as one
learnt mask token (SimMIM's encoder, Xie et al., 2022) instead of dropping them (VideoMAE's), so that the same code
serves joint attention (VideoMAE, ViViT) and TimeSformer's divided attention, whose blocks need the full grid.
A linear head reads the last block's tokens and predicts the pixels of each masked tubelet, either as they are
(in the data's normalisation) or normalised per tubelet (VideoMAE's ``norm_pix_loss``); the loss is the mean
squared error over masked tubelets only.

Supported networks (:func:`embedding_and_features`): :class:`~motion_relevance.models.VideoMAE` and the adapter
:class:`~motion_relevance.models.hf.HFVideoClassifier` around VideoMAE, ViViT and TimeSformer. Token order is
``(T', H', W')`` (t-major) throughout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.checks import check_clips, check_float, check_pair
from motion_relevance.models.videomae import VideoMAE

__all__ = ["MaskedVideoModel", "embedding_and_features", "native_grid", "normalize_targets", "patchify", "tube_mask"]


def native_grid(net: nn.Module) -> tuple[int, int, int]:
    """Token grid ``(T', H', W')`` of the clips ``net`` was built for (its ``num_frames`` and ``image_size``)."""
    return net.token_grid((net.num_frames, *check_pair("image_size", net.image_size)))


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """Boolean mask ``(batch, T' * H' * W')`` (True = masked), t-major token order.

    Each clip masks exactly ``round(ratio * H' * W')`` spatial positions, drawn independently per clip, in all
    ``T'`` time steps (tubes). ``ratio`` must leave at least one position visible and mask at least one.
    """
    t, h, w = (int(g) for g in grid)
    ratio = check_float("pretrain.mask_ratio", ratio, 0.0, 1.0)
    num_masked = round(ratio * h * w)
    if not 0 < num_masked < h * w:
        raise ValueError(f"pretrain.mask_ratio={ratio} masks {num_masked} of the {h * w} spatial positions of the "
                         f"token grid {t}x{h}x{w}; choose a ratio that masks at least one and leaves one visible")
    scores = torch.rand(batch, h * w, generator=generator)
    order = scores.argsort(dim=1)
    spatial = torch.zeros(batch, h * w, dtype=torch.bool)
    spatial.scatter_(1, order[:, :num_masked], True)
    return spatial.unsqueeze(1).expand(batch, t, h * w).reshape(batch, t * h * w)


def patchify(clips: Tensor, tubelet: tuple[int, int, int]) -> Tensor:
    """Clips ``(B, C, T, H, W)`` -> tubelet pixels ``(B, N, t * ph * pw * C)``, tokens t-major, each tubelet's
    pixels in ``(t, ph, pw, C)`` order."""
    check_clips("pretrain clips", clips)
    b, c, t, h, w = clips.shape
    tt, ph, pw = tubelet
    if t % tt or h % ph or w % pw:
        raise ValueError(f"clips {tuple(clips.shape)} cannot be cut into tubelets of {tt}x{ph}x{pw}")
    x = clips.reshape(b, c, t // tt, tt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, T', H', W', tt, ph, pw, C
    return x.reshape(b, (t // tt) * (h // ph) * (w // pw), tt * ph * pw * c)


def normalize_targets(pixels: Tensor, eps: float = 1e-6) -> Tensor:
    """Each tubelet's pixels ``(..., P)`` minus their mean, over their standard deviation (unbiased, as VideoMAE)."""
    mean = pixels.mean(dim=-1, keepdim=True)
    var = pixels.var(dim=-1, unbiased=True, keepdim=True)
    return (pixels - mean) / (var + eps).sqrt()


def embedding_and_features(net: nn.Module) -> tuple[str, str, int]:
    """Module paths of ``net``'s tubelet embedding and of the module whose output is the last block's patch tokens
    ``(B, N, D)`` in t-major order, and the width ``D``; ``ValueError`` for networks without them."""
    if isinstance(net, VideoMAE):
        return "videomae.embeddings.patch_embeddings", net.block_names[-1], int(net.hidden_size)
    architecture = getattr(net, "architecture", None)
    paths = {
        "VideoMAEForVideoClassification": "hf.videomae.embeddings.patch_embeddings",
        "VivitForVideoClassification": "hf.vivit.embeddings.patch_embeddings",
        "TimesformerForVideoClassification": "hf.timesformer.embeddings.patch_embeddings",
    }
    if architecture in paths and hasattr(net, "token_views"):
        return paths[architecture], f"token_views.{len(net.token_views) - 1}", int(net.hf.config.hidden_size)
    got = type(net).__name__ + (f" ({architecture})" if architecture else "")
    raise ValueError(f"pretrain=mae needs a video transformer (models.VideoMAE, or models.hf.HFVideoClassifier around "
                     f"{', '.join(sorted(paths))}), got {got}; drop pretrain= for this model")


class MaskedVideoModel(nn.Module):
    """``net`` with a learnt mask token and a pixel head: ``forward(clips, mask)`` returns the reconstruction loss.

    The mask token replaces the masked tokens at the output of the tubelet embedding (before the position table is
    added, so masked tokens keep their position); the head (LayerNorm, Linear ``D -> t * ph * pw * C``) reads the
    last block's tokens. ``net``'s own weights are trained in place; the mask token and head are dropped after.
    """

    def __init__(self, net: nn.Module, norm_targets: bool = True) -> None:
        super().__init__()
        embedding, features, dim = embedding_and_features(net)
        self.net = net
        self.norm_targets = bool(norm_targets)
        grid = native_grid(net)
        self.tubelet = (int(net.num_frames) // grid[0], int(net.patch_size[0]), int(net.patch_size[1]))
        self.grid = grid
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.04, b=0.04)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.tubelet[0] * self.tubelet[1] *
                                                               self.tubelet[2] * int(net.num_channels)))
        self._mask: Tensor | None = None
        self._features: Tensor | None = None
        self._hooks = [net.get_submodule(embedding).register_forward_hook(self._replace_masked),
                       net.get_submodule(features).register_forward_hook(self._keep_features)]

    def remove(self) -> None:
        """Take the hooks off ``net`` (it classifies as before, with its trained weights)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _replace_masked(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if self._mask is None:
            return None
        tokens = output[0] if isinstance(output, tuple) else output
        mask = self._mask
        if tokens.shape[0] != mask.shape[0]:  # TimeSformer: (B * T, H' * W', D), frames b-major
            mask = mask.reshape(tokens.shape[0], tokens.shape[1])
        tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        return (tokens, *output[1:]) if isinstance(output, tuple) else tokens

    def _keep_features(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        if self._mask is not None:
            self._features = output[0] if isinstance(output, tuple) else output

    def forward(self, clips: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked tubelets of ``clips (B, C, T, H, W)``; ``mask (B, N)`` bool."""
        if not self._hooks:
            raise RuntimeError("MaskedVideoModel.remove() was called; build a new one to pre-train again")
        n = self.grid[0] * self.grid[1] * self.grid[2]
        if mask.shape != (clips.shape[0], n) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape {(clips.shape[0], n)}, got {mask.dtype} {tuple(mask.shape)}")
        self._mask = mask.to(clips.device)
        try:
            self.net(clips)
            features = self._features
        finally:
            self._mask, self._features = None, None
        if features is None or features.shape[:2] != mask.shape:
            raise RuntimeError(f"the last block's tokens were not captured as (B, N, D) with N={n}")
        target = patchify(clips, self.tubelet)
        if self.norm_targets:
            target = normalize_targets(target)
        pred = self.head(features)
        return ((pred - target) ** 2).mean(dim=-1)[mask.to(clips.device)].mean()

