"""Independent transcriptions of the published layouts, written from the publishers' code (not from our classes).

For each publisher this module gives (a) the table of every state-dict key and its shape, built by loops over the
stage depths and widths as the publisher's builder computes them, and (b) a functional forward pass straight from a
state dict (``F.conv3d`` / ``F.batch_norm`` / ``F.relu`` / pooling / ``F.linear``), following the publisher's
``forward`` — including the details our modules reorganise (pytorchvideo's heads project every position and then
average; torchvision's residual ``out += residual``).

Sources transcribed:
- torchvision ``torchvision/models/video/resnet.py`` (``VideoResNet``, ``BasicBlock``, ``Conv3DSimple``,
  ``Conv3DNoTemporal``, ``Conv2Plus1D``, ``BasicStem``, ``R2Plus1dStem``, ``r3d_18`` / ``mc3_18`` /
  ``r2plus1d_18``) and its weights' ``num_params``;
- pytorchvideo ``models/slowfast.py`` (``create_slowfast``, ``FastToSlowFusionBuilder``, ``FuseFastToSlow``,
  ``PoolConcatPathway``), ``models/resnet.py`` (``create_res_block``, ``create_bottleneck_block``, ``ResBlock``),
  ``models/stem.py``, ``models/head.py`` (``ResNetBasicHead``), ``models/hub/slowfast.py`` (``slowfast_r50``:
  ``model_depth=50``, fusion kernel (7, 1, 1));
- pytorchvideo ``models/x3d.py`` (``create_x3d``, ``create_x3d_stem``, ``create_x3d_bottleneck_block``,
  ``create_x3d_res_block``, ``create_x3d_res_stage``, ``create_x3d_head``, ``ProjectedPool``), ``layers/utils.py``
  (``round_width``, ``round_repeats``), fvcore ``nn/squeeze_excitation.py`` (``SqueezeExcitation``),
  ``models/hub/x3d.py`` (``x3d_xs``: clip 4, crop 160; ``x3d_s``: clip 13, crop 160).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

Layout = dict[str, tuple[int, ...]]

#: torchvision's ``Weights.meta["num_params"]`` (Kinetics-400, 400 classes).
TORCHVISION_PARAMS = {"r3d_18": 33_371_472, "mc3_18": 11_695_440, "r2plus1d_18": 31_505_325}
#: pytorchvideo model zoo "Params (M)" (Kinetics-400, 400 classes).
PYTORCHVIDEO_PARAMS_M = {"slowfast_r50": 34.57, "x3d_xs": 3.79, "x3d_s": 3.79}


def _bn(layout: Layout, prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        layout[f"{prefix}.{name}"] = (channels,)
    layout[f"{prefix}.num_batches_tracked"] = ()


def parameter_count(layout: Layout) -> int:
    """Learnable parameters of a layout (BatchNorm running statistics and counters excluded)."""
    return sum(math.prod(shape) for key, shape in layout.items()
               if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))


# ================================================================================================ torchvision
#: Per arch: stem kind and the conv kind of each of the four layers (torchvision's ``conv_makers``).
TV_ARCHS = {
    "r3d_18": ("basic", ("simple", "simple", "simple", "simple")),
    "mc3_18": ("basic", ("simple", "notemporal", "notemporal", "notemporal")),
    "r2plus1d_18": ("r2plus1d", ("2plus1d", "2plus1d", "2plus1d", "2plus1d")),
}
TV_PLANES = ((64, 1), (128, 2), (256, 2), (512, 2))


def _tv_mid(inplanes: int, planes: int) -> int:
    # BasicBlock.__init__: computed once from (inplanes, planes), used by both of the block's convs.
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


def torchvision_layout(arch: str, num_classes: int = 400) -> Layout:
    stem, kinds = TV_ARCHS[arch]
    layout: Layout = {}
    if stem == "basic":
        layout["stem.0.weight"] = (64, 3, 3, 7, 7)
        _bn(layout, "stem.1", 64)
    else:
        layout["stem.0.weight"] = (45, 3, 1, 7, 7)
        _bn(layout, "stem.1", 45)
        layout["stem.3.weight"] = (64, 45, 3, 1, 1)
        _bn(layout, "stem.4", 64)
    inplanes = 64
    for li, ((planes, stride), kind) in enumerate(zip(TV_PLANES, kinds), start=1):
        for b in range(2):
            block_in = inplanes if b == 0 else planes
            mid = _tv_mid(block_in, planes)
            prefix = f"layer{li}.{b}"
            for ci, cin in (("conv1", block_in), ("conv2", planes)):
                if kind == "simple":
                    layout[f"{prefix}.{ci}.0.weight"] = (planes, cin, 3, 3, 3)
                elif kind == "notemporal":
                    layout[f"{prefix}.{ci}.0.weight"] = (planes, cin, 1, 3, 3)
                else:
                    layout[f"{prefix}.{ci}.0.0.weight"] = (mid, cin, 1, 3, 3)
                    _bn(layout, f"{prefix}.{ci}.0.1", mid)
                    layout[f"{prefix}.{ci}.0.3.weight"] = (planes, mid, 3, 1, 1)
                _bn(layout, f"{prefix}.{ci}.1", planes)
            if b == 0 and (stride != 1 or inplanes != planes):
                layout[f"{prefix}.downsample.0.weight"] = (planes, inplanes, 1, 1, 1)
                _bn(layout, f"{prefix}.downsample.1", planes)
        inplanes = planes
    layout["fc.weight"] = (num_classes, 512)
    layout["fc.bias"] = (num_classes,)
    return layout


def _bn_apply(x: Tensor, sd: Mapping[str, Tensor], prefix: str, training: bool = False) -> Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=training, momentum=0.1, eps=1e-5)


def torchvision_forward(sd: Mapping[str, Tensor], arch: str, x: Tensor, training: bool = False) -> Tensor:
    """torchvision ``VideoResNet.forward`` from a state dict (``training`` uses batch statistics and updates the
    running statistics in ``sd`` in place, as BatchNorm3d does)."""
    stem, kinds = TV_ARCHS[arch]

    def bn(t: Tensor, p: str) -> Tensor:
        return _bn_apply(t, sd, p, training)

    if stem == "basic":
        x = F.relu(bn(F.conv3d(x, sd["stem.0.weight"], stride=(1, 2, 2), padding=(1, 3, 3)), "stem.1"))
    else:
        x = F.relu(bn(F.conv3d(x, sd["stem.0.weight"], stride=(1, 2, 2), padding=(0, 3, 3)), "stem.1"))
        x = F.relu(bn(F.conv3d(x, sd["stem.3.weight"], stride=1, padding=(1, 0, 0)), "stem.4"))

    def conv(t: Tensor, p: str, kind: str, s: int) -> Tensor:
        if kind == "simple":
            return F.conv3d(t, sd[f"{p}.weight"], stride=(s, s, s), padding=(1, 1, 1))
        if kind == "notemporal":
            return F.conv3d(t, sd[f"{p}.weight"], stride=(1, s, s), padding=(0, 1, 1))
        t = F.conv3d(t, sd[f"{p}.0.weight"], stride=(1, s, s), padding=(0, 1, 1))
        t = F.relu(bn(t, f"{p}.1"))
        return F.conv3d(t, sd[f"{p}.3.weight"], stride=(s, 1, 1), padding=(1, 0, 0))

    for li, ((_, stride), kind) in enumerate(zip(TV_PLANES, kinds), start=1):
        for b in range(2):
            p = f"layer{li}.{b}"
            s = stride if b == 0 else 1
            residual = x
            out = F.relu(bn(conv(x, f"{p}.conv1.0", kind, s), f"{p}.conv1.1"))
            out = bn(conv(out, f"{p}.conv2.0", kind, 1), f"{p}.conv2.1")
            if f"{p}.downsample.0.weight" in sd:
                ds = (1, s, s) if kind == "notemporal" else (s, s, s)
                residual = bn(F.conv3d(x, sd[f"{p}.downsample.0.weight"], stride=ds), f"{p}.downsample.1")
            x = F.relu(out + residual)
    x = F.adaptive_avg_pool3d(x, (1, 1, 1)).flatten(1)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


# ============================================================================================ pytorchvideo SlowFast
SF_DEPTHS = (3, 4, 6, 3)  # _MODEL_STAGE_DEPTH[50]
SF_SLOW_CONV_A = ((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1))
SF_FAST_CONV_A = ((3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1))
SF_SPATIAL = (1, 2, 2, 2)


def slowfast_layout(num_classes: int = 400) -> Layout:
    """``create_slowfast(model_depth=50)``: reduction ratio 8, fusion ratio 2, fusion kernel (7,1,1)."""
    red, fratio = 8, 2
    layout: Layout = {}
    stem_outs = (64, 8)
    for pw, (cout, kt) in enumerate(zip(stem_outs, (1, 5))):
        layout[f"blocks.0.multipathway_blocks.{pw}.conv.weight"] = (cout, 3, kt, 7, 7)
        _bn(layout, f"blocks.0.multipathway_blocks.{pw}.norm", cout)

    def fusion(stage_idx: int, fusion_dim_in: int) -> None:
        if stage_idx > 3:
            return  # nn.Identity
        cin = fusion_dim_in // red
        layout[f"blocks.{stage_idx}.multipathway_fusion.conv_fast_to_slow.weight"] = (cin * fratio, cin, 7, 1, 1)
        _bn(layout, f"blocks.{stage_idx}.multipathway_fusion.norm", cin * fratio)

    fusion(0, stem_outs[0])
    stage_in, stage_out = 64, 256
    for idx, depth in enumerate(SF_DEPTHS):
        dims_in = (stage_in + stage_in * fratio // red, stage_in // red)
        inners = (stage_out // 4, stage_out // 4 // red)
        outs = (stage_out, stage_out // red)
        kernels = (SF_SLOW_CONV_A[idx], SF_FAST_CONV_A[idx])
        for pw in range(2):
            for ind in range(depth):
                din = dims_in[pw] if ind == 0 else outs[pw]
                s = SF_SPATIAL[idx] if ind == 0 else 1
                p = f"blocks.{idx + 1}.multipathway_blocks.{pw}.res_blocks.{ind}"
                if din != outs[pw] or s != 1:
                    layout[f"{p}.branch1_conv.weight"] = (outs[pw], din, 1, 1, 1)
                    _bn(layout, f"{p}.branch1_norm", outs[pw])
                layout[f"{p}.branch2.conv_a.weight"] = (inners[pw], din, *kernels[pw])
                _bn(layout, f"{p}.branch2.norm_a", inners[pw])
                layout[f"{p}.branch2.conv_b.weight"] = (inners[pw], inners[pw], 1, 3, 3)
                _bn(layout, f"{p}.branch2.norm_b", inners[pw])
                layout[f"{p}.branch2.conv_c.weight"] = (outs[pw], inners[pw], 1, 1, 1)
                _bn(layout, f"{p}.branch2.norm_c", outs[pw])
        fusion(idx + 1, stage_out)
        stage_in, stage_out = stage_out, stage_out * 2
    layout["blocks.6.proj.weight"] = (num_classes, stage_in + stage_in // red)
    layout["blocks.6.proj.bias"] = (num_classes,)
    return layout


def slowfast_forward(sd: Mapping[str, Tensor], slow: Tensor, fast: Tensor, pool_kernels: tuple[tuple[int, ...], ...],
                     alpha: int = 4) -> Tensor:
    """pytorchvideo ``Net.forward`` of ``create_slowfast`` (eval mode), head pools ``pool_kernels`` (slow, fast)."""
    def bn(t: Tensor, p: str) -> Tensor:
        return _bn_apply(t, sd, p)

    xs = []
    for pw, x in enumerate((slow, fast)):
        p = f"blocks.0.multipathway_blocks.{pw}"
        w = sd[f"{p}.conv.weight"]
        x = F.conv3d(x, w, stride=(1, 2, 2), padding=tuple(k // 2 for k in w.shape[2:]))
        x = F.relu(bn(x, f"{p}.norm"))
        xs.append(F.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))

    def fuse(stage_idx: int, xs: list[Tensor]) -> list[Tensor]:
        p = f"blocks.{stage_idx}.multipathway_fusion"
        if f"{p}.conv_fast_to_slow.weight" not in sd:
            return xs
        f = F.conv3d(xs[1], sd[f"{p}.conv_fast_to_slow.weight"], stride=(alpha, 1, 1), padding=(3, 0, 0))
        f = F.relu(bn(f, f"{p}.norm"))
        return [torch.cat([xs[0], f], 1), xs[1]]

    xs = fuse(0, xs)
    for idx, depth in enumerate(SF_DEPTHS):
        kernels = (SF_SLOW_CONV_A[idx], SF_FAST_CONV_A[idx])
        for pw in range(2):
            x = xs[pw]
            for ind in range(depth):
                p = f"blocks.{idx + 1}.multipathway_blocks.{pw}.res_blocks.{ind}"
                s = SF_SPATIAL[idx] if ind == 0 else 1
                kt = kernels[pw][0]
                y = F.relu(bn(F.conv3d(x, sd[f"{p}.branch2.conv_a.weight"], padding=(kt // 2, 0, 0)),
                              f"{p}.branch2.norm_a"))
                y = F.relu(bn(F.conv3d(y, sd[f"{p}.branch2.conv_b.weight"], stride=(1, s, s), padding=(0, 1, 1)),
                              f"{p}.branch2.norm_b"))
                y = bn(F.conv3d(y, sd[f"{p}.branch2.conv_c.weight"]), f"{p}.branch2.norm_c")
                if f"{p}.branch1_conv.weight" in sd:
                    shortcut = bn(F.conv3d(x, sd[f"{p}.branch1_conv.weight"], stride=(1, s, s)), f"{p}.branch1_norm")
                else:
                    shortcut = x
                x = F.relu(shortcut + y)  # branch_fusion(shortcut, branch2(x))
            xs[pw] = x
        xs = fuse(idx + 1, xs)
    pooled = [F.avg_pool3d(x, k, stride=1) for x, k in zip(xs, pool_kernels)]
    x = torch.cat(pooled, 1)
    # ResNetBasicHead: dropout (identity in eval), projection at every position, then global averaging.
    x = x.permute(0, 2, 3, 4, 1)
    x = F.linear(x, sd["blocks.6.proj.weight"], sd["blocks.6.proj.bias"])
    x = x.permute(0, 4, 1, 2, 3)
    return F.adaptive_avg_pool3d(x, 1).view(x.shape[0], -1)


# ================================================================================================ pytorchvideo X3D
def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """pytorchvideo ``layers/utils.py`` ``round_width`` (``ceil=False``)."""
    width *= multiplier
    width_out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if width_out < 0.9 * width:
        width_out += divisor
    return int(width_out)


def round_repeats(repeats: int, multiplier: float) -> int:
    return int(math.ceil(multiplier * repeats))


def _x3d_plan() -> list[tuple[int, int, int, int]]:
    """(depth, dim_in, dim_inner, dim_out) per stage of ``create_x3d`` (width 2.0, depth 2.2, bottleneck 2.25)."""
    stem_out = round_width(12, 2.0)
    dims = [12]
    for _ in range(3):
        dims.append(round_width(dims[-1], 2.0, divisor=8))
    plan, dim_in = [], stem_out
    for base, d in zip(dims, (1, 2, 5, 3)):
        dim_out = round_width(base, 2.0)
        plan.append((round_repeats(d, 2.2), dim_in, int(2.25 * dim_out), dim_out))
        dim_in = dim_out
    return plan


def x3d_layout(num_classes: int = 400) -> Layout:
    layout: Layout = {}
    stem_out = round_width(12, 2.0)
    layout["blocks.0.conv.conv_t.weight"] = (stem_out, 3, 1, 3, 3)  # the spatial conv, named conv_t
    layout["blocks.0.conv.conv_xy.weight"] = (stem_out, 1, 5, 1, 1)  # depthwise temporal, named conv_xy
    _bn(layout, "blocks.0.norm", stem_out)
    plan = _x3d_plan()
    for si, (depth, dim_in, inner, dim_out) in enumerate(plan, start=1):
        for b in range(depth):
            din = dim_in if b == 0 else dim_out
            stride = (1, 2, 2) if b == 0 else (1, 1, 1)
            p = f"blocks.{si}.res_blocks.{b}"
            if din != dim_out or math.prod(stride) > 1:
                layout[f"{p}.branch1_conv.weight"] = (dim_out, din, 1, 1, 1)
            if din != dim_out:
                _bn(layout, f"{p}.branch1_norm", dim_out)
            layout[f"{p}.branch2.conv_a.weight"] = (inner, din, 1, 1, 1)
            _bn(layout, f"{p}.branch2.norm_a", inner)
            layout[f"{p}.branch2.conv_b.weight"] = (inner, 1, 3, 3, 3)
            _bn(layout, f"{p}.branch2.norm_b.0", inner)
            if (b + 1) % 2:
                reduced = round_width(inner, 0.0625)
                layout[f"{p}.branch2.norm_b.1.block.0.weight"] = (reduced, inner, 1, 1, 1)
                layout[f"{p}.branch2.norm_b.1.block.0.bias"] = (reduced,)
                layout[f"{p}.branch2.norm_b.1.block.2.weight"] = (inner, reduced, 1, 1, 1)
                layout[f"{p}.branch2.norm_b.1.block.2.bias"] = (inner,)
            layout[f"{p}.branch2.conv_c.weight"] = (dim_out, inner, 1, 1, 1)
            _bn(layout, f"{p}.branch2.norm_c", dim_out)
    _, _, inner, dim_out = plan[-1]
    layout["blocks.5.pool.pre_conv.weight"] = (inner, dim_out, 1, 1, 1)
    _bn(layout, "blocks.5.pool.pre_norm", inner)
    layout["blocks.5.pool.post_conv.weight"] = (2048, inner, 1, 1, 1)
    layout["blocks.5.proj.weight"] = (num_classes, 2048)
    layout["blocks.5.proj.bias"] = (num_classes,)
    return layout


def x3d_forward(sd: Mapping[str, Tensor], x: Tensor, clip_len: int, crop_size: int, training: bool = False) -> Tensor:
    """pytorchvideo ``create_x3d(input_clip_length=clip_len, input_crop_size=crop_size)`` forward (dropout off)."""
    def bn(t: Tensor, p: str) -> Tensor:
        return _bn_apply(t, sd, p, training)

    stem_out = sd["blocks.0.conv.conv_t.weight"].shape[0]
    x = F.conv3d(x, sd["blocks.0.conv.conv_t.weight"], stride=(1, 2, 2), padding=(0, 1, 1))
    x = F.conv3d(x, sd["blocks.0.conv.conv_xy.weight"], stride=1, padding=(2, 0, 0), groups=stem_out)
    x = F.relu(bn(x, "blocks.0.norm"))
    for si, (depth, _, inner, _) in enumerate(_x3d_plan(), start=1):
        for b in range(depth):
            p = f"blocks.{si}.res_blocks.{b}"
            s = 2 if b == 0 else 1
            y = F.relu(bn(F.conv3d(x, sd[f"{p}.branch2.conv_a.weight"]), f"{p}.branch2.norm_a"))
            y = F.conv3d(y, sd[f"{p}.branch2.conv_b.weight"], stride=(1, s, s), padding=1, groups=inner)
            y = bn(y, f"{p}.branch2.norm_b.0")
            if f"{p}.branch2.norm_b.1.block.0.weight" in sd:  # fvcore SqueezeExcitation
                m = y.mean(dim=[2, 3, 4], keepdim=True)
                g = F.relu(F.conv3d(m, sd[f"{p}.branch2.norm_b.1.block.0.weight"],
                                    sd[f"{p}.branch2.norm_b.1.block.0.bias"]))
                g = torch.sigmoid(F.conv3d(g, sd[f"{p}.branch2.norm_b.1.block.2.weight"],
                                           sd[f"{p}.branch2.norm_b.1.block.2.bias"]))
                y = torch.mul(y, g)
            y = y * torch.sigmoid(y)  # Swish
            y = bn(F.conv3d(y, sd[f"{p}.branch2.conv_c.weight"]), f"{p}.branch2.norm_c")
            shortcut = x
            if f"{p}.branch1_conv.weight" in sd:
                shortcut = F.conv3d(x, sd[f"{p}.branch1_conv.weight"], stride=(1, s, s))
                if f"{p}.branch1_norm.weight" in sd:
                    shortcut = bn(shortcut, f"{p}.branch1_norm")
            x = F.relu(shortcut + y)
    # create_x3d_head: ProjectedPool, dropout, projection at every position, global average.
    x = F.relu(bn(F.conv3d(x, sd["blocks.5.pool.pre_conv.weight"]), "blocks.5.pool.pre_norm"))
    kernel = (clip_len, math.ceil(crop_size / 32), math.ceil(crop_size / 32))
    x = F.avg_pool3d(x, kernel, stride=1)
    x = F.relu(F.conv3d(x, sd["blocks.5.pool.post_conv.weight"]))
    x = x.permute(0, 2, 3, 4, 1)
    x = F.linear(x, sd["blocks.5.proj.weight"], sd["blocks.5.proj.bias"])
    x = x.permute(0, 4, 1, 2, 3)
    return F.adaptive_avg_pool3d(x, 1).view(x.shape[0], -1)


# ================================================================================================ random weights
#: BatchNorms that end a residual branch (torchvision ``conv2.1``, pytorchvideo ``norm_c``).
RESIDUAL_FINAL_BN = ("conv2.1.weight", "norm_c.weight")


def random_state_dict(layout: Layout, seed: int = 0) -> dict[str, Tensor]:
    """Random tensors of the layout's shapes: He-scaled conv/linear weights, BatchNorm affine in [0.5, 1.5] / N(0,
    0.1^2), running means N(0, 0.1^2), running variances in [0.5, 1.5], so that every BatchNorm matters.

    The BatchNorm ending each residual branch gets a weight in [0.1, 0.3], so that activations stay of order one
    through a deep stack of residual sums and an absolute tolerance on the logits means something."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(int(torch.randint(0, 1000, (1,), generator=gen)))
        elif key.endswith(RESIDUAL_FINAL_BN):
            sd[key] = 0.1 + 0.2 * torch.rand(shape, generator=gen)
        elif key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            sd[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith(("running_mean", ".bias")):
            sd[key] = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            gain = 2.0 if len(shape) > 2 else 1.0
            sd[key] = torch.randn(shape, generator=gen) * math.sqrt(gain / fan_in)
    return sd


# ======================================================================================= structure checks (shared)
def state_signature(model: torch.nn.Module) -> Layout:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def call_counts(model: torch.nn.Module, run, types: tuple[type, ...]) -> dict[str, int]:
    """How often each module of ``types`` (by path) is called during ``run()``."""
    counts = {name: 0 for name, m in model.named_modules() if isinstance(m, types)}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, types):
            def hook(_m, _i, _o, name=name):
                counts[name] += 1
            handles.append(module.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return counts


def record_io(model: torch.nn.Module, run, paths: list[str]) -> dict[str, tuple[tuple, object]]:
    """``path -> (inputs, output)`` of the named modules during ``run()`` (the last call of each)."""
    seen: dict[str, tuple[tuple, object]] = {}
    handles = []
    for path in paths:
        def hook(_m, inputs, output, path=path):
            seen[path] = (inputs, output)
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen
