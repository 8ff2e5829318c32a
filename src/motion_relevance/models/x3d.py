"""X3D (Feichtenhofer, 2020) in the layout of pytorchvideo's hub models ``x3d_xs`` and ``x3d_s``.

``torch.hub.load("facebookresearch/pytorchvideo", "x3d_xs" | "x3d_s")`` builds ``create_x3d(input_clip_length=4 |
13, input_crop_size=160)`` (width factor 2.0, depth factor 2.2, bottleneck factor 2.25); XS and S share every
weight shape (3.79 M parameters) and differ only in the clip length, which sets the head's pooling kernel. Keys:

==============================================  =============================================================
module path                                     what
==============================================  =============================================================
``blocks.0.conv.conv_t``                        stem, spatial conv (1,3,3) stride (1,2,2), 3 -> 24 (the
                                                publisher's name; it runs first)
``blocks.0.conv.conv_xy``                       stem, depthwise temporal conv (5,1,1), 24 -> 24
``blocks.0.norm``                               BatchNorm after ``conv_xy``; ReLU
``blocks.{1..4}.res_blocks.{i}``                3, 5, 11, 7 blocks of width 24, 48, 96, 192 (inner 54, 108,
                                                216, 432): ``branch1_conv`` (+ ``branch1_norm`` where the width
                                                changes) in block 0; ``branch2.conv_a`` 1x1x1 -> ``norm_a`` ->
                                                ReLU -> ``conv_b`` depthwise 3x3x3 (stride (1,2,2) in block 0)
                                                -> ``norm_b.0`` BN -> ``norm_b.1`` squeeze-excitation (blocks
                                                0, 2, 4, …; ``block.0`` / ``block.2`` 1x1x1 convs) -> Swish ->
                                                ``conv_c`` 1x1x1 -> ``norm_c``; add shortcut; ReLU
``blocks.5.pool``                               ``pre_conv`` 192 -> 432, ``pre_norm``, ReLU, AvgPool3d
                                                (T, 5, 5) stride 1, ``post_conv`` 432 -> 2048, ReLU
``blocks.5.proj``                               dropout, Linear(2048, classes), global average
==============================================  =============================================================

Differences from pytorchvideo that leave the state dict and the logits unchanged (for relevance propagation, see
``docs/method.md``, "Deep Taylor and LRP through modern video networks"): every ReLU / Swish is its own module used at
one place, Swish is ``nn.SiLU``; residual sums are :class:`~motion_relevance.models.layers.Add` modules called as
``self.add(branch, shortcut)`` (``branch2`` first, shortcut second); squeeze-excitation averages with an
``nn.AdaptiveAvgPool3d`` module and multiplies through a :class:`~motion_relevance.models.layers.GateMul` module
``self.gate(x, se_gate)``; the head averages globally before ``proj`` (pytorchvideo projects every position and then
averages: the same numbers); no softmax (pytorchvideo's hub head has no activation either). """

from __future__ import annotations

import math

from torch import Tensor, nn

from motion_relevance.models.layers import Add, GateMul
from motion_relevance.models.resnet3d import (
    check_choice,
    check_dropout,
    check_positive,
    conv_bn_pairs,
    init_weights,
)

__all__ = ["X3D", "round_repeats", "round_width", "x3d_s", "x3d_xs"]

#: Blocks per stage before the depth factor, and the stage width expansion.
_BASE_DEPTHS = (1, 2, 5, 3)
_SPATIAL_STRIDE_TOTAL = 32  # stem 2 x four stages 2


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """pytorchvideo's channel rounding: ``width * multiplier`` to a multiple of ``divisor`` (at least
    ``min_width``), one divisor more when rounding lost over 10 %."""
    if not multiplier:
        return int(width)
    width = width * multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def round_repeats(repeats: int, multiplier: float) -> int:
    """pytorchvideo's block count: ``ceil(repeats * multiplier)``."""
    if not multiplier:
        return repeats
    return int(math.ceil(multiplier * repeats))


class Conv2plus1d(nn.Module):
    """The stem's factorised conv: ``conv_xy(conv_t(x))`` — ``conv_t`` is the *spatial* conv and ``conv_xy`` the
    depthwise temporal one, names kept from the published state dict."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(in_channels, out_channels, kernel_size=(1, 3, 3), stride=(1, 2, 2),
                                padding=(0, 1, 1), bias=False)
        self.conv_xy = nn.Conv3d(out_channels, out_channels, kernel_size=(5, 1, 1), stride=1, padding=(2, 0, 0),
                                 bias=False, groups=out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_xy(self.conv_t(x))


class X3DStem(nn.Module):
    """``relu(norm(conv(x)))`` with the factorised :class:`Conv2plus1d`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv2plus1d(in_channels, out_channels)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.norm(self.conv(x)))


class SqueezeExcitation(nn.Module):
    """``gate(x, sigmoid(conv(relu(conv(mean(x))))))``: channel gates from the clip-wide mean.

    ``block`` holds fvcore's layout (``block.0`` conv, ``block.1`` ReLU, ``block.2`` conv, ``block.3`` Sigmoid);
    the average is the ``pool`` module and the product the :class:`GateMul` module ``gate``.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.block = nn.Sequential(
            nn.Conv3d(channels, reduced, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv3d(reduced, channels, kernel_size=1, bias=True),
            nn.Sigmoid(),
        )
        self.gate = GateMul()

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x, self.block(self.pool(x)))


class X3DBottleneck(nn.Module):
    """conv_a 1x1x1 -> BN -> ReLU -> conv_b depthwise -> [BN, SE or Identity] -> Swish -> conv_c 1x1x1 -> BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, kernel_size=3, stride=(1, stride, stride), padding=1,
                                bias=False, groups=dim_inner)
        se: nn.Module = (SqueezeExcitation(dim_inner, round_width(dim_inner, se_ratio)) if se_ratio > 0
                         else nn.Identity())
        self.norm_b = nn.Sequential(nn.BatchNorm3d(dim_inner), se)
        self.act_b = nn.SiLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class X3DResBlock(nn.Module):
    """``activation(add(branch2(x), shortcut))``; the shortcut is ``x``, ``branch1_conv(x)`` (stride, same width)
    or ``branch1_norm(branch1_conv(x))`` (width changes), as pytorchvideo builds it."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float) -> None:
        super().__init__()
        needs_conv = dim_in != dim_out or stride > 1
        self.branch1_conv: nn.Module | None = (
            nn.Conv3d(dim_in, dim_out, kernel_size=1, stride=(1, stride, stride), bias=False) if needs_conv else None)
        self.branch1_norm: nn.Module | None = nn.BatchNorm3d(dim_out) if dim_in != dim_out else None
        self.branch2 = X3DBottleneck(dim_in, dim_inner, dim_out, stride, se_ratio)
        self.add = Add()
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(x)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
        return self.activation(self.add(self.branch2(x), shortcut))


class X3DStage(nn.Module):
    """A sequence of :class:`X3DResBlock` (``res_blocks.{i}``); squeeze-excitation in blocks 0, 2, 4, …"""

    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList([
            X3DResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, stride if i == 0 else 1,
                        se_ratio if (i + 1) % 2 else 0.0)
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class ProjectedPool(nn.Module):
    """pre_conv 1x1x1 -> pre_norm -> ReLU -> pool -> post_conv 1x1x1 -> ReLU."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, pool: nn.Module) -> None:
        super().__init__()
        self.pre_conv = nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False)
        self.pre_norm = nn.BatchNorm3d(dim_inner)
        self.pre_act = nn.ReLU()
        self.pool = pool
        self.post_conv = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.post_act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.pre_act(self.pre_norm(self.pre_conv(x))))
        return self.post_act(self.post_conv(x))


class X3DHead(nn.Module):
    """``pool`` (:class:`ProjectedPool`) -> dropout -> global average -> flatten -> ``proj`` (logits)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, num_classes: int, pool: nn.Module,
                 dropout: float) -> None:
        super().__init__()
        self.pool = ProjectedPool(dim_in, dim_inner, dim_out, pool)
        self.dropout = nn.Dropout(dropout)
        self.output_pool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten(1)
        self.proj = nn.Linear(dim_out, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.flatten(self.output_pool(self.dropout(self.pool(x)))))


class X3D(nn.Module):
    """X3D for clips ``(B, in_channels, T, H, W)``; returns logits ``(B, num_classes)``.

    Args:
        num_classes: outputs of ``blocks.5.proj`` (400 for Kinetics-400).
        clip_len: frames the head's pooling kernel is computed for (pytorchvideo's ``input_clip_length``:
            4 for XS, 13 for S).
        crop_size: input side the head's pooling kernel is computed for (``input_crop_size``: 160).
        width_factor: channel expansion (2.0 as published; smaller gives a narrower network, same keys).
        depth_factor: block-count expansion (2.2 as published: 3, 5, 11, 7 blocks; other values change the keys).
        bottleneck_factor: inner width of each block relative to its output width (2.25).
        stem_dim_in: base width before the width factor (12).
        se_ratio: squeeze-excitation width relative to the inner width (0.0625); 0 disables it.
        head_dim_out: width of the head's ``post_conv`` (2048).
        head_pool: ``"fixed"`` (pytorchvideo: AvgPool3d of kernel ``(clip_len, ceil(crop/32), ceil(crop/32))``,
            stride 1; inputs at least that large) or ``"adaptive"`` (global average; any input size).
        dropout: dropout probability before ``proj`` (0.5 as published).
        in_channels: input channels (3).
        init: ``"kaiming"`` (pytorchvideo's: Kaiming-normal convs, BN 1/0 with each residual branch's last BN at
            0, linear N(0, 0.01)) or ``"default"``.
        pretrained: weights in this layout (a pytorchvideo ``.pyth`` file's ``model_state`` or a state dict);
            ``proj`` is re-initialised when its class count differs.
    """

    #: Default Grad-CAM layer: the last res stage.
    explain_layer = "blocks.4"
    head_name = "blocks.5.proj"

    def __init__(
        self,
        num_classes: int = 400,
        clip_len: int = 13,
        crop_size: int = 160,
        width_factor: float = 2.0,
        depth_factor: float = 2.2,
        bottleneck_factor: float = 2.25,
        stem_dim_in: int = 12,
        se_ratio: float = 0.0625,
        head_dim_out: int = 2048,
        head_pool: str = "fixed",
        dropout: float = 0.5,
        in_channels: int = 3,
        init: str = "kaiming",
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes, integer=True)
        check_positive("clip_len", clip_len, integer=True)
        check_positive("crop_size", crop_size, integer=True)
        check_positive("width_factor", width_factor)
        check_positive("depth_factor", depth_factor)
        check_positive("bottleneck_factor", bottleneck_factor)
        check_positive("stem_dim_in", stem_dim_in, integer=True)
        if not isinstance(se_ratio, (int, float)) or isinstance(se_ratio, bool) or not 0.0 <= se_ratio < 1.0:
            raise ValueError(f"model.se_ratio must be in [0, 1), got {se_ratio!r}")
        check_positive("head_dim_out", head_dim_out, integer=True)
        check_choice("head_pool", head_pool, ("fixed", "adaptive"))
        check_dropout(dropout)
        check_positive("in_channels", in_channels, integer=True)
        check_choice("init", init, ("kaiming", "default"))
        if head_pool == "fixed" and int(crop_size) < _SPATIAL_STRIDE_TOTAL:
            raise ValueError(f"model.crop_size={crop_size} is smaller than X3D's spatial stride "
                             f"{_SPATIAL_STRIDE_TOTAL}; use a larger crop or model.head_pool=adaptive")

        stem_out = round_width(stem_dim_in, width_factor)
        blocks: list[nn.Module] = [X3DStem(int(in_channels), stem_out)]
        stage_dims = [int(stem_dim_in)]
        for _ in range(3):
            stage_dims.append(round_width(stage_dims[-1], 2.0, divisor=8))
        dim_in, dim_inner = stem_out, stem_out
        self.stage_depths: tuple[int, ...] = tuple(round_repeats(d, depth_factor) for d in _BASE_DEPTHS)
        for base, depth in zip(stage_dims, self.stage_depths):
            dim_out = round_width(base, width_factor)
            dim_inner = int(bottleneck_factor * dim_out)
            blocks.append(X3DStage(depth, dim_in, dim_inner, dim_out, 2, float(se_ratio)))
            dim_in = dim_out
        if head_pool == "fixed":
            side = math.ceil(int(crop_size) / _SPATIAL_STRIDE_TOTAL)
            self.head_pool_kernel: tuple[int, int, int] | None = (int(clip_len), side, side)
            pool: nn.Module = nn.AvgPool3d(self.head_pool_kernel, stride=1)
        else:
            self.head_pool_kernel = None
            pool = nn.AdaptiveAvgPool3d((1, 1, 1))
        blocks.append(X3DHead(dim_in, dim_inner, int(head_dim_out), int(num_classes), pool, float(dropout)))
        self.blocks = nn.ModuleList(blocks)

        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.width_factor = float(width_factor)
        if init == "kaiming":
            final = [m.norm_c for m in self.modules() if isinstance(m, X3DBottleneck)]
            init_weights(self, zero_final_bn=final)
        if pretrained is not None:
            from motion_relevance.models.weights import load_weights

            load_weights(self, pretrained)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """``(conv, BatchNorm)`` module paths of every BatchNorm and the conv it follows."""
        return conv_bn_pairs(self)

    def forward(self, clips: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for clips ``(B, C, T, H, W)``."""
        if not isinstance(clips, Tensor) or clips.dim() != 5:
            shape = tuple(clips.shape) if isinstance(clips, Tensor) else type(clips).__name__
            raise ValueError(f"X3D expects clips of shape (B, C, T, H, W), got {shape}")
        if clips.shape[1] != self.in_channels:
            raise ValueError(f"X3D was built for {self.in_channels} input channels (model.in_channels), got clips "
                             f"of shape {tuple(clips.shape)}")
        x = clips
        for block in self.blocks[:-1]:
            x = block(x)
        kernel = self.head_pool_kernel
        if kernel is not None and any(s < k for s, k in zip(x.shape[2:], kernel)):
            raise ValueError(
                f"X3D's head pools with the fixed kernel {kernel} (head_pool='fixed', from model.clip_len / "
                f"model.crop_size), but clips {tuple(clips.shape)} give a {'x'.join(map(str, x.shape[2:]))} feature "
                "map; feed larger clips, set model.clip_len / model.crop_size to the data's, or use "
                "model.head_pool=adaptive"
            )
        return self.blocks[-1](x)


def x3d_xs(num_classes: int = 400, clip_len: int = 4, crop_size: int = 160, head_pool: str = "fixed",
           dropout: float = 0.5, in_channels: int = 3, init: str = "kaiming", pretrained: str | None = None) -> X3D:
    """X3D-XS as pytorchvideo's hub ``x3d_xs`` (4x160x160 head kernel, 3.79 M parameters with 400 classes)."""
    return X3D(num_classes=num_classes, clip_len=clip_len, crop_size=crop_size, head_pool=head_pool, dropout=dropout,
               in_channels=in_channels, init=init, pretrained=pretrained)


def x3d_s(num_classes: int = 400, clip_len: int = 13, crop_size: int = 160, head_pool: str = "fixed",
          dropout: float = 0.5, in_channels: int = 3, init: str = "kaiming", pretrained: str | None = None) -> X3D:
    """X3D-S as pytorchvideo's hub ``x3d_s`` (13x160x160 head kernel, 3.79 M parameters with 400 classes)."""
    return X3D(num_classes=num_classes, clip_len=clip_len, crop_size=crop_size, head_pool=head_pool, dropout=dropout,
               in_channels=in_channels, init=init, pretrained=pretrained)
