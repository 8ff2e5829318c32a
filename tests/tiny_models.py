"""Tiny models shared by the tests (in the spirit of Captum's ``basic_models``): small enough for hand-written
references, built from the modules the relevance rules know.

* :func:`tiny_chain` — C3D-like chain: conv-relu-pool-conv-relu-pool-flatten-fc-relu-dropout-fc, clips
  ``(B, 3, 4, 8, 8)``, 5 classes (float64);
* :class:`ResidualNet` — stem conv-ReLU, one two-layer residual block with BatchNorm (``conv-BN-ReLU-conv-BN`` plus
  the identity, :class:`~motion_relevance.models.layers.Add`, ReLU), global average pooling, linear;
* :class:`SENet` — conv-BN-ReLU, conv-BN, squeeze-excitation (:class:`~motion_relevance.models.layers.GateMul`),
  SiLU, conv-BN, residual sum, ReLU, pooling, linear;
* :class:`TwoPathwayNet` — SlowFast in miniature: ``model([slow, fast])``, a time-strided lateral conv from the fast
  to the slow pathway and :class:`~motion_relevance.models.layers.Concat` fusion;
* :class:`TinyAttention` — one pre-norm transformer block on tubelet tokens: ``nn.Linear`` projections,
  :class:`~motion_relevance.models.layers.MatMul`, ``nn.Softmax``, ``nn.LayerNorm``, ``nn.GELU``, mean pooling.

:func:`randomize_batchnorm` gives BatchNorm layers eval statistics like a trained network's, :func:`zero_biases`
removes every bias (the setting in which relevance rules that leave biases out conserve exactly).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from motion_relevance.models.layers import Add, Concat, GateMul, MatMul
from motion_relevance.models.videomae import TokenPool

LOW, HIGH = -1.0, 1.0  # zB bounds of the clips below


def tiny_chain(bias: bool = False, seed: int = 0, pool: type[nn.Module] = nn.MaxPool3d) -> nn.Sequential:
    """conv-relu-pool-conv-relu-pool-flatten-fc-relu-dropout-fc on (B, 3, 4, 8, 8) clips, 5 classes (float64)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv3d(3, 4, 3, padding=1, bias=bias),
            relu1=nn.ReLU(),
            pool1=pool(kernel_size=(1, 2, 2)),
            conv2=nn.Conv3d(4, 6, 3, padding=1, bias=bias),
            relu2=nn.ReLU(),
            pool2=pool(kernel_size=2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(6 * 2 * 2 * 2, 10, bias=bias),
            relu3=nn.ReLU(),
            drop=nn.Dropout(0.5),
            fc2=nn.Linear(10, 5, bias=bias),
        )
    )
    for m in net.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.5)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.2, 0.2)
    return net.double()


def clips(batch: int = 2, seed: int = 1, shape: Sequence[int] = (3, 4, 8, 8), dtype: torch.dtype = torch.float64
          ) -> Tensor:
    """Uniform clips in ``[LOW, HIGH]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *shape, generator=g, dtype=dtype) * (HIGH - LOW) + LOW


class ResidualNet(nn.Module):
    """stem (conv, ReLU) -> block (conv1-bn1-relu1-conv2-bn2, + identity, Add, ReLU) -> pool -> fc.

    Clips ``(B, 2, 2, 4, 4)``; the stem has 3 channels, the block keeps them; 4 classes.
    """

    def __init__(self, seed: int = 0, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv3d(2, channels, 3, padding=1, bias=False)
        self.stem_relu = nn.ReLU()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(channels)
        self.add = Add()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, std=0.4)
        randomize_batchnorm(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        a0 = self.stem_relu(self.stem(x))
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(a0)))))
        return self.fc(self.flatten(self.pool(self.relu(self.add(branch, a0)))))


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(conv(relu(conv(mean(x)))))`` with the product a GateMul module."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc1 = nn.Conv3d(channels, reduced, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv3d(reduced, channels, 1)
        self.sigmoid = nn.Sigmoid()
        self.gate = GateMul()

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x, self.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x))))))


class SENet(nn.Module):
    """X3D-like bottleneck with squeeze-excitation and SiLU; clips ``(B, 3, 4, 8, 8)``, 5 classes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv3d(3, 4, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm3d(4)
        self.stem_relu = nn.ReLU()
        self.conv_a = nn.Conv3d(4, 6, 1, bias=False)
        self.bn_a = nn.BatchNorm3d(6)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv3d(6, 6, 3, padding=1, groups=6, bias=False)
        self.bn_b = nn.BatchNorm3d(6)
        self.se = SqueezeExcitation(6, 2)
        self.act_b = nn.SiLU()
        self.conv_c = nn.Conv3d(6, 4, 1, bias=False)
        self.bn_c = nn.BatchNorm3d(4)
        self.add = Add()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 5)
        randomize_batchnorm(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        a = self.stem_relu(self.stem_bn(self.stem(x)))
        b = self.act_b(self.se(self.bn_b(self.conv_b(self.relu_a(self.bn_a(self.conv_a(a)))))))
        y = self.relu(self.add(self.bn_c(self.conv_c(b)), a))
        return self.fc(self.flatten(self.pool(y)))


class TwoPathwayNet(nn.Module):
    """``model([slow, fast])`` with slow ``(B, 3, 2, 8, 8)`` and fast ``(B, 3, 8, 8, 8)`` (alpha = 4); 5 classes.

    Each pathway: conv-BN-ReLU; the lateral conv (kernel 5x1x1, temporal stride 4) takes the fast features to the
    slow frame rate and a Concat fuses them; one more conv per pathway, then global pooling, Concat, linear.
    """

    #: Grad-CAM layers per pathway
    explain_layers = {"slow": "slow2", "fast": "fast2"}
    explain_layer = "fast2"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.slow1 = nn.Conv3d(3, 4, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.slow_bn = nn.BatchNorm3d(4)
        self.slow_relu = nn.ReLU()
        self.fast1 = nn.Conv3d(3, 2, (3, 3, 3), padding=1, bias=False)
        self.fast_bn = nn.BatchNorm3d(2)
        self.fast_relu = nn.ReLU()
        self.lateral = nn.Conv3d(2, 2, (5, 1, 1), stride=(4, 1, 1), padding=(2, 0, 0), bias=False)
        self.lateral_relu = nn.ReLU()
        self.fuse = Concat(1)
        self.slow2 = nn.Conv3d(6, 4, 3, padding=1)
        self.slow2_relu = nn.ReLU()
        self.fast2 = nn.Conv3d(2, 2, 3, padding=1)
        self.fast2_relu = nn.ReLU()
        self.slow_pool = nn.AdaptiveAvgPool3d(1)
        self.fast_pool = nn.AdaptiveAvgPool3d(1)
        self.head_cat = Concat(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 5)
        randomize_batchnorm(self, seed)

    def forward(self, x: list[Tensor]) -> Tensor:
        slow, fast = x
        s = self.slow_relu(self.slow_bn(self.slow1(slow)))
        f = self.fast_relu(self.fast_bn(self.fast1(fast)))
        s = self.fuse(s, self.lateral_relu(self.lateral(f)))
        s = self.slow2_relu(self.slow2(s))
        f = self.fast2_relu(self.fast2(f))
        return self.fc(self.flatten(self.head_cat(self.slow_pool(s), self.fast_pool(f))))


class TinyAttention(nn.Module):
    """One pre-norm transformer block on tubelet tokens; clips ``(B, 3, 4, 8, 8)``, tubelets 2x4x4 -> 8 tokens of
    width 8, 2 heads, 4 classes. The attention scale multiplies the queries in ``forward`` (as VideoMAE does)."""

    def __init__(self, seed: int = 0, width: int = 8, heads: int = 2, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.heads, self.head_dim = heads, width // heads
        self.embed = nn.Conv3d(3, width, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.norm1 = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.qk = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.av = MatMul()
        self.proj = nn.Linear(width, width)
        self.residual1 = Add()
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * width, width)
        self.residual2 = Add()
        self.pool = TokenPool("mean")
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.1, 0.1)

    def split(self, t: Tensor) -> Tensor:
        return t.view(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        h = self.norm1(tokens)
        q = self.split(self.query(h)) * self.head_dim**-0.5
        k, v = self.split(self.key(h)), self.split(self.value(h))
        attn = self.softmax(self.qk(q, k.transpose(-2, -1)))
        context = self.av(attn, v).transpose(1, 2).reshape(tokens.shape)
        tokens = self.residual1(self.proj(context), tokens)
        tokens = self.residual2(self.fc2(self.act(self.fc1(self.norm2(tokens)))), tokens)
        return self.head(self.norm(self.pool(tokens)))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval statistics and affine parameters like a trained network's (random, away from 0/1)."""
    g = torch.Generator().manual_seed(seed + 100)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model


def calibrate_batchnorm(model: nn.Module, inputs: Tensor | list[Tensor], seed: int = 0) -> nn.Module:
    """Running statistics from one training-mode pass over ``inputs`` (each BatchNorm then normalises what it sees,
    as after training), affine scales in ``[0.5, 1.5]`` and shifts in ``[-0.1, 0.1]``; leaves the model in eval."""
    g = torch.Generator().manual_seed(seed + 200)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets the batch statistics
        c = m.num_features
        m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.data.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    model.train()
    with torch.no_grad():
        model(inputs)
    return model.eval()


def zero_biases(model: nn.Module) -> nn.Module:
    """Every bias 0: conv / linear biases, LayerNorm / BatchNorm shifts and BatchNorm running means."""
    for m in model.modules():
        bias = getattr(m, "bias", None)
        if isinstance(bias, Tensor):
            bias.data.zero_()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.zero_()
    return model


class FrameReader(nn.Module):
    """Logits read from one frame only: class 0 is 4 x the mean of frame ``k``'s first channel, class 1 is 0 (the
    temporal tests' model whose evidence lies in a known frame)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        z = x[:, 0, self.k].mean(dim=(1, 2)) * 4
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def perturbed(model: nn.Module, scale: float = 0.3, double: bool = True) -> nn.Module:
    """``model`` in eval mode with N(0, scale²) noise (from torch's global generator) added to every parameter, so
    that every rule sees non-trivial weights, biases and tokens; float64 unless ``double=False``."""
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.double() if double else model


def bounded_clips(batch: int, frames: int, size: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(batch, 3, frames, size, size)`` standard-normal clips (seed 1) clamped to [-2, 2]."""
    x = torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x.clamp(-2, 2).to(dtype)


def split_heads(t: Tensor, heads: int) -> Tensor:
    """``(B, N, heads·d)`` -> ``(B, heads, N, d)``, as attention layers split their projections."""
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(t: Tensor) -> Tensor:
    """``(B, heads, N, d)`` -> ``(B, N, heads·d)``: the inverse of :func:`split_heads`."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)
