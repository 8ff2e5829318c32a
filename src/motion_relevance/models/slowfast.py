"""SlowFast (Feichtenhofer et al., 2019) in the layout of pytorchvideo's hub model ``slowfast_r50``.

``torch.hub.load("facebookresearch/pytorchvideo", "slowfast_r50")`` builds ``create_slowfast(model_depth=50,
slowfast_fusion_conv_kernel_size=(7, 1, 1))``; its state dict (``SLOWFAST_8x8_R50.pyth``, ``["model_state"]``)
has these keys, which ours has with the same names and shapes:

==========================================  ================================================================
module path                                 what
==========================================  ================================================================
``blocks.0.multipathway_blocks.{0,1}``      stems: ``conv`` (slow (1,7,7) 64, fast (5,7,7) 8), ``norm``, ReLU,
                                            MaxPool (1,3,3) s(1,2,2)
``blocks.{0..3}.multipathway_fusion``       fast -> slow lateral: ``conv_fast_to_slow`` (7,1,1) stride
                                            (alpha,1,1), ``norm``, ReLU, concatenation onto the slow pathway
``blocks.{1..4}.multipathway_blocks.{0,1}`` res stages of bottleneck ``res_blocks.{i}``: ``branch1_conv`` /
                                            ``branch1_norm`` (first block), ``branch2.conv_a/norm_a/conv_b/
                                            norm_b/conv_c/norm_c``; slow conv_a (1,1,1) in res2-3, (3,1,1) in
                                            res4-5; fast conv_a (3,1,1) everywhere
``blocks.4.multipathway_fusion``            ``nn.Identity`` (no lateral after res5)
``blocks.5``                                per-pathway AvgPool3d ((8,7,7) slow, (32,7,7) fast, stride 1),
                                            concatenation
``blocks.6``                                head: dropout, global average, ``proj`` Linear(2304, classes)
==========================================  ================================================================

The input is a list ``[slow, fast]`` of clips ``(B, 3, T/alpha, H, W)`` and ``(B, 3, T, H, W)``, as for
pytorchvideo; :func:`pack_pathways` builds it from one clip. ``alpha`` is the frame-rate ratio (4) and ``beta``
the channel ratio of the fast pathway (1/8).

Differences from pytorchvideo that leave the state dict and the logits unchanged (for relevance propagation, see
``docs/method.md``, "Deep Taylor and LRP through modern video networks"): every ReLU is its own module used at one
place; residual sums are :class:`~motion_relevance.models.layers.Add` modules called as ``self.add(branch, shortcut)``
(residual branch ``branch2`` first, shortcut second); the lateral fusion's and the head's concatenations are
:class:`~motion_relevance.models.layers.Concat` modules; the head averages globally *before* its linear layer
(pytorchvideo applies the linear layer at every position of the pooled map and then averages: the same numbers, since
averaging commutes with a linear map); no softmax (pytorchvideo's hub head has no activation either). """

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from motion_relevance.models.layers import Add, Concat
from motion_relevance.models.resnet3d import (
    check_choice,
    check_dropout,
    check_positive,
    conv_bn_pairs,
    init_weights,
    scaled,
)

__all__ = ["SlowFast", "pack_pathways", "slowfast_r50"]

#: Bottleneck blocks per res stage (res2 … res5) for each supported depth (pytorchvideo's table).
STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (1, 1, 1, 1),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
#: Temporal kernel of conv_a per stage: slow (1,1,3,3), fast (3,3,3,3).
_SLOW_CONV_A_T = (1, 1, 3, 3)
_FAST_CONV_A_T = (3, 3, 3, 3)
_SPATIAL_STRIDES = (1, 2, 2, 2)
_STEM_WIDTH = 64
#: Total spatial stride of the network (stem conv 2, stem pool 2, stages 1·2·2·2).
_SPATIAL_DOWNSAMPLING = (2, 2, 1, 2, 2, 2)


def pack_pathways(clip: Tensor, alpha: int) -> list[Tensor]:
    """``[slow, fast]`` from one clip ``(B, C, T, H, W)`` (or ``(C, T, H, W)``), pytorchvideo's convention.

    The fast pathway is the clip itself; the slow pathway takes the ``T // alpha`` frames at
    ``torch.linspace(0, T - 1, T // alpha).long()`` (evenly spaced, first and last frame included).
    """
    if not isinstance(clip, torch.Tensor) or clip.dim() not in (4, 5):
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise ValueError(f"pack_pathways expects a clip (B, C, T, H, W) or (C, T, H, W), got {shape}")
    check_positive("alpha", alpha, integer=True)
    frames = clip.shape[-3]
    if frames < int(alpha):
        raise ValueError(f"pack_pathways: the clip has {frames} frames, fewer than alpha={alpha}; the slow pathway "
                         "needs T // alpha >= 1 frames")
    index = torch.linspace(0, frames - 1, frames // int(alpha), device=clip.device).long()
    return [torch.index_select(clip, clip.dim() - 3, index), clip]


class ResNetBasicStem(nn.Module):
    """conv -> BN -> ReLU -> MaxPool (one pathway's stem)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=kernel, stride=(1, 2, 2),
                              padding=tuple(k // 2 for k in kernel), bias=False)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU()
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.activation(self.norm(self.conv(x))))


class BottleneckBlock(nn.Module):
    """conv_a (t,1,1) -> BN -> ReLU -> conv_b (1,3,3) stride (1,s,s) -> BN -> ReLU -> conv_c 1x1x1 -> BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, spatial_stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, kernel_size=(temporal_kernel, 1, 1),
                                padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, kernel_size=(1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                                padding=(0, 1, 1), bias=False)
        self.norm_b = nn.BatchNorm3d(dim_inner)
        self.act_b = nn.ReLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """``activation(add(branch2(x), shortcut))``, shortcut ``branch1_norm(branch1_conv(x))`` or ``x``."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, spatial_stride: int) -> None:
        super().__init__()
        if dim_in != dim_out or spatial_stride != 1:
            self.branch1_conv: nn.Module | None = nn.Conv3d(dim_in, dim_out, kernel_size=1,
                                                            stride=(1, spatial_stride, spatial_stride), bias=False)
            self.branch1_norm: nn.Module | None = nn.BatchNorm3d(dim_out)
        else:
            self.branch1_conv = None
            self.branch1_norm = None
        self.branch2 = BottleneckBlock(dim_in, dim_inner, dim_out, temporal_kernel, spatial_stride)
        self.add = Add()
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))  # type: ignore[misc]
        return self.activation(self.add(self.branch2(x), shortcut))


class ResStage(nn.Module):
    """A sequence of :class:`ResBlock` (``res_blocks.{i}``)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


def _res_stage(depth: int, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int,
               spatial_stride: int) -> ResStage:
    return ResStage([
        ResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, temporal_kernel, spatial_stride if i == 0 else 1)
        for i in range(depth)
    ])


class FuseFastToSlow(nn.Module):
    """Lateral connection: ``[concat(slow, relu(norm(conv_fast_to_slow(fast)))), fast]``.

    The conv has kernel ``(fusion_kernel, 1, 1)`` and temporal stride ``alpha``, so the fast features arrive at the
    slow pathway's frame rate; the concatenation is a :class:`Concat` module (``dim=1``, slow channels first).
    """

    def __init__(self, dim_in: int, fusion_ratio: int, fusion_kernel: int, alpha: int) -> None:
        super().__init__()
        self.conv_fast_to_slow = nn.Conv3d(dim_in, dim_in * fusion_ratio, kernel_size=(fusion_kernel, 1, 1),
                                           stride=(alpha, 1, 1), padding=(fusion_kernel // 2, 0, 0), bias=False)
        self.norm = nn.BatchNorm3d(dim_in * fusion_ratio)
        self.activation = nn.ReLU()
        self.concat = Concat(dim=1)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        slow, fast = x
        fuse = self.activation(self.norm(self.conv_fast_to_slow(fast)))
        if fuse.shape[2] != slow.shape[2]:
            raise ValueError(
                f"SlowFast lateral fusion: the fast pathway's {fast.shape[2]} frames give {fuse.shape[2]} frames at "
                f"temporal stride alpha, but the slow pathway has {slow.shape[2]}; feed [slow, fast] with "
                "slow = T // alpha frames of a fast clip of T frames (T a multiple of alpha), e.g. "
                "pack_pathways(clip, alpha)"
            )
        return [self.concat(slow, fuse), fast]


class MultiPathWayWithFuse(nn.Module):
    """Apply ``multipathway_blocks[i]`` to pathway ``i``, then ``multipathway_fusion`` to the list."""

    def __init__(self, blocks: Sequence[nn.Module], fusion: nn.Module) -> None:
        super().__init__()
        self.multipathway_blocks = nn.ModuleList(blocks)
        self.multipathway_fusion = fusion

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        out = [block(xi) for block, xi in zip(self.multipathway_blocks, x)]
        return self.multipathway_fusion(out)


class PoolConcatPathway(nn.Module):
    """Pool each pathway (``pool.{0,1}``) and concatenate along channels (slow first)."""

    def __init__(self, pools: Sequence[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.ModuleList(pools)
        self.concat = Concat(dim=1)

    def forward(self, x: list[Tensor]) -> Tensor:
        return self.concat(*[pool(xi) for pool, xi in zip(self.pool, x)])


class ResNetBasicHead(nn.Module):
    """dropout -> global average -> flatten -> ``proj`` (logits)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.output_pool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten(1)
        self.proj = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.flatten(self.output_pool(self.dropout(x))))


def _stride_chain(size: int, strides: Sequence[int]) -> int:
    """Spatial size after the stem and stages (each stride-2 layer pads so that it gives ``ceil(n / 2)``)."""
    for stride in strides:
        size = math.ceil(size / stride)
    return size


class SlowFast(nn.Module):
    """Two-pathway SlowFast network; ``forward([slow, fast])`` returns logits ``(B, num_classes)``.

    Args:
        num_classes: outputs of the head (400 for Kinetics-400).
        alpha: frame-rate ratio fast/slow (4); also the temporal stride of the lateral convs.
        beta: channel ratio fast/slow (1/8); ``1 / beta`` must be an integer.
        fusion_kernel: temporal kernel of the lateral convs (7 for R50, 5 for R101).
        fusion_ratio: output/input channel ratio of the lateral convs (2).
        depth: 18, 50, 101 or 152 (bottleneck blocks per stage from pytorchvideo's table; 50 = published).
        width: multiplier for every channel count (1.0 = published: slow stem 64); ``64 * width`` must be a
            multiple of ``1 / beta``.
        clip_len: fast-pathway frames the head's pooling kernel is computed for (32 for 8x8 R50).
        crop_size: input side the head's pooling kernel is computed for (224).
        head_pool: ``"fixed"`` (pytorchvideo: AvgPool3d of kernel ``(clip_len/alpha, crop/32, crop/32)`` and
            ``(clip_len, crop/32, crop/32)``, stride 1; inputs at least that large) or ``"adaptive"`` (global
            average pooling; any input size).
        dropout: dropout probability before the head's linear layer (0.5 as published).
        in_channels: input channels of both pathways (3).
        init: ``"kaiming"`` (pytorchvideo's: Kaiming-normal convs, BN 1/0 with the last BN of every residual branch
            at 0, linear N(0, 0.01)) or ``"default"``.
        pretrained: weights in this layout (a pytorchvideo ``.pyth`` file's ``model_state`` or a state dict);
            the head is re-initialised when its class count differs.
    """

    #: Grad-CAM layers per pathway (module paths): the last res stage of each pathway.
    explain_layers = {"slow": "blocks.4.multipathway_blocks.0", "fast": "blocks.4.multipathway_blocks.1"}
    #: Default Grad-CAM layer: the fast pathway's last res stage (full frame rate).
    explain_layer = "blocks.4.multipathway_blocks.1"
    head_name = "blocks.6.proj"
    #: Names of the inputs, in ``forward``'s order (the explanation pipeline reports each one's share).
    pathway_names = ("slow", "fast")

    def __init__(
        self,
        num_classes: int = 400,
        alpha: int = 4,
        beta: float = 1 / 8,
        fusion_kernel: int = 7,
        fusion_ratio: int = 2,
        depth: int = 50,
        width: float = 1.0,
        clip_len: int = 32,
        crop_size: int = 224,
        head_pool: str = "fixed",
        dropout: float = 0.5,
        in_channels: int = 3,
        init: str = "kaiming",
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes, integer=True)
        check_positive("alpha", alpha, integer=True)
        check_positive("beta", beta)
        if float(beta) > 1:
            raise ValueError(f"model.beta is the fast/slow channel ratio and must be at most 1, got {beta!r}")
        reduction = 1.0 / float(beta)
        if abs(reduction - round(reduction)) > 1e-6:
            raise ValueError(f"model.beta must be 1/n for an integer n (1/8 as published), got {beta!r}")
        reduction = int(round(reduction))
        check_positive("fusion_kernel", fusion_kernel, integer=True)
        if int(fusion_kernel) % 2 == 0:
            raise ValueError(f"model.fusion_kernel must be odd (7 as published), got {fusion_kernel!r}")
        check_positive("fusion_ratio", fusion_ratio, integer=True)
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"model.depth must be one of {sorted(STAGE_DEPTHS)}, got {depth!r}")
        check_positive("width", width)
        check_positive("clip_len", clip_len, integer=True)
        check_positive("crop_size", crop_size, integer=True)
        check_choice("head_pool", head_pool, ("fixed", "adaptive"))
        check_dropout(dropout)
        check_positive("in_channels", in_channels, integer=True)
        check_choice("init", init, ("kaiming", "default"))
        alpha, fusion_kernel, fusion_ratio = int(alpha), int(fusion_kernel), int(fusion_ratio)
        stem_slow = scaled(_STEM_WIDTH, width)
        if stem_slow % reduction:
            raise ValueError(f"model.width={width} gives a slow stem of {stem_slow} channels, not a multiple of "
                             f"1/beta={reduction}; choose width so that 64 * width is a multiple of {reduction}")
        if head_pool == "fixed" and int(clip_len) < alpha:
            raise ValueError(f"model.clip_len={clip_len} is shorter than alpha={alpha}")

        stem_fast = stem_slow // reduction
        blocks: list[nn.Module] = [
            MultiPathWayWithFuse(
                [ResNetBasicStem(int(in_channels), stem_slow, (1, 7, 7)),
                 ResNetBasicStem(int(in_channels), stem_fast, (5, 7, 7))],
                FuseFastToSlow(stem_fast, fusion_ratio, fusion_kernel, alpha),
            )
        ]
        stage_in, stage_out = stem_slow, stem_slow * 4
        for idx, n_blocks in enumerate(STAGE_DEPTHS[depth]):
            slow_in = stage_in + stage_in * fusion_ratio // reduction
            slow_stage = _res_stage(n_blocks, slow_in, stage_out // 4, stage_out, _SLOW_CONV_A_T[idx],
                                    _SPATIAL_STRIDES[idx])
            fast_stage = _res_stage(n_blocks, stage_in // reduction, stage_out // 4 // reduction,
                                    stage_out // reduction, _FAST_CONV_A_T[idx], _SPATIAL_STRIDES[idx])
            fusion: nn.Module = (FuseFastToSlow(stage_out // reduction, fusion_ratio, fusion_kernel, alpha)
                                 if idx < 3 else nn.Identity())
            blocks.append(MultiPathWayWithFuse([slow_stage, fast_stage], fusion))
            stage_in, stage_out = stage_out, stage_out * 2

        if head_pool == "fixed":
            side = _stride_chain(int(crop_size), _SPATIAL_DOWNSAMPLING)
            self.head_pool_kernels: tuple[tuple[int, int, int], ...] | None = (
                (int(clip_len) // alpha, side, side), (int(clip_len), side, side))
            pools: list[nn.Module] = [nn.AvgPool3d(k, stride=1) for k in self.head_pool_kernels]
        else:
            self.head_pool_kernels = None
            pools = [nn.AdaptiveAvgPool3d((1, 1, 1)), nn.AdaptiveAvgPool3d((1, 1, 1))]
        blocks.append(PoolConcatPathway(pools))
        head_in = stage_in + stage_in // reduction
        blocks.append(ResNetBasicHead(head_in, int(num_classes), float(dropout)))
        self.blocks = nn.ModuleList(blocks)

        self.num_classes = int(num_classes)
        self.alpha = alpha
        self.beta = 1.0 / reduction
        self.width = float(width)
        self.depth = int(depth)
        self.in_channels = int(in_channels)
        if init == "kaiming":
            final = [m.norm_c for m in self.modules() if isinstance(m, BottleneckBlock)]
            init_weights(self, zero_final_bn=final)
        if pretrained is not None:
            from motion_relevance.models.weights import load_weights

            load_weights(self, pretrained)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """``(conv, BatchNorm)`` module paths of every BatchNorm and the conv it follows."""
        return conv_bn_pairs(self)

    def _check_input(self, x: object) -> list[Tensor]:
        how = (f"SlowFast takes a list [slow, fast] of two clips: slow (B, {self.in_channels}, T/alpha, H, W) and "
               f"fast (B, {self.in_channels}, T, H, W), with alpha={self.alpha} the frame-rate ratio (beta="
               f"{self.beta:g} is the fast pathway's channel ratio); build the pair from one clip with "
               f"motion_relevance.models.slowfast.pack_pathways(clip, alpha={self.alpha})")
        if isinstance(x, torch.Tensor):
            raise ValueError(f"{how}; got one tensor of shape {tuple(x.shape)}")
        if not isinstance(x, (list, tuple)) or len(x) != 2 or not all(isinstance(t, torch.Tensor) for t in x):
            raise ValueError(f"{how}; got {type(x).__name__}")
        slow, fast = x
        for name, t in (("slow", slow), ("fast", fast)):
            if t.dim() != 5 or t.shape[1] != self.in_channels:
                raise ValueError(f"{how}; the {name} clip has shape {tuple(t.shape)}")
        if slow.shape[0] != fast.shape[0] or slow.shape[3:] != fast.shape[3:]:
            raise ValueError(f"{how}; the two clips differ in batch or frame size: slow {tuple(slow.shape)}, "
                             f"fast {tuple(fast.shape)}")
        if self.head_pool_kernels is not None:
            for name, t, kernel in (("slow", slow, self.head_pool_kernels[0]), ("fast", fast,
                                                                                   self.head_pool_kernels[1])):
                side = _stride_chain(int(t.shape[3]), _SPATIAL_DOWNSAMPLING)
                side_w = _stride_chain(int(t.shape[4]), _SPATIAL_DOWNSAMPLING)
                if t.shape[2] < kernel[0] or side < kernel[1] or side_w < kernel[2]:
                    raise ValueError(
                        f"SlowFast's head pools the {name} pathway with the fixed kernel {kernel} (head_pool='fixed', "
                        f"from model.clip_len / model.crop_size), but the {name} clip {tuple(t.shape)} gives a "
                        f"{t.shape[2]}x{side}x{side_w} feature map; feed larger clips, set model.clip_len / "
                        "model.crop_size to the data's, or use model.head_pool=adaptive"
                    )
        return [slow, fast]

    def pack_inputs(self, clip: Tensor) -> list[Tensor]:
        """``[slow, fast]`` from one full-rate clip ``(B, C, T, H, W)`` (:func:`pack_pathways` with this ``alpha``)."""
        return pack_pathways(clip, self.alpha)

    def forward(self, x: list[Tensor]) -> Tensor:
        """Logits ``(B, num_classes)`` for ``[slow (B,C,T/alpha,H,W), fast (B,C,T,H,W)]``."""
        out: list[Tensor] | Tensor = self._check_input(x)
        for block in self.blocks:
            out = block(out)
        return out  # type: ignore[return-value]


def slowfast_r50(
    num_classes: int = 400,
    alpha: int = 4,
    beta: float = 1 / 8,
    fusion_kernel: int = 7,
    fusion_ratio: int = 2,
    depth: int = 50,
    width: float = 1.0,
    clip_len: int = 32,
    crop_size: int = 224,
    head_pool: str = "fixed",
    dropout: float = 0.5,
    in_channels: int = 3,
    init: str = "kaiming",
    pretrained: str | None = None,
) -> SlowFast:
    """SlowFast 8x8 R50 as pytorchvideo's hub ``slowfast_r50`` (34.57 M parameters with 400 classes)."""
    return SlowFast(num_classes=num_classes, alpha=alpha, beta=beta, fusion_kernel=fusion_kernel,
                    fusion_ratio=fusion_ratio, depth=depth, width=width, clip_len=clip_len, crop_size=crop_size,
                    head_pool=head_pool, dropout=dropout, in_channels=in_channels, init=init, pretrained=pretrained)
