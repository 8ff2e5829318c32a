"""AttnLRP on transformers' TimeSformer and ViViT against hand computations of the rules it applies (float64).

Each reference is written out here from the rules' formulas (``explain/rules.py``) on the weights of a one-block model,
with no call into the engine: TimeSformer's divided space-time block (its per-frame CLS copies and their average),
the temporal share measured at its residual sums, and ViViT's tubelet embedding under the zB rule.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from motion_relevance.explain.canonize_trace import canonized  # noqa: E402
from motion_relevance.explain.explainers import AttnLRP  # noqa: E402
from motion_relevance.explain.temporal_flow import (  # noqa: E402
    FlowRecorder,
    measures_temporal_share,
    temporal_share,
)
from motion_relevance.models import from_transformers  # noqa: E402

FRAMES, SIZE, PATCH, DIM, HEADS = 3, 16, 8, 16, 2
EPS, POOL_EPS, ZB_EPS = 1e-6, 1e-9, 1e-9
LOWER, UPPER = -2.5, 2.5


def timesformer(layers: int = 1, seed: int = 0, double: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.TimesformerConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, num_labels=3,
                                            hidden_size=DIM, num_hidden_layers=layers, num_attention_heads=HEADS,
                                            intermediate_size=32)
    model = transformers.TimesformerForVideoClassification(config).eval()
    with torch.no_grad():  # weights large enough that every branch carries relevance
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.double() if double else model


def clips(batch: int = 2, dtype: torch.dtype = torch.float64) -> Tensor:
    x = torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x.clamp(-2, 2).to(dtype)


# ------------------------------------------------------------------------------------ the rules, written out


def stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def lin(layer: nn.Linear, x: Tensor) -> Tensor:
    return x @ layer.weight.T + (0 if layer.bias is None else layer.bias)


def lin_back(layer: nn.Linear, x: Tensor, r: Tensor) -> Tensor:
    """Epsilon rule: ``R_x = x * (W^T (R / (z + eps)))``, ``z`` with the bias."""
    return x * ((r / stab(lin(layer, x), EPS)) @ layer.weight)


def ln(norm: nn.LayerNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    std = (x.var(-1, correction=0, keepdim=True) + norm.eps).sqrt()
    return (x - x.mean(-1, keepdim=True)) / std * norm.weight + norm.bias, std


def ln_back(norm: nn.LayerNorm, x: Tensor, r: Tensor) -> Tensor:
    """LayerNorm with std held constant, epsilon rule on the affine rest."""
    y, std = ln(norm, x)
    u = r / stab(y, EPS) * norm.weight
    return x * (u - u.mean(-1, keepdim=True)) / std


def add_back(a: Tensor, b: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    s = r / stab(a + b, EPS)
    return a * s, b * s


def matmul_back(a: Tensor, b: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Uniform rule: half of the epsilon-LRP of ``a @ b`` to each factor."""
    s = r / (2 * (a @ b) + EPS * torch.where(a @ b >= 0, 1.0, -1.0).to(a.dtype))
    return (s @ b.transpose(-1, -2)) * a, (a.transpose(-1, -2) @ s) * b


def attention(att: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """TimeSformer's attention ``(n, L, D)``, keeping what the backward needs."""
    self_att = att.attention
    n, length, d = x.shape
    qkv = lin(self_att.qkv, x).reshape(n, length, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    kt = k.transpose(-2, -1)
    scores = (q @ kt) * self_att.scale
    probs = scores.softmax(-1)
    ctx = (probs @ v).transpose(1, 2).reshape(n, length, d)
    return {"x": x, "q": q, "kt": kt, "v": v, "scores": scores, "probs": probs, "ctx": ctx,
            "out": lin(att.output.dense, ctx)}


def attention_back(att: nn.Module, f: dict[str, Tensor], r: Tensor) -> Tensor:
    n, length, d = f["x"].shape
    r_ctx = lin_back(att.output.dense, f["ctx"], r)
    r_av = r_ctx.reshape(n, length, HEADS, d // HEADS).transpose(1, 2)
    r_probs, r_v = matmul_back(f["probs"], f["v"], r_av)
    s = f["probs"]  # softmax rule on the scaled scores; the constant scale passes relevance unchanged
    r_scores = f["scores"] * (r_probs - s * r_probs.sum(-1, keepdim=True))
    r_q, r_kt = matmul_back(f["q"], f["kt"], r_scores)
    r_qkv = torch.stack((r_q, r_kt.transpose(-2, -1), r_v)).permute(1, 3, 0, 2, 4).reshape(n, length, 3 * d)
    return lin_back(att.attention.qkv, f["x"], r_qkv)


def timesformer_block_back(layer: nn.Module, h: Tensor, r_out: Tensor, equal_cls: bool = False
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """Relevance at the block input ``h (B, 1 + H'W'T, D)`` (patch tokens in (h, w, t) order) from the relevance
    ``r_out`` of its output, and the relevance the two residual sums give the temporal and the spatial branch.
    ``equal_cls``: split the averaged CLS relevance equally among the per-frame copies (not the engine's rule)."""
    b, _, d = h.shape
    t, p = FRAMES, (SIZE // PATCH) ** 2
    side = SIZE // PATCH
    # forward
    hp, cls = h[:, 1:], h[:, :1]
    xt = hp.reshape(b * p, t, d)
    lt = ln(layer.temporal_layernorm, xt)[0]
    ft = attention(layer.temporal_attention, lt)
    rt = ft["out"].reshape(b, p * t, d)
    td = lin(layer.temporal_dense, rt)
    te = hp + td
    cls_rep = cls.repeat(1, t, 1).reshape(b * t, 1, d)
    se = te.reshape(b, side, side, t, d).permute(0, 3, 1, 2, 4).reshape(b * t, p, d)
    sp = torch.cat((cls_rep, se), 1)
    ls = ln(layer.layernorm_before, sp)[0]
    fs = attention(layer.attention, ls)
    os_ = fs["out"]
    cls_s = os_[:, 0].reshape(b, t, d)
    cls_m = cls_s.mean(1, keepdim=True)
    res_s = os_[:, 1:].reshape(b, t, side, side, d).permute(0, 2, 3, 1, 4).reshape(b, p * t, d)
    first, branch = torch.cat((cls, te), 1), torch.cat((cls_m, res_s), 1)
    y = first + branch
    z = ln(layer.layernorm_after, y)[0]
    inner = lin(layer.intermediate.dense, z)
    act = layer.intermediate.intermediate_act_fn(inner)
    mlp = lin(layer.output.dense, act)
    # backward: MLP residual sum, MLP (GELU passes relevance), spatial residual sum
    r_y, r_mlp = add_back(y, mlp, r_out)
    r_act = lin_back(layer.output.dense, act, r_mlp)
    r_z = lin_back(layer.intermediate.dense, z, r_act)
    r_y = r_y + ln_back(layer.layernorm_after, y, r_z)
    r_first, r_branch = add_back(first, branch, r_y)
    # the spatial branch: the averaged CLS (mean over the T copies, LRP-0 with stabiliser 1e-9) and the patches
    r_cls_m, r_res_s = r_branch[:, :1], r_branch[:, 1:]
    r_cls_s = cls_s / t * (r_cls_m / stab(cls_m, POOL_EPS))
    if equal_cls:
        r_cls_s = r_cls_m.expand(b, t, d) / t
    r_os = torch.cat((r_cls_s.reshape(b * t, 1, d),
                      r_res_s.reshape(b, side, side, t, d).permute(0, 3, 1, 2, 4).reshape(b * t, p, d)), 1)
    r_ls = attention_back(layer.attention, fs, r_os)
    r_sp = ln_back(layer.layernorm_before, sp, r_ls)
    # the CLS copies' relevance adds up at the one CLS token (the gradient of repeat), as does the residual's
    r_cls = r_first[:, :1] + r_sp[:, 0].reshape(b, t, d).sum(1, keepdim=True)
    r_te = r_first[:, 1:] + r_sp[:, 1:].reshape(b, t, side, side, d).permute(0, 2, 3, 1, 4).reshape(b, p * t, d)
    # the temporal residual sum and the temporal branch
    r_hp, r_td = add_back(hp, td, r_te)
    r_rt = lin_back(layer.temporal_dense, rt, r_td)
    r_lt = attention_back(layer.temporal_attention, ft, r_rt.reshape(b * p, t, d))
    r_hp = r_hp + ln_back(layer.temporal_layernorm, xt, r_lt).reshape(b, p * t, d)
    return torch.cat((r_cls, r_hp), 1), r_td, r_branch


def capture_block(work: nn.Module, index: int) -> tuple[dict[str, Tensor], list[Any]]:
    """Hooks on block ``index`` of the canonized copy: its input, and the relevance of its input and output."""
    block = work.hf.timesformer.encoder.layer[index]
    got: dict[str, Tensor] = {}

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args[0].requires_grad:
            got["h"] = args[0].detach()
            args[0].register_hook(lambda g: got.__setitem__("r_in", g.detach()))

    def after(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if out[0].requires_grad:
            out[0].register_hook(lambda g: got.__setitem__("r_out", g.detach()))

    return got, [block.register_forward_pre_hook(before), block.register_forward_hook(after)]


def test_timesformer_block_relevance_equals_the_hand_computed_rules() -> None:
    net, x = from_transformers(timesformer()), clips()
    work = canonized(net, probe=x).model
    got, handles = capture_block(work, 0)
    try:
        AttnLRP(lower=LOWER, upper=UPPER)(net, x, torch.tensor([0, 2]))
    finally:
        for handle in handles:
            handle.remove()
    assert {"h", "r_in", "r_out"} <= set(got)
    layer = net.hf.timesformer.encoder.layer[0]
    with torch.no_grad():
        want, _, _ = timesformer_block_back(layer, got["h"], got["r_out"])
    scale = float(want.abs().amax())
    assert scale > 1e-6 and float(got["r_in"][:, 0].abs().amax()) > 1e-3 * scale  # the CLS token gets relevance
    torch.testing.assert_close(got["r_in"], want, rtol=1e-7, atol=1e-9 * scale)
    with torch.no_grad():  # the reference tells the CLS rule apart: an equal split among the copies differs
        equal, _, _ = timesformer_block_back(layer, got["h"], got["r_out"], equal_cls=True)
    assert float((equal - want).abs().amax()) > 1e-3 * scale


def test_timesformer_temporal_share_equals_the_hand_computed_branch_split() -> None:
    net, x = from_transformers(timesformer()), clips()
    explainer = AttnLRP(lower=LOWER, upper=UPPER)
    work = canonized(net, probe=x).model
    got, handles = capture_block(work, 0)
    try:
        share = temporal_share(net, x, torch.tensor([0, 2]), explainer=explainer)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        _, r_td, r_branch = timesformer_block_back(net.hf.timesformer.encoder.layer[0], got["h"], got["r_out"])
    temporal, spatial = r_td.abs().sum((1, 2)), r_branch.abs().sum((1, 2))
    want = (temporal / (temporal + spatial)).float()
    assert bool((want > 0.01).all()) and bool((want < 0.99).all())  # both branches carry relevance
    torch.testing.assert_close(share, want, rtol=1e-5, atol=1e-7)


def test_timesformer_temporal_share_is_a_share_and_vanishes_without_the_temporal_branch() -> None:
    hf = timesformer(layers=2, double=False)
    net, x = from_transformers(hf), clips(3, torch.float32)
    assert measures_temporal_share(net, AttnLRP(lower=LOWER, upper=UPPER))
    share = temporal_share(net, x)
    assert share.shape == (3,) and bool(((share > 0) & (share < 1)).all())
    alone = temporal_share(net, x[1:2])  # another batch: the same value for that clip
    torch.testing.assert_close(alone, share[1:2], rtol=1e-4, atol=1e-6)
    zeroed = timesformer(layers=2, double=False)
    with torch.no_grad():
        for layer in zeroed.timesformer.encoder.layer:
            layer.temporal_attention.output.dense.weight.zero_()
            layer.temporal_attention.output.dense.bias.zero_()
            layer.temporal_dense.bias.zero_()
    assert bool((temporal_share(from_transformers(zeroed), x) == 0).all())


def test_flow_recorder_measures_timesformer_passes_and_refuses_another_add_rule() -> None:
    from motion_relevance.explain.rules import PositiveSplit
    from motion_relevance.models.layers import Add

    net, x = from_transformers(timesformer(double=False)), clips(2, torch.float32)
    explainer = AttnLRP(lower=LOWER, upper=UPPER)
    recorder = FlowRecorder(net, x, explainer)
    with recorder:
        explainer(net, x[:1])
        explainer(net, x)
    first, second = recorder.shares()
    assert first.shape == (1,) and second.shape == (2,)
    torch.testing.assert_close(first, second[:1], rtol=1e-4, atol=1e-6)
    other = AttnLRP(lower=LOWER, upper=UPPER, rules={Add: PositiveSplit()})
    assert not measures_temporal_share(net, other)
    with pytest.raises(ValueError, match="epsilon rule on residual sums"):
        FlowRecorder(net, x, other)


def test_vivit_is_measured_at_its_attention_products_not_at_residual_sums() -> None:
    from motion_relevance.explain.rules import PositiveSplit
    from motion_relevance.models.layers import MatMul

    torch.manual_seed(0)
    config = transformers.VivitConfig(image_size=SIZE, tubelet_size=[1, PATCH, PATCH], num_frames=FRAMES,
                                      num_labels=3, hidden_size=DIM, num_hidden_layers=1,
                                      num_attention_heads=HEADS, intermediate_size=32)
    net = from_transformers(transformers.VivitForVideoClassification(config).eval())
    assert measures_temporal_share(net, AttnLRP(lower=LOWER, upper=UPPER))
    assert not measures_temporal_share(net, AttnLRP(lower=LOWER, upper=UPPER, rules={MatMul: PositiveSplit()}))
    joint = transformers.TimesformerConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, num_labels=3,
                                           hidden_size=DIM, num_hidden_layers=1, num_attention_heads=HEADS,
                                           intermediate_size=32, attention_type="joint_space_time")
    other = from_transformers(transformers.TimesformerForVideoClassification(joint).eval())
    with pytest.raises(ValueError, match=r"temporal_share cannot measure HFVideoClassifier "
                                         r"\(TimesformerForVideoClassification\)"):
        temporal_share(other, clips(1, torch.float32))


# ------------------------------------------------------------------------------------ ViViT's tubelet embedding


def test_vivit_tubelet_embedding_relevance_equals_the_hand_computed_zb_rule() -> None:
    torch.manual_seed(0)
    tubelet = (2, PATCH, PATCH)
    config = transformers.VivitConfig(image_size=SIZE, tubelet_size=list(tubelet), num_frames=4, num_labels=3,
                                      hidden_size=DIM, num_hidden_layers=1, num_attention_heads=HEADS,
                                      intermediate_size=32)
    # float32, as ViViT runs on the data (its float32 softmax also canonizes in a float64 model)
    net = from_transformers(transformers.VivitForVideoClassification(config).eval())
    x = torch.randn(2, 3, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(2)).clamp(-2, 2)
    work = canonized(net, probe=x).model
    conv = work.hf.vivit.embeddings.patch_embeddings.projection
    assert isinstance(conv, nn.Conv3d) and tuple(conv.stride) == tuple(conv.kernel_size) == tubelet
    got: dict[str, Tensor] = {}

    def after(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
        if out.requires_grad:
            out.register_hook(lambda g: got.__setitem__("r_tokens", g.detach()))

    handle = conv.register_forward_hook(after)
    try:
        relevance = AttnLRP(lower=LOWER, upper=UPPER)(net, x, torch.tensor([1, 0]))
    finally:
        handle.remove()
    r_tokens, x = got["r_tokens"].double(), x.double()  # (B, D, T', H', W')
    # hand zB on non-overlapping tubelets: patches (B, T', H', W', C * kt * kh * kw), weights (D, C * kt * kh * kw)
    b, c, t, hh, ww = x.shape
    kt, kh, kw = tubelet
    patches = (x.reshape(b, c, t // kt, kt, hh // kh, kh, ww // kw, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
               .reshape(b, t // kt, hh // kh, ww // kw, -1))
    w = conv.weight.detach().double().reshape(DIM, -1)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    z = patches @ w.T - LOWER * wp.sum(1) - UPPER * wn.sum(1)  # (B, T', H', W', D), bias left out
    s = r_tokens.permute(0, 2, 3, 4, 1) / stab(z, ZB_EPS)
    r_patch = patches * (s @ w) - LOWER * (s @ wp) - UPPER * (s @ wn)
    want = (r_patch.reshape(b, t // kt, hh // kh, ww // kw, c, kt, kh, kw).permute(0, 4, 1, 5, 2, 6, 3, 7)
            .reshape(b, c, t, hh, ww))
    scale = float(want.abs().amax())
    assert scale > 0
    torch.testing.assert_close(relevance.double(), want, rtol=1e-4, atol=1e-5 * scale)
    # zB conserves each token's relevance over its tubelet's pixels (up to the stabiliser)
    torch.testing.assert_close(want.sum((1, 2, 3, 4)), r_tokens.sum((1, 2, 3, 4)), rtol=1e-6, atol=1e-12)


class _TwoPlaces(nn.Module):
    """One parameter-free module called at two places on tensors of different shapes, its output reshaped by its
    own size (as TimeSformer's ``drop_path`` after its time and its space attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Identity()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        a = self.drop(self.proj(x))                          # (B, 6, 4)
        b = self.drop(self.proj(x).reshape(-1, 2, 4))        # (B * 3, 2, 4): another shape
        b = b.reshape(b.shape[0] // 3, b.shape[1] * 3, 4)    # sizes read from the second call's output
        return a.mean(1) + b.mean(1)  # token means: the rule needs each input's rank


def test_canonization_traces_each_call_of_a_module_called_twice_with_its_own_shapes() -> None:
    model = _TwoPlaces().eval()
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    record = canonized(model, x)
    assert not record.unsupported and not record.notes
    with torch.no_grad():
        torch.testing.assert_close(record.model(x), model(x))


def test_a_residual_branch_map_naming_no_add_module_and_a_non_module_type_are_refused() -> None:
    from motion_relevance.explain import temporal_flow
    from motion_relevance.models.hf import HFVideoClassifier

    net, x = from_transformers(timesformer(double=False)), clips(1, torch.float32)
    saved = temporal_flow.BRANCH_ADDS[HFVideoClassifier]
    try:
        temporal_flow.register_branch_adds(HFVideoClassifier, lambda m, c: {"hf.classifier": True}, saved[0])
        with pytest.raises(ValueError, match=r"names 'hf.classifier', which is not a models.layers.Add module"):
            temporal_share(net, x)
        temporal_flow.register_branch_adds(HFVideoClassifier, lambda m, c: {}, saved[0])
        with pytest.raises(ValueError, match=r"names 'nothing'"):
            temporal_share(net, x)
    finally:
        temporal_flow.BRANCH_ADDS[HFVideoClassifier] = saved
    with pytest.raises(ValueError, match=r"TimesformerForVideoClassification takes clips of 3 frames"):
        temporal_share(net, torch.zeros(1, 3, FRAMES + 1, SIZE, SIZE))
    with pytest.raises(TypeError, match="register_branch_adds takes an nn.Module subclass"):
        temporal_flow.register_branch_adds("HFVideoClassifier", lambda m, c: {})  # type: ignore[arg-type]
