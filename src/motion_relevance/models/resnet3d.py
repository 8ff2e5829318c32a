"""R3D-18, MC3-18 and R(2+1)D-18 (Tran et al., 2018) in torchvision's ``torchvision.models.video`` layout.

The state dict has exactly torchvision's key names and shapes, so a torchvision Kinetics-400 weights file loads
with ``load_state_dict(..., strict=True)`` and gives the same logits (torchvision itself is not needed):

=========  ==========================================  =============================================
module     r3d_18 / mc3_18                             r2plus1d_18
=========  ==========================================  =============================================
stem       conv (3,7,7) s(1,2,2) 64, BN, ReLU          conv (1,7,7) 45, BN, ReLU, conv (3,1,1) 64,
                                                       BN, ReLU
layer1     2 BasicBlocks, 64, 3x3x3                    2 BasicBlocks of (2+1)D convs
layer2-4   2 BasicBlocks, 128/256/512, stride 2;       midplanes = (in*out*27) // (in*9 + 3*out)
           mc3: (1,3,3) convs (no temporal stride)
avgpool    AdaptiveAvgPool3d(1)
fc         Linear(512, num_classes)
=========  ==========================================  =============================================

Differences from torchvision that leave the state dict unchanged, made so that relevance propagation has a
module for every operation (see ``docs/method.md``, "Deep Taylor and LRP through modern video networks"):

- every ReLU is its own non-in-place ``nn.ReLU`` used at one place;
- each residual sum is an :class:`~motion_relevance.models.layers.Add` module, called as
  ``self.add(branch, shortcut)``: the residual branch (``conv2``'s output) first, the shortcut (``x`` or
  ``downsample(x)``) second;
- flattening is an ``nn.Flatten`` module;
- every BatchNorm3d directly follows the conv it normalises (see :func:`conv_bn_pairs`).

``width`` scales every channel count (stem, the four stages and, for R(2+1)D, the stem's 45 and the midplanes
formula's inputs), so small variants keep the key names and change only shapes. The model returns logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from motion_relevance.models.layers import Add

__all__ = [
    "BasicBlock",
    "Conv2Plus1D",
    "Conv3DNoTemporal",
    "Conv3DSimple",
    "VideoResNet",
    "conv_bn_pairs",
    "mc3_18",
    "r2plus1d_18",
    "r3d_18",
]

#: Stage widths of the published networks (layer1 … layer4) and the stem width.
STAGE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
STEM_WIDTH = 64
R2PLUS1D_STEM_MID = 45
_CONV_KINDS = ("3d", "no_temporal", "2plus1d")
_INITS = ("kaiming", "default")


# ----------------------------------------------------------------------------------------------- argument checks
def check_positive(name: str, value: object, *, integer: bool = False) -> None:
    """ValueError naming ``model.<name>`` unless ``value`` is a positive number (an integer if asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value))
    ok = ok and float(value) > 0 and (not integer or float(value).is_integer())
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"model.{name} must be {kind}, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """ValueError naming ``model.<name>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"model.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_dropout(value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {value!r}")


def scaled(base: int, width: float) -> int:
    """Channel count of a layer of published width ``base`` in a model scaled by ``width`` (at least 1)."""
    return max(1, int(round(base * width)))


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv path, BatchNorm path)`` for every BatchNorm3d, the conv being the last one registered before it.

    The networks of this package register their modules in execution order within each branch, so the conv found
    here is the one whose output the BatchNorm normalises (the tests check this with forward hooks); relevance
    propagation folds each pair into one conv.
    """
    pairs: list[tuple[str, str]] = []
    last_conv: str | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv3d):
            last_conv = name
        elif isinstance(module, nn.BatchNorm3d):
            if last_conv is None:
                raise ValueError(f"BatchNorm {name!r} has no conv before it and cannot be folded")
            pairs.append((last_conv, name))
            last_conv = None
    return pairs


def init_weights(model: nn.Module, *, zero_final_bn: Sequence[nn.Module] = ()) -> None:
    """ResNet-style initialisation: Kaiming-normal convs (fan-out, ReLU gain), BN weight 1 and bias 0 (0 and 0
    for the BatchNorms in ``zero_final_bn``), linear weights N(0, 0.01), all biases 0."""
    zero = {id(m) for m in zero_final_bn}
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.constant_(module.weight, 0.0 if id(module) in zero else 1.0)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------- conv kinds
class Conv3DSimple(nn.Conv3d):
    """Full 3x3x3 conv (R3D); the block's stride applies to time and space."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int | None = None, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__(in_planes, out_planes, kernel_size=(3, 3, 3), stride=stride, padding=padding, bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class Conv3DNoTemporal(nn.Conv3d):
    """Spatial-only 1x3x3 conv (MC3's stages 2-4); no temporal stride."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int | None = None, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__(in_planes, out_planes, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                         padding=(0, padding, padding), bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return 1, stride, stride


class Conv2Plus1D(nn.Sequential):
    """(2+1)D conv: (1,3,3) spatial conv to ``midplanes``, BatchNorm, ReLU, (3,1,1) temporal conv.

    Indices 0 … 3 as in torchvision (``.0.weight``, ``.1.*``, ``.3.weight``); the ReLU at index 2 holds no keys.
    """

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1, padding: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                      padding=(0, padding, padding), bias=False),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(),
            nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1),
                      padding=(padding, 0, 0), bias=False),
        )

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


_CONV_BUILDERS: dict[str, type[nn.Module]] = {
    "3d": Conv3DSimple,
    "no_temporal": Conv3DNoTemporal,
    "2plus1d": Conv2Plus1D,
}


def midplanes_for(inplanes: int, planes: int) -> int:
    """torchvision's (2+1)D width: as many parameters as the 3x3x3 conv it replaces, ``in*out*27 // (in*9+3*out)``."""
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


class BasicBlock(nn.Module):
    """``relu(add(conv2(conv1(x)), shortcut))`` with ``shortcut = downsample(x)`` or ``x``.

    ``conv1 = [conv, BN, ReLU]``, ``conv2 = [conv, BN]``; the residual sum is ``self.add(branch, shortcut)``.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, conv_builder: type[nn.Module], stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        midplanes = midplanes_for(inplanes, planes)
        self.conv1 = nn.Sequential(conv_builder(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes),
                                   nn.ReLU())
        self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.downsample = downsample
        self.add = Add()
        self.relu = nn.ReLU()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        branch = self.conv2(self.conv1(x))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.add(branch, shortcut))


def _basic_stem(width: int, in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(),
    )


def _r2plus1d_stem(mid: int, width: int, in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(),
        nn.Conv3d(mid, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(),
    )


class VideoResNet(nn.Module):
    """Video ResNet of BasicBlocks for clips ``(B, in_channels, T, H, W)``; returns logits ``(B, num_classes)``.

    Args:
        num_classes: outputs of ``fc`` (400 for the Kinetics-400 weights).
        conv_makers: conv kind of each of the four stages: ``"3d"`` (3x3x3), ``"no_temporal"`` (1x3x3) or
            ``"2plus1d"`` ((1,3,3) + (3,1,1) with torchvision's midplanes).
        layers: BasicBlocks per stage (``[2, 2, 2, 2]`` for the -18 networks).
        stem: ``"basic"`` ((3,7,7) conv) or ``"r2plus1d"`` ((1,7,7) then (3,1,1) conv).
        width: multiplier for every channel count (1.0 = published model).
        in_channels: input channels (3 for RGB).
        init: ``"kaiming"`` (torchvision's initialisation: Kaiming-normal convs, BN 1/0, fc N(0, 0.01)) or
            ``"default"`` (PyTorch's per-layer defaults).
        pretrained: weights file (or state dict) in this layout, loaded with
            :func:`~motion_relevance.models.weights.load_weights`; ``fc`` is re-initialised when its class
            count differs.

    Any clip size works (adaptive pooling); the Kinetics weights were trained on 16x112x112.
    """

    #: Default layer for Grad-CAM (module path).
    explain_layer = "layer4"
    #: The final linear layer (re-initialised when loading weights with another class count).
    head_name = "fc"

    def __init__(
        self,
        num_classes: int = 400,
        conv_makers: Sequence[str] = ("3d", "3d", "3d", "3d"),
        layers: Sequence[int] = (2, 2, 2, 2),
        stem: str = "basic",
        width: float = 1.0,
        in_channels: int = 3,
        init: str = "kaiming",
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes, integer=True)
        check_positive("width", width)
        check_positive("in_channels", in_channels, integer=True)
        check_choice("stem", stem, ("basic", "r2plus1d"))
        check_choice("init", init, _INITS)
        conv_makers, layers = list(conv_makers), list(layers)
        if len(conv_makers) != 4:
            raise ValueError(f"model.conv_makers must name 4 conv kinds (one per stage), got {conv_makers!r}")
        for kind in conv_makers:
            check_choice("conv_makers", kind, _CONV_KINDS)
        if len(layers) != 4:
            raise ValueError(f"model.layers must give 4 block counts (one per stage), got {layers!r}")
        for depth in layers:
            check_positive("layers", depth, integer=True)

        stem_width = scaled(STEM_WIDTH, width)
        if stem == "basic":
            self.stem = _basic_stem(stem_width, int(in_channels))
        else:
            self.stem = _r2plus1d_stem(scaled(R2PLUS1D_STEM_MID, width), stem_width, int(in_channels))
        self.inplanes = stem_width
        strides = (1, 2, 2, 2)
        self.layer1 = self._make_layer(_CONV_BUILDERS[conv_makers[0]], scaled(STAGE_WIDTHS[0], width),
                                       int(layers[0]), strides[0])
        self.layer2 = self._make_layer(_CONV_BUILDERS[conv_makers[1]], scaled(STAGE_WIDTHS[1], width),
                                       int(layers[1]), strides[1])
        self.layer3 = self._make_layer(_CONV_BUILDERS[conv_makers[2]], scaled(STAGE_WIDTHS[2], width),
                                       int(layers[2]), strides[2])
        self.layer4 = self._make_layer(_CONV_BUILDERS[conv_makers[3]], scaled(STAGE_WIDTHS[3], width),
                                       int(layers[3]), strides[3])
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(self.inplanes * BasicBlock.expansion, int(num_classes))

        self.num_classes = int(num_classes)
        self.width = float(width)
        self.in_channels = int(in_channels)
        if init == "kaiming":
            init_weights(self)
        if pretrained is not None:
            from motion_relevance.models.weights import load_weights

            load_weights(self, pretrained)

    def _make_layer(self, conv_builder: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            ds_stride = conv_builder.get_downsample_stride(stride)  # type: ignore[attr-defined]
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=ds_stride,
                          bias=False),
                nn.BatchNorm3d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, conv_builder, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes, conv_builder) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """``(conv, BatchNorm)`` module paths of every BatchNorm and the conv it follows."""
        return conv_bn_pairs(self)

    def forward(self, clips: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for clips ``(B, C, T, H, W)``."""
        if not isinstance(clips, torch.Tensor) or clips.dim() != 5:
            shape = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
            raise ValueError(f"{type(self).__name__} expects clips of shape (B, C, T, H, W), got {shape}")
        if clips.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.in_channels} input channels "
                             f"(model.in_channels), got clips of shape {tuple(clips.shape)}")
        x = self.stem(clips)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.fc(self.flatten(self.avgpool(x)))


def r3d_18(num_classes: int = 400, width: float = 1.0, in_channels: int = 3, init: str = "kaiming",
           pretrained: str | None = None) -> VideoResNet:
    """R3D-18: 3x3x3 convs in every stage (torchvision ``r3d_18``, 33.4 M parameters with 400 classes)."""
    return VideoResNet(num_classes=num_classes, conv_makers=("3d",) * 4, layers=(2, 2, 2, 2), stem="basic",
                       width=width, in_channels=in_channels, init=init, pretrained=pretrained)


def mc3_18(num_classes: int = 400, width: float = 1.0, in_channels: int = 3, init: str = "kaiming",
           pretrained: str | None = None) -> VideoResNet:
    """MC3-18: 3x3x3 convs in layer1, 1x3x3 in layers 2-4 (torchvision ``mc3_18``, 11.7 M parameters)."""
    return VideoResNet(num_classes=num_classes, conv_makers=("3d",) + ("no_temporal",) * 3, layers=(2, 2, 2, 2),
                       stem="basic", width=width, in_channels=in_channels, init=init, pretrained=pretrained)


def r2plus1d_18(num_classes: int = 400, width: float = 1.0, in_channels: int = 3, init: str = "kaiming",
                pretrained: str | None = None) -> VideoResNet:
    """R(2+1)D-18: (2+1)D convs and stem (torchvision ``r2plus1d_18``, 31.5 M parameters)."""
    return VideoResNet(num_classes=num_classes, conv_makers=("2plus1d",) * 4, layers=(2, 2, 2, 2),
                       stem="r2plus1d", width=width, in_channels=in_channels, init=init, pretrained=pretrained)
