"""C3D (Tran et al., 2015) with the layer names of the common PyTorch port.

The published network takes clips of shape ``(B, 3, 16, 112, 112)``:

=========  ========  ==========================  =====================
layer      channels  kernel / stride             output (T, H, W)
=========  ========  ==========================  =====================
conv1      64        3x3x3                       16, 112, 112
pool1                (1, 2, 2)                   16, 56, 56
conv2      128       3x3x3                       16, 56, 56
pool2                (2, 2, 2)                   8, 28, 28
conv3a/b   256       3x3x3                       8, 28, 28
pool3                (2, 2, 2)                   4, 14, 14
conv4a/b   512       3x3x3                       4, 14, 14
pool4                (2, 2, 2)                   2, 7, 7
conv5a/b   512       3x3x3                       2, 7, 7
pool5                (2, 2, 2), padding (0,1,1)  1, 4, 4
fc6        4096      8192 -> 4096
fc7        4096
fc8        classes
=========  ========  ==========================  =====================

The model is an ``nn.Sequential`` of named layers, so its state dict has the port's keys (``conv1.weight`` …
``fc8.bias``) and ``model.conv5b`` / ``dict(model.named_modules())["conv5b"]`` find layers by name.
Every ReLU is its own, non-in-place ``nn.ReLU`` module (LRP and Guided Backprop hook modules, and a shared
module would be hooked twice), flattening is an ``nn.Flatten`` module and dropout uses ``nn.Dropout`` modules,
so the whole forward pass is a chain of named modules that explainers can inspect.

``width`` scales every conv and fc width (``width=0.125`` gives 8, 16, 32, 64 … channels) and ``clip_len`` /
``crop_size`` set the input the fc6 input size is computed for, so small variants run on CPUs in minutes.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

#: Conv widths of the published C3D, in order (conv1, conv2, conv3a, conv3b, conv4a, conv4b, conv5a, conv5b).
C3D_CONV_WIDTHS: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512)
C3D_FC_WIDTH = 4096
_CONV_NAMES = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
_RELU_NAMES = ("relu1", "relu2", "relu3a", "relu3b", "relu4a", "relu4b", "relu5a", "relu5b")
# Pool after these conv layers: name -> (kernel/stride, padding).
_POOLS = {
    "conv1": ("pool1", (1, 2, 2), 0),
    "conv2": ("pool2", (2, 2, 2), 0),
    "conv3b": ("pool3", (2, 2, 2), 0),
    "conv4b": ("pool4", (2, 2, 2), 0),
    "conv5b": ("pool5", (2, 2, 2), (0, 1, 1)),
}


def _check_positive(name: str, value: float, *, integer: bool = False) -> None:
    bad = value is None or (isinstance(value, float) and math.isnan(value)) or value <= 0
    if integer and not float(value).is_integer():
        bad = True
    if bad:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"model.{name} must be {kind}, got {value!r}")


def scaled_width(base: int, width: float) -> int:
    """Channel count of a layer of published width ``base`` in a model scaled by ``width`` (at least 1)."""
    return max(1, int(round(base * width)))


class C3D(nn.Sequential):
    """C3D for clips ``(B, in_channels, clip_len, crop_size, crop_size)``; returns logits ``(B, num_classes)``.

    Args:
        num_classes: outputs of fc8 (101 for UCF-101, 487 for Sports-1M).
        width: multiplier for every conv and fc width (1.0 = published model).
        clip_len: frames per clip the model is built for (16 in the paper).
        crop_size: spatial side of the input (112 in the paper); an int or ``(H, W)``.
        in_channels: input channels (3 for RGB/BGR).
        dropout: dropout probability after fc6 and fc7 (0.5 in the paper).
        init: ``"kaiming"`` (Kaiming-normal weights, zero biases; trains from scratch) or ``"default"``
            (PyTorch's default initialisation).
        pretrained: path to weights in the C3D port's layout (Sports-1M ``c3d.pickle``); fc8 is re-initialised
            when its class count differs. See :mod:`motion_relevance.models.weights`.
    """

    #: The layer Grad-CAM explains by default: the last conv layer (2x7x7 for 16x112x112 clips).
    explain_layer = "conv5b"
    #: The final linear layer, re-initialised when published weights have another class count.
    head_name = "fc8"
    #: What published weights for this class look like (for load errors).
    layout_hint = "the C3D port's layout (conv1.weight … fc8.bias) at width 1.0, clip_len 16, crop 112"

    def __init__(
        self,
        num_classes: int = 101,
        width: float = 1.0,
        clip_len: int = 16,
        crop_size: int | tuple[int, int] = 112,
        in_channels: int = 3,
        dropout: float = 0.5,
        init: str = "kaiming",
        pretrained: str | None = None,
    ) -> None:
        _check_positive("num_classes", num_classes, integer=True)
        _check_positive("width", width)
        _check_positive("clip_len", clip_len, integer=True)
        _check_positive("in_channels", in_channels, integer=True)
        crop_hw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop_hw) != 2:
            raise ValueError(f"model.crop_size must be an int or (H, W), got {crop_size!r}")
        for side in crop_hw:
            _check_positive("crop_size", side, integer=True)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout!r}")
        if init not in ("kaiming", "default"):
            raise ValueError(f"model.init must be 'kaiming' or 'default', got {init!r}")

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = int(in_channels)
        for conv_name, relu_name, base in zip(_CONV_NAMES, _RELU_NAMES, C3D_CONV_WIDTHS):
            out = scaled_width(base, width)
            layers[conv_name] = nn.Conv3d(channels, out, kernel_size=3, padding=1)
            layers[relu_name] = nn.ReLU()
            if conv_name in _POOLS:
                pool_name, kernel, padding = _POOLS[conv_name]
                layers[pool_name] = nn.MaxPool3d(kernel_size=kernel, stride=kernel, padding=padding)
            channels = out

        t, h, w = self.feature_shape(int(clip_len), (int(crop_hw[0]), int(crop_hw[1])))
        if min(t, h, w) < 1:
            raise ValueError(
                f"model.clip_len={clip_len} / model.crop_size={crop_size} are too small for C3D's five pools "
                f"(feature map would be {t}x{h}x{w}); use clip_len >= 16 and crop_size >= 16"
            )
        fc_in = channels * t * h * w
        fc_width = scaled_width(C3D_FC_WIDTH, width)
        head = layers
        head["flatten"] = nn.Flatten(1)
        head["fc6"] = nn.Linear(fc_in, fc_width)
        head["relu6"] = nn.ReLU()
        head["dropout6"] = nn.Dropout(dropout)
        head["fc7"] = nn.Linear(fc_width, fc_width)
        head["relu7"] = nn.ReLU()
        head["dropout7"] = nn.Dropout(dropout)
        head["fc8"] = nn.Linear(fc_width, int(num_classes))
        super().__init__(layers)
        self.num_classes = int(num_classes)
        self.width = float(width)
        self.clip_len = int(clip_len)
        self.crop_size = (int(crop_hw[0]), int(crop_hw[1]))
        self.in_channels = int(in_channels)
        self.fc_in_features = fc_in
        if init == "kaiming":
            self.reset_parameters()
        if pretrained:
            from motion_relevance.models.weights import load_weights

            load_weights(self, pretrained)

    @staticmethod
    def feature_shape(clip_len: int, crop_size: tuple[int, int]) -> tuple[int, int, int]:
        """(T, H, W) of pool5's output for an input of ``clip_len`` frames of ``crop_size`` pixels.

        A size that drops below 1 at any pool is reported as 0 (the input is too small).
        """
        t, h, w = clip_len, crop_size[0], crop_size[1]
        for _, kernel, padding in _POOLS.values():
            if min(t, h, w) < 1:
                return 0, 0, 0
            pad = (padding,) * 3 if isinstance(padding, int) else padding
            t = (t + 2 * pad[0] - kernel[0]) // kernel[0] + 1
            h = (h + 2 * pad[1] - kernel[1]) // kernel[1] + 1
            w = (w + 2 * pad[2] - kernel[2]) // kernel[2] + 1
        return t, h, w

    def reset_parameters(self) -> None:
        """Kaiming-normal weights (fan-out for convs, fan-in for fc), zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for clips ``(B, C, T, H, W)``."""
        if clips.dim() != 5:
            raise ValueError(f"C3D expects clips of shape (B, C, T, H, W), got {tuple(clips.shape)}")
        expected = (self.in_channels, self.clip_len, *self.crop_size)
        if tuple(clips.shape[1:]) != expected:
            raise ValueError(
                f"C3D was built for clips (B, {', '.join(map(str, expected))}), got {tuple(clips.shape)}; "
                "set model.clip_len / model.crop_size to the data's clip_len / crop_size"
            )
        return super().forward(clips)
