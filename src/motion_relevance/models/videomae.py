"""VideoMAE (Tong et al., 2022): a ViT over space-time tubelets, in Hugging Face transformers' layout.

The network takes clips ``(B, C, T, H, W)`` like every model here (transformers' ``pixel_values`` are
``(B, T, C, H, W)``; the tubelet convolution wants ``(B, C, T, H, W)``, so no permutation is needed):

==============================  ==============================================  ===================================
module                          computes                                        output
==============================  ==============================================  ===================================
``videomae.embeddings``         Conv3d, kernel = stride = (tubelet, p, p),       ``(B, N, D)``, N = T/t * H/p * W/p
                                flattened t-major (token n = (t*H' + h)*W' + w),
                                plus the fixed sinusoidal position table
``videomae.encoder.layer.{i}``  pre-norm block: ``x + attn(LN(x))``, then        ``(B, N, D)``
                                ``x + MLP(LN(x))``; joint space-time attention
``pooler``                      mean over tokens (``use_mean_pooling``) or the   ``(B, D)``
                                first token after ``videomae.layernorm``
``fc_norm``, ``classifier``     LayerNorm (mean pooling only), Linear            ``(B, num_classes)``
==============================  ==============================================  ===================================

State-dict keys and shapes are those of ``transformers.VideoMAEForVideoClassification`` (``videomae.embeddings.
patch_embeddings.projection.*``, ``videomae.encoder.layer.{i}.attention.attention.query/key/value.weight``,
``…attention.output.dense``, ``…intermediate.dense``, ``…output.dense``, ``…layernorm_before/after``, ``fc_norm`` or
``videomae.layernorm``, ``classifier``), so published fine-tuned weights load with ``strict=True`` and give the same
logits. The position table is a non-persistent buffer: transformers keeps it out of the state dict too.

Attention biases have two namings. Published checkpoints and transformers 4.x store them as
``…attention.attention.q_bias`` / ``v_bias`` (the key projection has no bias); transformers 5.x as
``…attention.attention.query.bias`` / ``value.bias``. Both load (the attention module renames the 4.x keys on
load). ``state_dict()`` writes the 5.x naming: the biases belong to the ``query`` / ``value`` ``nn.Linear`` modules,
so a relevance rule attached to a linear layer sees its bias, and it is what current transformers reads and writes.
:func:`rename_attention_biases` converts a state dict to either naming.

For relevance propagation every non-chain operation is its own parameter-free module, used at exactly one place:
``MatMul`` for ``Q K^T`` (``…attention.attention.qk_matmul``) and ``A V`` (``…attention.attention.av_matmul``),
``nn.Softmax(dim=-1)`` (``…attention.attention.softmax``), ``nn.GELU`` (``…intermediate.intermediate_act_fn``),
``nn.LayerNorm``, and ``Add`` for the two residual sums (``…attention_residual``, ``…mlp_residual``; operands
``(branch, skip)``) and for the position table (``videomae.embeddings.position_add``; operands
``(tokens, table)``, the table is a constant). None of them adds state-dict keys. The ``1 / sqrt(head_dim)``
attention scale multiplies the queries before ``qk_matmul`` (as in the original VideoMAE code), so the softmax's
input is exactly ``qk_matmul``'s output.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from motion_relevance.models.layers import Add, MatMul
from motion_relevance.models.weights import load_weights, read_weights

__all__ = [
    "TokenPool",
    "VideoMAE",
    "VideoMAELayer",
    "read_weights",
    "rename_attention_biases",
    "sinusoid_position_table",
]

log = logging.getLogger(__name__)

#: ``hidden_act`` values -> the GELU they mean in transformers (``gelu`` is the exact, erf-based GELU).
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_V4_BIAS = re.compile(r"^(.*attention\.attention\.)(q|v)_bias$")
_V5_BIAS = re.compile(r"^(.*attention\.attention\.)(query|value)\.bias$")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"model.{name} must be a positive int or (H, W), got {value!r}")
    return int(pair[0]), int(pair[1])


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    return int(value)


def _probability(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"model.{name} must be in [0, 1), got {value!r}")
    return float(value)


def sinusoid_position_table(num_positions: int, dim: int) -> Tensor:
    """The fixed position table ``(num_positions, dim)`` of VideoMAE (float32).

    ``table[n, j] = sin(n / 10000^(2 * (j // 2) / dim))`` for even ``j`` and ``cos(…)`` for odd ``j``, computed in
    float64 and rounded to float32, as transformers' ``get_sinusoid_encoding_table``.
    """
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    exponent = 2.0 * torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64) / dim
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32)


def rename_attention_biases(state: Mapping[str, Tensor], naming: str = "5.x") -> dict[str, Tensor]:
    """A copy of ``state`` with the attention biases named as transformers ``naming`` (``"4.x"`` or ``"5.x"``).

    ``"4.x"`` (published checkpoints): ``…attention.attention.q_bias`` / ``v_bias``; ``"5.x"``:
    ``…attention.attention.query.bias`` / ``value.bias``. Other keys are kept; the order of keys is kept.
    """
    if naming not in ("4.x", "5.x"):
        raise ValueError(f"naming must be '4.x' or '5.x', got {naming!r}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if naming == "5.x" and (m := _V4_BIAS.match(key)):
            key = f"{m.group(1)}{'query' if m.group(2) == 'q' else 'value'}.bias"
        elif naming == "4.x" and (m := _V5_BIAS.match(key)):
            key = f"{m.group(1)}{m.group(2)[0]}_bias"
        out[key] = value
    return out


class _PatchEmbeddings(nn.Module):
    """Tubelet embedding: ``(B, C, T, H, W) -> (B, N, D)`` with one Conv3d (kernel = stride)."""

    def __init__(self, num_channels: int, hidden_size: int, tubelet_size: int, patch_size: tuple[int, int]) -> None:
        super().__init__()
        kernel = (tubelet_size, *patch_size)
        self.projection = nn.Conv3d(num_channels, hidden_size, kernel_size=kernel, stride=kernel)

    def forward(self, clips: Tensor) -> Tensor:
        return self.projection(clips).flatten(2).transpose(1, 2)


class _Embeddings(nn.Module):
    """Tubelet embedding plus the fixed sinusoidal position table (a non-persistent buffer ``(1, N, D)``)."""

    def __init__(
        self,
        num_channels: int,
        hidden_size: int,
        tubelet_size: int,
        patch_size: tuple[int, int],
        grid: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.patch_embeddings = _PatchEmbeddings(num_channels, hidden_size, tubelet_size, patch_size)
        self.grid = grid
        table = sinusoid_position_table(grid[0] * grid[1] * grid[2], hidden_size).unsqueeze(0)
        self.register_buffer("position_embeddings", table, persistent=False)
        self.position_add = Add()

    def table_for(self, grid: tuple[int, int, int]) -> Tensor:
        """The position table ``(1, N, D)`` for a token grid; trilinear resampling when it differs from the
        grid it was built for (``interpolate_pos_encoding``)."""
        table = self.position_embeddings
        if tuple(grid) == self.grid:
            return table
        dim = table.shape[-1]
        volume = table.reshape(1, *self.grid, dim).permute(0, 4, 1, 2, 3)
        volume = F.interpolate(volume, size=tuple(grid), mode="trilinear", align_corners=False)
        return volume.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)

    def forward(self, clips: Tensor, grid: tuple[int, int, int]) -> Tensor:
        tokens = self.patch_embeddings(clips)
        return self.position_add(tokens, self.table_for(grid).to(dtype=tokens.dtype))


class _SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens; ``query``/``value`` carry the optional biases, ``key`` none."""

    def __init__(self, hidden_size: int, num_heads: int, qv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.num_attention_heads = num_heads
        self.attention_head_size = hidden_size // num_heads
        self.scaling = self.attention_head_size**-0.5
        self.query = nn.Linear(hidden_size, hidden_size, bias=qv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size, bias=qv_bias)
        self.qk_matmul = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.av_matmul = MatMul()

    def _heads(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(B, N, D) -> (B, N, D)``; the attention probabilities ``(B, heads, N, N)`` are ``softmax``'s output."""
        queries = self._heads(self.query(hidden)) * self.scaling
        keys = self._heads(self.key(hidden))
        values = self._heads(self.value(hidden))
        probs = self.dropout(self.softmax(self.qk_matmul(queries, keys.transpose(-2, -1))))
        context = self.av_matmul(probs, values)
        return context.transpose(1, 2).reshape(hidden.shape)

    def _load_from_state_dict(  # type: ignore[override]
        self,
        state_dict: MutableMapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # transformers 4.x / published checkpoints: q_bias, v_bias on this module -> query.bias, value.bias.
        # Children's entries are taken from this (already copied) dict after this call, so renaming here suffices.
        for old, new, linear in (("q_bias", "query.bias", self.query), ("v_bias", "value.bias", self.value)):
            if prefix + old in state_dict and linear.bias is not None and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _SelfOutput(nn.Module):
    def __init__(self, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.dropout(self.dense(hidden))


class _Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, qv_bias: bool, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        self.attention = _SelfAttention(hidden_size, num_heads, qv_bias, attn_dropout)
        self.output = _SelfOutput(hidden_size, dropout)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.output(self.attention(hidden))


class _Intermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, approximate: str) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = nn.GELU(approximate=approximate)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(hidden))


class _Output(nn.Module):
    """The MLP's second linear layer (transformers adds the residual here; this model uses ``mlp_residual``)."""

    def __init__(self, intermediate_size: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.dropout(self.dense(hidden))


class VideoMAELayer(nn.Module):
    """One pre-norm transformer block ``(B, N, D) -> (B, N, D)`` (transformers' ``VideoMAELayer``)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        qv_bias: bool,
        layer_norm_eps: float,
        approximate: str,
        attn_dropout: float,
        dropout: float,
    ) -> None:
        super().__init__()
        # Registered in transformers' order, so that state_dict() lists the keys as transformers does.
        self.attention = _Attention(hidden_size, num_heads, qv_bias, attn_dropout, dropout)
        self.intermediate = _Intermediate(hidden_size, intermediate_size, approximate)
        self.output = _Output(intermediate_size, hidden_size, dropout)
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attention_residual = Add()
        self.mlp_residual = Add()

    def forward(self, hidden: Tensor) -> Tensor:
        hidden = self.attention_residual(self.attention(self.layernorm_before(hidden)), hidden)
        return self.mlp_residual(self.output(self.intermediate(self.layernorm_after(hidden))), hidden)


class _Encoder(nn.Module):
    def __init__(self, layers: list[VideoMAELayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, hidden: Tensor) -> Tensor:
        for block in self.layer:
            hidden = block(hidden)
        return hidden


class _Backbone(nn.Module):
    """transformers' ``VideoMAEModel``: embeddings, encoder and (without mean pooling) a final LayerNorm."""

    def __init__(self, embeddings: _Embeddings, encoder: _Encoder, layernorm: nn.LayerNorm | None) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder
        self.register_module("layernorm", layernorm)

    def forward(self, clips: Tensor, grid: tuple[int, int, int]) -> Tensor:
        hidden = self.encoder(self.embeddings(clips, grid))
        return hidden if self.layernorm is None else self.layernorm(hidden)


class TokenPool(nn.Module):
    """``(B, N, D) -> (B, D)``: the mean over tokens (``"mean"``) or the first token (``"first"``)."""

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "first"):
            raise ValueError(f"TokenPool mode must be 'mean' or 'first', got {mode!r}")
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def forward(self, tokens: Tensor) -> Tensor:
        return tokens.mean(dim=1) if self.mode == "mean" else tokens[:, 0]


class VideoMAE(nn.Module):
    """VideoMAE classifier for clips ``(B, num_channels, num_frames, H, W)``; returns logits ``(B, num_classes)``.

    Constructor arguments that shape the weights are named like transformers' ``VideoMAEConfig``.

    Args:
        num_classes: outputs of ``classifier`` (400 for Kinetics-400).
        image_size: side of the input frames (int or ``(H, W)``); must be divisible by ``patch_size``.
        patch_size: spatial side of a tubelet (int or ``(H, W)``).
        num_channels: input channels (3 for RGB).
        num_frames: frames per clip; must be divisible by ``tubelet_size``.
        tubelet_size: frames per tubelet.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: width, depth, heads, MLP width.
        hidden_act: ``"gelu"`` (exact GELU, as transformers' default), ``"gelu_new"`` or ``"gelu_pytorch_tanh"``
            (tanh approximation).
        hidden_dropout_prob: dropout after the attention output and the MLP output.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        layer_norm_eps: epsilon of the blocks' LayerNorms and of ``videomae.layernorm`` (``fc_norm`` uses
            PyTorch's default 1e-5, as transformers does).
        qkv_bias, qv_bias: biases on the query and value projections (the key has none); the 4.x and 5.x names of
            one switch; default True.
        use_mean_pooling: mean over tokens, then ``fc_norm`` (fine-tuned checkpoints); ``False``: ``videomae.
            layernorm`` on every token and the first token is classified (transformers' CLS-free fallback).
        interpolate_pos_encoding: accept clips whose token grid differs from the one the position table was built
            for, resampling the table trilinearly (not what the published models were trained with); default
            False: such clips are refused with the sizes named.
        init: ``"trunc_normal"`` (Linear/Conv3d weights from a normal truncated at 2 std, std
            ``initializer_range``, zero biases, LayerNorms 1/0; trains from scratch) or ``"default"`` (PyTorch's).
        initializer_range: std of ``"trunc_normal"``.
        pretrained: path to weights in transformers' layout (``.bin``/``.pt``/``.pth``/``.ckpt`` read with
            ``torch.load(weights_only=True)``, or ``.safetensors``); see :meth:`load_pretrained`.

    Attributes:
        num_classes, tubelet_size, patch_size (``(ph, pw)``), grid (token grid ``(T', H', W')`` of the position
        table), explain_layer (the last encoder block, e.g. ``"videomae.encoder.layer.11"``), block_names.
    """

    def __init__(
        self,
        num_classes: int = 400,
        image_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        num_channels: int = 3,
        num_frames: int = 16,
        tubelet_size: int = 2,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-12,
        qkv_bias: bool | None = None,
        qv_bias: bool | None = None,
        use_mean_pooling: bool = True,
        interpolate_pos_encoding: bool = False,
        init: str = "trunc_normal",
        initializer_range: float = 0.02,
        pretrained: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = _positive_int(num_classes, "num_classes")
        image_hw = _pair(image_size, "image_size")
        self.patch_size = _pair(patch_size, "patch_size")
        self.num_channels = _positive_int(num_channels, "num_channels")
        self.num_frames = _positive_int(num_frames, "num_frames")
        self.tubelet_size = _positive_int(tubelet_size, "tubelet_size")
        hidden_size = _positive_int(hidden_size, "hidden_size")
        depth = _positive_int(num_hidden_layers, "num_hidden_layers")
        heads = _positive_int(num_attention_heads, "num_attention_heads")
        intermediate_size = _positive_int(intermediate_size, "intermediate_size")
        if hidden_size % heads:
            raise ValueError(
                f"model.hidden_size={hidden_size} is not a multiple of model.num_attention_heads={heads}"
            )
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(f"model.hidden_act must be one of {sorted(_ACTIVATIONS)}, got {hidden_act!r}")
        dropout = _probability(hidden_dropout_prob, "hidden_dropout_prob")
        attn_dropout = _probability(attention_probs_dropout_prob, "attention_probs_dropout_prob")
        if not isinstance(layer_norm_eps, (int, float)) or isinstance(layer_norm_eps, bool) or layer_norm_eps <= 0:
            raise ValueError(f"model.layer_norm_eps must be a positive number, got {layer_norm_eps!r}")
        if qkv_bias is not None and qv_bias is not None and bool(qkv_bias) != bool(qv_bias):
            raise ValueError(
                f"model.qkv_bias={qkv_bias} and model.qv_bias={qv_bias} are two names of one switch and disagree; "
                "set one of them"
            )
        bias = True if qkv_bias is None and qv_bias is None else bool(qv_bias if qv_bias is not None else qkv_bias)
        if init not in ("trunc_normal", "default"):
            raise ValueError(f"model.init must be 'trunc_normal' or 'default', got {init!r}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(
                f"model.num_frames={self.num_frames} is not divisible by model.tubelet_size={self.tubelet_size}"
            )
        for side, patch, what in zip(image_hw, self.patch_size, ("height", "width")):
            if side % patch:
                raise ValueError(
                    f"model.image_size {what} {side} is not divisible by model.patch_size {patch}"
                )
        self.image_size = image_hw
        self.hidden_size = hidden_size
        self.use_mean_pooling = bool(use_mean_pooling)
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.qv_bias = bias
        self.grid: tuple[int, int, int] = (
            self.num_frames // self.tubelet_size,
            image_hw[0] // self.patch_size[0],
            image_hw[1] // self.patch_size[1],
        )

        embeddings = _Embeddings(self.num_channels, hidden_size, self.tubelet_size, self.patch_size, self.grid)
        blocks = [
            VideoMAELayer(
                hidden_size, heads, intermediate_size, bias, float(layer_norm_eps), _ACTIVATIONS[hidden_act],
                attn_dropout, dropout,
            )
            for _ in range(depth)
        ]
        layernorm = None if self.use_mean_pooling else nn.LayerNorm(hidden_size, eps=float(layer_norm_eps))
        self.videomae = _Backbone(embeddings, _Encoder(blocks), layernorm)
        self.pooler = TokenPool("mean" if self.use_mean_pooling else "first")
        self.register_module("fc_norm", nn.LayerNorm(hidden_size) if self.use_mean_pooling else None)
        self.classifier = nn.Linear(hidden_size, self.num_classes)
        self.block_names = [f"videomae.encoder.layer.{i}" for i in range(depth)]
        self.explain_layer = self.block_names[-1]
        if init == "trunc_normal":
            self.reset_parameters(float(initializer_range))
        if pretrained:
            self.load_pretrained(pretrained)

    # ------------------------------------------------------------------ shapes
    @property
    def num_tokens(self) -> int:
        """Tokens of a clip of the size the model was built for."""
        return self.grid[0] * self.grid[1] * self.grid[2]

    def token_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T / tubelet, H / patch_h, W / patch_w)`` of a clip shape ``(B, C, T, H, W)``,
        ``(C, T, H, W)`` or ``(T, H, W)``; ``ValueError`` naming the sizes when one is not divisible."""
        t, h, w = (int(s) for s in tuple(shape)[-3:])
        problems = []
        if t % self.tubelet_size:
            problems.append(f"{t} frames are not divisible by tubelet_size={self.tubelet_size}")
        if h % self.patch_size[0]:
            problems.append(f"height {h} is not divisible by patch_size={self.patch_size[0]}")
        if w % self.patch_size[1]:
            problems.append(f"width {w} is not divisible by patch_size={self.patch_size[1]}")
        if problems:
            raise ValueError(
                f"VideoMAE cannot cut a clip of shape {tuple(shape)} into tubelets of {self.tubelet_size} frames x "
                f"{self.patch_size[0]}x{self.patch_size[1]} pixels: " + "; ".join(problems)
            )
        return t // self.tubelet_size, h // self.patch_size[0], w // self.patch_size[1]

    def _check_clips(self, clips: Tensor) -> tuple[int, int, int]:
        if clips.dim() != 5:
            raise ValueError(f"VideoMAE expects clips of shape (B, C, T, H, W), got {tuple(clips.shape)}")
        if clips.shape[1] != self.num_channels:
            raise ValueError(
                f"VideoMAE was built for {self.num_channels} input channels, got clips {tuple(clips.shape)} "
                "(expected (B, C, T, H, W))"
            )
        grid = self.token_grid(clips.shape)
        if grid != self.grid and not self.interpolate_pos_encoding:
            got = grid[0] * grid[1] * grid[2]
            raise ValueError(
                f"VideoMAE's position table was built for clips of {self.num_frames} frames of "
                f"{self.image_size[0]}x{self.image_size[1]} (token grid {'x'.join(map(str, self.grid))}, "
                f"{self.num_tokens} tokens), got {clips.shape[2]} frames of {clips.shape[3]}x{clips.shape[4]} "
                f"(grid {'x'.join(map(str, grid))}, {got} tokens); set model.net.num_frames / image_size to the "
                "data's clip_len / crop_size, or interpolate_pos_encoding=true to resample the table"
            )
        return grid

    # ----------------------------------------------------------------- forward
    def forward_features(self, clips: Tensor) -> Tensor:
        """Token features ``(B, N, D)`` of the last block (after ``videomae.layernorm`` without mean pooling)."""
        return self.videomae(clips, self._check_clips(clips))

    def forward(self, clips: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for clips ``(B, C, T, H, W)``."""
        pooled = self.pooler(self.forward_features(clips))
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return self.classifier(pooled)

    def reset_parameters(self, std: float = 0.02) -> None:
        """Truncated-normal weights (std ``std``, cut at 2 std) for Linear/Conv3d, zero biases, LayerNorm 1/0."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------- weights
    #: The final linear layer, re-initialised (normal, std :attr:`head_std`) when the class count differs.
    head_name = "classifier"
    head_std = 0.02

    @property
    def layout_hint(self) -> str:
        """What weights for this model look like (for load errors)."""
        return ("transformers' VideoMAEForVideoClassification layout (videomae.embeddings.patch_embeddings."
                "projection.weight, videomae.encoder.layer.{i}.attention.attention.query.weight … classifier.bias) "
                f"with hidden_size={self.hidden_size}, {len(self.block_names)} layers, patch {self.patch_size}, "
                f"tubelet {self.tubelet_size}, use_mean_pooling={self.use_mean_pooling}, qv_bias={self.qv_bias}")

    def adapt_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``state`` with 4.x bias names renamed where this model has those biases (as on load)."""
        out = dict(state)
        if not self.qv_bias:
            return out
        for key in [k for k in out if _V4_BIAS.match(k)]:
            (new_key,) = rename_attention_biases({key: out[key]}, "5.x")
            if new_key not in out:
                out[new_key] = out.pop(key)
        return out

    def load_pretrained(self, source: str | os.PathLike[str] | Mapping[str, Tensor]) -> VideoMAE:
        """Load weights in transformers' layout from a file or a state dict (either attention-bias naming), through
        :func:`~motion_relevance.models.weights.load_weights`.

        Every key must match in name and shape, else a ``ValueError`` lists the first missing/unexpected/mismatched
        keys. When only the classifier's class count differs (Kinetics-400 weights for another data set), the
        classifier is re-initialised (normal, std 0.02, zero bias) and everything else is loaded.
        """
        load_weights(self, source, where="model.pretrained")
        return self
