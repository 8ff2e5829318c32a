"""The propagation engine (DTD, AttnLRP): hand-written references of the rules, Captum's LRP as the reference on
C3D, conservation on every architecture, hygiene, bad inputs, Grad-CAM's frame alignment, multi-input models."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LRP
from torch import Tensor, nn

import motion_relevance.explain.propagation as propagation
from motion_relevance.explain import DeepTaylor, GradCAM, GuidedBackprop, GuidedGradCAM
from motion_relevance.explain import base as explainer_base  # eval_copy: where Explainer.__call__ copies
from motion_relevance.explain._copy import eval_copy, hook_tables
from motion_relevance.explain.explainers import AttnLRP, CaptumExplainer, Explainer, to_input_frames
from motion_relevance.explain.propagation import Composite, PropagationError, Rule
from motion_relevance.explain.rules import DTD, ZPlus
from motion_relevance.models import C3D
from motion_relevance.models.layers import Add

from .captum_lrp import assign_dtd_rules
from .tiny_models import (
    HIGH,
    LOW,
    ResidualNet,
    SENet,
    TinyAttention,
    TwoPathwayNet,
    calibrate_batchnorm,
    clips,
    tiny_chain,
    zero_biases,
)


def logits_of(model: nn.Module, x: Any) -> Tensor:
    with torch.no_grad():
        return eval_copy(model)(x)


def target_logit(model: nn.Module, x: Any) -> Tensor:
    out = logits_of(model, x)
    return out.gather(1, out.argmax(1, keepdim=True)).squeeze(1)


def total(relevance: Tensor | tuple[Tensor, ...]) -> Tensor:
    parts = relevance if isinstance(relevance, tuple) else (relevance,)
    return sum(r.sum(dim=(1, 2, 3, 4)) for r in parts)  # type: ignore[return-value]


def hook_counts(model: nn.Module) -> int:
    return sum(len(table) for m in model.modules() for table in hook_tables(m))


def two_clips(batch: int = 2) -> list[Tensor]:
    return [clips(batch, shape=(3, 2, 8, 8)), clips(batch, seed=2, shape=(3, 8, 8, 8))]


# ------------------------------------------------------------------------------ hand-written references


def dense(fn: Any, in_shape: tuple[int, ...]) -> Tensor:
    """The matrix (out features x in features) of a linear map, from its images of the basis vectors."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    with torch.no_grad():
        return fn(basis).reshape(n, -1).T.contiguous()


def z_plus(m: Tensor, a: Tensor, r: Tensor) -> Tensor:
    """z+ from the rule text: R_i = sum_j a_i m+_ji / sum_i a_i m+_ji R_j (inputs a >= 0)."""
    contributions = a[None, :] * m.clamp(min=0)  # (out, in)
    den = contributions.sum(1, keepdim=True)
    return (contributions / torch.where(den > 0, den, torch.ones_like(den)) * r[:, None]).sum(0)


def z_box(m: Tensor, x: Tensor, r: Tensor, low: float, high: float) -> Tensor:
    """zB from the rule text: R_i = sum_j (x_i m_ji - l m+_ji - h m-_ji) / z_j R_j."""
    contributions = x[None, :] * m - low * m.clamp(min=0) - high * m.clamp(max=0)
    return (contributions / contributions.sum(1, keepdim=True) * r[:, None]).sum(0)


def test_residual_and_batchnorm_rules_match_hand_written_reference() -> None:
    """stem (zB) -> conv1-BN-ReLU-conv2-BN + identity -> Add (split by positive parts) -> ReLU -> mean -> fc (z+);
    every layer as a dense matrix, BatchNorm folded by its formula, each rule written from its text."""
    model = ResidualNet().double()
    x_all = clips(2, shape=(2, 2, 4, 4))
    relevance = DeepTaylor(lower=LOW, upper=HIGH)(model, x_all)
    shape_in, shape_mid = (2, 2, 4, 4), (3, 2, 4, 4)

    def folded(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> tuple[Tensor, Tensor]:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return conv.weight * scale.view(-1, 1, 1, 1, 1), (0 - bn.running_mean) * scale + bn.bias

    w1, b1 = folded(model.conv1, model.bn1)
    w2, b2 = folded(model.conv2, model.bn2)
    m0 = dense(lambda t: F.conv3d(t, model.stem.weight, padding=1), shape_in)
    m1 = dense(lambda t: F.conv3d(t, w1, padding=1), shape_mid)
    m2 = dense(lambda t: F.conv3d(t, w2, padding=1), shape_mid)
    per_voxel = 2 * 4 * 4
    b1, b2 = b1.repeat_interleave(per_voxel), b2.repeat_interleave(per_voxel)
    for i in range(2):
        x = x_all[i].flatten()
        a0 = (m0 @ x).clamp(min=0)
        r1 = (m1 @ a0 + b1).clamp(min=0)
        a = m2 @ r1 + b2
        y = (a + a0).clamp(min=0)
        pooled = y.view(3, -1).mean(1)
        out = model.fc.weight @ pooled + model.fc.bias
        t = int(out.argmax())
        w_t = model.fc.weight[t]
        r_pooled = pooled * w_t.clamp(min=0) / (pooled * w_t.clamp(min=0)).sum() * out[t]
        r_y = (y.view(3, -1) / y.view(3, -1).sum(1, keepdim=True) * r_pooled[:, None]).flatten()
        den = a.clamp(min=0) + a0
        r_a = torch.where(den > 0, a.clamp(min=0) / den, torch.zeros_like(den)) * r_y
        r_skip = torch.where(den > 0, a0 / den, torch.zeros_like(den)) * r_y
        r_r1 = z_plus(m2, r1, r_a)
        r_a0 = z_plus(m1, a0, r_r1) + r_skip
        expected = z_box(m0, x, r_a0, LOW, HIGH).view(shape_in)
        torch.testing.assert_close(relevance[i], expected, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(expected.sum(), out[t], rtol=1e-9, atol=0)  # the reference itself conserves


@torch.no_grad()
def test_signed_z_plus_explains_negative_units_by_negative_contributions() -> None:
    """ZPlus(signed=True): a unit negative in the forward pass spreads its relevance over (x w)- products."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 4).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    rule = ZPlus(signed=True)
    out, saved = rule.forward(layer, layer.forward, (x,))
    r = torch.rand(3, 4, dtype=torch.float64)
    (got,) = rule.backward(layer, saved, r)
    z = x[:, None, :] * layer.weight[None]  # (B, out, in) products
    sign = torch.where(out >= 0, 1.0, -1.0).to(z.dtype)[:, :, None]
    kept = torch.where(z * sign > 0, z, torch.zeros_like(z))
    expected = (kept / kept.sum(2, keepdim=True) * r[:, :, None]).sum(1)
    torch.testing.assert_close(got, expected)
    assert (got >= 0).all()


def _softmax_ref(x: Tensor, r: Tensor) -> Tensor:
    s = torch.softmax(x, -1)
    return x * (r - s * r.sum(-1, keepdim=True))


def _stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _layer_norm_ref(x: Tensor, r: Tensor, ln: nn.LayerNorm, eps: float) -> Tensor:
    """std held constant: y_i = g_i (x_i - mean) / std + b_i, so J_ij = g_i (d_ij - 1/D) / std; R_j = x_j sum_i J_ij
    R_i / (y_i + eps), written with an explicit Jacobian matrix."""
    d = x.shape[-1]
    std = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    y = ln.weight * (x - x.mean(-1, keepdim=True)) / std + ln.bias
    jac = ln.weight[None, :, None] * (torch.eye(d, dtype=x.dtype) - 1.0 / d)[None] / std.reshape(-1, 1, 1)
    v = (r / _stab(y, eps)).reshape(-1, d)
    return x * torch.einsum("nij,ni->nj", jac, v).reshape(x.shape)


def _uniform_ref(a: Tensor, b: Tensor, r: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """R_a[ik] = sum_j a_ik b_kj / (2 y_ij + eps) R_ij, R_b[kj] = sum_i a_ik b_kj / (2 y_ij + eps) R_ij."""
    y = torch.einsum("...ik,...kj->...ij", a, b)
    s = r / _stab(2 * y, eps)
    return torch.einsum("...ik,...kj,...ij->...ik", a, b, s), torch.einsum("...ik,...kj,...ij->...kj", a, b, s)


@torch.no_grad()  # as inside the engine: rules run without autograd
def test_attnlrp_rules_match_hand_written_formulas() -> None:
    """Each AttnLRP rule through the engine's Rule objects against its formula (einsum / explicit Jacobians)."""
    from motion_relevance.explain.rules import Epsilon, LayerNormRule, SoftmaxRule, Uniform

    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    r = torch.randn(2, 3, 5, dtype=torch.float64)
    soft = nn.Softmax(dim=-1)
    out, saved = SoftmaxRule().forward(soft, soft.forward, (x,))
    torch.testing.assert_close(SoftmaxRule().backward(soft, saved, r)[0], _softmax_ref(x, r))

    ln = nn.LayerNorm(5).double()
    nn.init.uniform_(ln.weight, 0.5, 1.5)
    nn.init.uniform_(ln.bias, -0.2, 0.2)
    out, saved = LayerNormRule(1e-6).forward(ln, ln.forward, (x,))
    torch.testing.assert_close(LayerNormRule(1e-6).backward(ln, saved, r)[0], _layer_norm_ref(x, r, ln, 1e-6))

    a, b = torch.randn(2, 2, 3, 4, dtype=torch.float64), torch.randn(2, 2, 4, 3, dtype=torch.float64)
    rr = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    mm = nn.Module()
    out, saved = Uniform(1e-6).forward(mm, lambda p, q: p @ q, (a, b))
    got_a, got_b = Uniform(1e-6).backward(mm, saved, rr)
    ref_a, ref_b = _uniform_ref(a, b, rr, 1e-6)
    torch.testing.assert_close(got_a, ref_a)
    torch.testing.assert_close(got_b, ref_b)
    torch.testing.assert_close(got_a.sum() + got_b.sum(), rr.sum(), rtol=1e-4, atol=1e-6)  # half to each factor

    lin = nn.Linear(5, 4).double()
    out, saved = Epsilon(1e-6).forward(lin, lin.forward, (x,))
    r4 = torch.randn(2, 3, 4, dtype=torch.float64)
    expected = x * ((r4 / _stab(out, 1e-6)) @ lin.weight)  # R_i = x_i sum_j w_ji R_j / (z_j + eps)
    torch.testing.assert_close(Epsilon(1e-6).backward(lin, saved, r4)[0], expected)


def _attention_reference(model: TinyAttention, x: Tensor, eps: float = 1e-6) -> Tensor:
    """AttnLRP on TinyAttention written out: the forward pass by hand, then each rule's formula backwards."""
    bsz, width, heads, dh = x.shape[0], model.head.in_features, model.heads, model.head_dim
    patches = x.reshape(bsz, 3, 2, 2, 2, 4, 2, 4).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(bsz, 8, 96)
    we = model.embed.weight.reshape(width, 96)
    tokens = patches @ we.T + model.embed.bias

    def ln(t: Tensor, m: nn.LayerNorm) -> Tensor:
        std = torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + m.eps)
        return m.weight * (t - t.mean(-1, keepdim=True)) / std + m.bias

    def split(t: Tensor) -> Tensor:
        return t.view(bsz, 8, heads, dh).transpose(1, 2)

    def merge(t: Tensor) -> Tensor:
        return t.transpose(1, 2).reshape(bsz, 8, width)

    h = ln(tokens, model.norm1)
    q, k, v = model.query(h), model.key(h), model.value(h)
    qs, ks, vs = split(q) * dh**-0.5, split(k), split(v)
    scores = qs @ ks.transpose(-2, -1)
    attn = torch.softmax(scores, -1)
    ctx = attn @ vs
    o = model.proj(merge(ctx))
    t1 = o + tokens
    u = ln(t1, model.norm2)
    f1 = model.fc1(u)
    g = F.gelu(f1)
    f2 = model.fc2(g)
    t2 = f2 + t1
    pooled = t2.mean(1)
    z = ln(pooled, model.norm)
    logits = model.head(z)
    target = logits.argmax(1)
    r_logits = torch.zeros_like(logits).scatter(1, target[:, None], logits.gather(1, target[:, None]))

    def eps_linear(inp: Tensor, out: Tensor, w: Tensor, rel: Tensor) -> Tensor:
        return inp * ((rel / _stab(out, eps)) @ w)

    r_z = eps_linear(z, logits, model.head.weight, r_logits)
    r_pooled = _layer_norm_ref(pooled, r_z, model.norm, eps)
    r_t2 = t2 / _stab(t2.sum(1, keepdim=True), 1e-9 * 8) * r_pooled[:, None]  # proportional mean
    r_f2, r_t1 = f2 * r_t2 / _stab(t2, eps), t1 * r_t2 / _stab(t2, eps)
    r_f1 = eps_linear(g, f2, model.fc2.weight, r_f2)  # GELU: identity
    r_u = eps_linear(u, f1, model.fc1.weight, r_f1)
    r_t1 = r_t1 + _layer_norm_ref(t1, r_u, model.norm2, eps)
    r_o, r_tokens = o * r_t1 / _stab(t1, eps), tokens * r_t1 / _stab(t1, eps)
    r_ctx = split(eps_linear(merge(ctx), o, model.proj.weight, r_o))
    r_attn, r_vs = _uniform_ref(attn, vs, r_ctx, eps)
    r_scores = _softmax_ref(scores, r_attn)
    r_qs, r_kt = _uniform_ref(qs, ks.transpose(-2, -1), r_scores, eps)
    r_q, r_k, r_v = merge(r_qs), merge(r_kt.transpose(-2, -1)), merge(r_vs)  # the scale: identity
    r_h = (eps_linear(h, q, model.query.weight, r_q) + eps_linear(h, k, model.key.weight, r_k)
           + eps_linear(h, v, model.value.weight, r_v))
    r_tokens = r_tokens + _layer_norm_ref(tokens, r_h, model.norm1, eps)
    zb = patches @ we.T - LOW * we.clamp(min=0).sum(1) - HIGH * we.clamp(max=0).sum(1)
    s = r_tokens / _stab(zb, 1e-9)
    r_patches = patches * (s @ we) - LOW * (s @ we.clamp(min=0)) - HIGH * (s @ we.clamp(max=0))
    return r_patches.reshape(bsz, 2, 2, 2, 3, 2, 4, 4).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(x.shape)


def test_attnlrp_one_block_matches_hand_written_chain() -> None:
    model = TinyAttention().double()
    x = clips(2)
    with torch.no_grad():
        expected = _attention_reference(model.eval(), x)
    torch.testing.assert_close(AttnLRP(lower=LOW, upper=HIGH)(model, x), expected, rtol=1e-6, atol=1e-10)


def test_attnlrp_conservation_error_is_the_softmax_rule() -> None:
    """Biases zeroed, AttnLRP conserves at every rule but the softmax's (by design, the bias term of its Taylor
    expansion is dropped): the input relevance minus the logit is the softmax layer's defect (up to the
    stabilisers), measured here."""
    from motion_relevance.explain.rules import SoftmaxRule

    model = zero_biases(TinyAttention(seed=3).double())
    x = clips(4, seed=5)
    defects: list[Tensor] = []
    original = SoftmaxRule.backward

    def recording(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        out = original(self, module, saved, relevance)
        defects.append(out[0].sum(dim=(1, 2, 3)) - relevance.sum(dim=(1, 2, 3)))
        return out

    SoftmaxRule.backward = recording  # type: ignore[method-assign]
    try:
        relevance = AttnLRP(lower=LOW, upper=HIGH)(model, x)
    finally:
        SoftmaxRule.backward = original  # type: ignore[method-assign]
    logit = target_logit(model, x)
    error = total(relevance) - logit
    assert ((error - defects[0]).abs() <= 1e-3 * logit.abs()).all()  # the rest: the 1e-6 stabilisers
    relative = float((error.abs() / logit.abs()).mean())
    assert 0 < relative < 1.0  # measured: 0.1-0.3 on random weights (docs/method.md)


# ----------------------------------------------------------------------------- Captum's LRP as reference


def _captum_dtd(model: nn.Module, x: Tensor, target: Tensor, pooling: str) -> Tensor:
    ref = eval_copy(model)
    assign_dtd_rules(ref, "conv1", torch.tensor([LOW]), torch.tensor([HIGH]), pooling)
    return LRP(ref).attribute(x.clone().requires_grad_(True), target=target).detach()


@pytest.mark.parametrize("pooling", ["winner", "proportional"])
def test_engine_equals_captum_lrp_on_a_chain_with_biases(pooling: str) -> None:
    model, x = tiny_chain(bias=True), clips(3)
    target = logits_of(model, x).argmax(1)
    ours = DeepTaylor(lower=LOW, upper=HIGH, pooling=pooling)(model, x)
    torch.testing.assert_close(ours, _captum_dtd(model, x, target, pooling), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("pooling", ["winner", "proportional"])
def test_engine_equals_captum_lrp_on_c3d(pooling: str) -> None:
    torch.manual_seed(0)
    model = C3D(num_classes=6, width=0.125, crop_size=32)
    for m in model.modules():  # real (non-zero) biases
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            nn.init.uniform_(m.bias, -0.05, 0.05)
    x = torch.rand(2, 3, 16, 32, 32) * 2 - 1
    target = logits_of(model, x).argmax(1)
    ours = DeepTaylor(lower=LOW, upper=HIGH, pooling=pooling)(model, x)
    reference = _captum_dtd(model, x, target, pooling)
    torch.testing.assert_close(ours, reference, rtol=2e-4, atol=2e-5 * float(reference.abs().max()))


# ---------------------------------------------------------------------------------------- conservation

TINY = {
    "chain": (lambda: tiny_chain(bias=True), lambda: clips(2)),
    "residual": (lambda: ResidualNet().double(), lambda: clips(2, shape=(2, 2, 4, 4))),
    "se": (lambda: SENet().double(), lambda: clips(2)),
    "two_pathway": (lambda: TwoPathwayNet().double(), two_clips),
}


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("biases", ["zero", "real"])
def test_dtd_conserves_and_is_non_negative_on_tiny_architectures(name: str, biases: str) -> None:
    """With biases zeroed every DTD rule conserves exactly; with real biases only units driven by their bias alone
    (z+ = 0) lose relevance, none here. z+ / zB relevance is non-negative for positive logits."""
    make, inputs = TINY[name]
    model, x = make(), inputs()
    if biases == "zero":
        zero_biases(model)
    relevance = DeepTaylor(lower=LOW, upper=HIGH)(model, x)
    logit = target_logit(model, x)
    assert (logit > 0).all()
    torch.testing.assert_close(total(relevance), logit, rtol=1e-6, atol=0)
    parts = relevance if isinstance(relevance, tuple) else (relevance,)
    assert all((r >= -1e-12).all() for r in parts)


def _real_models() -> dict[str, tuple[Any, Any]]:
    from motion_relevance.models import mc3_18, r2plus1d_18, r3d_18, slowfast_r50, x3d_xs
    from motion_relevance.models.slowfast import pack_pathways

    def clip(t: int, side: int) -> Tensor:
        return torch.rand(1, 3, t, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1

    return {
        "r3d_18": (lambda: r3d_18(num_classes=5, width=0.25), lambda: clip(8, 32)),
        "mc3_18": (lambda: mc3_18(num_classes=5, width=0.25), lambda: clip(8, 32)),
        "r2plus1d_18": (lambda: r2plus1d_18(num_classes=5, width=0.25), lambda: clip(8, 32)),
        "slowfast_r50": (lambda: slowfast_r50(num_classes=5, width=0.25, head_pool="adaptive"),
                         lambda: pack_pathways(clip(16, 32), 4)),
        "x3d_xs": (lambda: x3d_xs(num_classes=5, head_pool="adaptive"), lambda: clip(4, 32)),
    }


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "slowfast_r50", "x3d_xs"])
def test_dtd_conserves_on_the_real_architectures_with_biases_zeroed(name: str) -> None:
    """Published layouts at small width/inputs, BatchNorm with trained-like statistics, biases zeroed (conv, BN
    shifts and means, linear): the input relevance sums to the positive target logit within 1 %, >= 0."""
    make, inputs = _real_models()[name]
    torch.manual_seed(0)
    model, x = make(), inputs()
    calibrate_batchnorm(model, x)
    zero_biases(model)
    logit = logits_of(model, x)[:, 0]
    relevance = DeepTaylor(lower=LOW, upper=HIGH)(model, x, target=0)
    if float(logit) <= 0:  # explain a class with a positive logit
        target = int(logits_of(model, x).argmax(1))
        logit = logits_of(model, x)[:, target]
        relevance = DeepTaylor(lower=LOW, upper=HIGH)(model, x, target=target)
    assert float(logit) > 0
    torch.testing.assert_close(total(relevance), logit, rtol=1e-2, atol=0)
    parts = relevance if isinstance(relevance, tuple) else (relevance,)
    assert all((r >= -1e-6 * float(logit)).all() for r in parts)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "slowfast_r50", "x3d_xs"])
def test_dtd_conservation_error_with_real_biases_is_measured(name: str) -> None:
    """Real biases (calibrated BatchNorm folded into the convs): z+ leaves biases out, so units driven by their bias
    alone (z+ = 0, output > 0) lose their relevance — never create any. The relative loss is printed for
    docs/method.md; it stays below 1 % on the torchvision ResNets (few bias-driven units at these widths; the
    narrow fast pathway of SlowFast and X3D's depthwise convs have many)."""
    make, inputs = _real_models()[name]
    torch.manual_seed(0)
    model, x = make(), inputs()
    calibrate_batchnorm(model, x)
    target = int(logits_of(model, x).argmax(1))
    logit = float(logits_of(model, x)[0, target])
    relevance = DeepTaylor(lower=LOW, upper=HIGH)(model, x, target=target)
    loss = (logit - float(total(relevance))) / logit
    print(f"{name}: relative relevance loss with real biases {loss:.2e} (logit {logit:.4g})")
    assert logit > 0 and -1e-5 <= loss < 1.0
    if name in ("r3d_18", "mc3_18", "r2plus1d_18"):
        assert loss < 1e-2


def test_attnlrp_runs_on_videomae_and_gelu_passes() -> None:
    from motion_relevance.models import VideoMAE

    torch.manual_seed(0)
    model = VideoMAE(num_classes=4, image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16,
                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, layer_norm_eps=1e-6,
                     qkv_bias=True)
    x = clips(2, shape=(3, 4, 16, 16), dtype=torch.float32)
    relevance = AttnLRP(lower=LOW, upper=HIGH)(model, x)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all() and relevance.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- gates


class _FrozenGateSENet(SENet):
    """SENet with the gate computed beforehand and multiplied in as a constant (``x * g`` in forward)."""

    gate: Tensor

    def forward(self, x: Tensor) -> Tensor:
        a = self.stem_relu(self.stem_bn(self.stem(x)))
        h = self.bn_b(self.conv_b(self.relu_a(self.bn_a(self.conv_a(a)))))
        b = self.act_b(h * self.gate)
        y = self.relu(self.add(self.bn_c(self.conv_c(b)), a))
        return self.fc(self.flatten(self.pool(y)))


def test_gate_is_held_constant_and_the_se_branch_gets_no_relevance() -> None:
    model, x = SENet().double(), clips(2)
    gates: list[Tensor] = []
    handle = model.se.sigmoid.register_forward_hook(lambda m, i, o: gates.append(o.detach()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    frozen = _FrozenGateSENet().double()
    frozen.load_state_dict(model.state_dict())
    frozen.gate = gates[0]
    target = logits_of(model, x).argmax(1)
    torch.testing.assert_close(DeepTaylor(LOW, HIGH)(model, x, target), DeepTaylor(LOW, HIGH)(frozen, x, target))
    reached: list[str] = []
    original = ZPlus.backward

    def spy(self, module, saved, relevance):  # type: ignore[no-untyped-def]
        reached.append(type(module).__name__ + str(tuple(module.weight.shape)))
        return original(self, module, saved, relevance)

    ZPlus.backward = spy  # type: ignore[method-assign]
    try:
        DeepTaylor(LOW, HIGH)(model, x)
    finally:
        ZPlus.backward = original  # type: ignore[method-assign]
    assert "Conv3d(2, 6, 1, 1, 1)" not in reached and "Conv3d(6, 2, 1, 1, 1)" not in reached  # SE convs


def test_scaling_by_a_constant_in_forward_passes_relevance_unchanged() -> None:
    """``2 * x`` written in forward() takes the identity rule: the same relevance as folding the 2 into the next
    layer's weights."""

    class Scaled(nn.Module):
        def __init__(self, net: nn.Sequential) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            h = self.net[:7](x)
            return self.net[7:](h * 2.0)

    base = tiny_chain(bias=False)
    scaled = Scaled(tiny_chain(bias=False))
    with torch.no_grad():
        base.fc1.weight.mul_(2.0)
    x = clips(2)
    target = logits_of(base, x).argmax(1)
    torch.testing.assert_close(DeepTaylor(LOW, HIGH)(scaled, x, target), DeepTaylor(LOW, HIGH)(base, x, target))


# ------------------------------------------------------------------------------------- one forward, hygiene


class _Counting(nn.Module):
    calls = 0  # class attribute: shared with the explainer's copies

    def __init__(self) -> None:
        super().__init__()
        self.net = ResidualNet().double()

    def forward(self, x: Tensor) -> Tensor:
        type(self).calls += 1
        return self.net(x)


def test_one_forward_and_one_backward_pass() -> None:
    model, x = _Counting(), clips(2, shape=(2, 2, 4, 4))
    explainer = DeepTaylor(LOW, HIGH)
    explainer(model, x)  # first call: the structure trace runs once and is cached
    before = _Counting.calls
    backward_calls: dict[str, int] = {}
    original = propagation._RuleFunction.backward

    def counting(ctx, relevance):  # type: ignore[no-untyped-def]
        backward_calls[ctx.module_name] = backward_calls.get(ctx.module_name, 0) + 1
        return original(ctx, relevance)

    propagation._RuleFunction.backward = staticmethod(counting)  # type: ignore[method-assign]
    try:
        explainer(model, x)
    finally:
        propagation._RuleFunction.backward = staticmethod(original)  # type: ignore[method-assign]
    assert _Counting.calls - before == 1  # the predicted class comes from that one forward
    wrapped = {"net.stem", "net.stem_relu", "net.conv1", "net.relu1", "net.conv2", "net.add", "net.relu", "net.pool",
               "net.fc"}  # BatchNorms are folded, Flatten routes relevance as it is
    assert backward_calls == dict.fromkeys(wrapped, 1)  # every rule ran once: one backward pass


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "ptrs": {k: v.data_ptr() for k, v in model.state_dict().items()},
        "flags": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "params": [id(p) for p in model.parameters()],
    }


def _assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())
    assert before["ptrs"] == after["ptrs"] and before["params"] == after["params"]
    assert before["flags"] == after["flags"] and before["training"] == after["training"]
    assert all(p.grad is None for p in model.parameters())
    assert hook_counts(model) == 0
    assert not any("forward" in vars(m) or hasattr(m, "rule") for m in model.modules())


@pytest.mark.parametrize("method", ["dtd", "attnlrp"])
def test_caller_model_untouched_after_success_and_after_an_error(method: str) -> None:
    if method == "dtd":
        model, x, explainer = ResidualNet().double(), clips(2, shape=(2, 2, 4, 4)), DeepTaylor(LOW, HIGH)
    else:
        model, x, explainer = TinyAttention().double(), clips(2), AttnLRP(LOW, HIGH)
    model.train()
    next(model.parameters()).requires_grad_(False)
    before = _snapshot(model)
    explainer(model, x)
    _assert_untouched(model, before)

    class Boom(Rule):
        name = "boom"

        def forward(self, module, forward, args):  # type: ignore[no-untyped-def]
            return forward(*args), ()

        def backward(self, module, saved, relevance):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    failing = type(explainer)(LOW, HIGH, rules={nn.ReLU if method == "dtd" else nn.GELU: Boom()})
    with pytest.raises(RuntimeError, match="boom"):
        failing(model, x)
    _assert_untouched(model, before)


def test_attach_restores_a_model_it_rewrote() -> None:
    """The low-level context manager undoes BatchNorm folding and the rules on the model it was given."""
    from motion_relevance.explain.validation import analyse_model

    model = ResidualNet().double().eval()
    x = clips(1, shape=(2, 2, 4, 4))
    st = analyse_model(model, x)
    assert st.bn_folds == {"bn1": "conv1", "bn2": "conv2"}
    from motion_relevance.explain.canonize import folded_parameters, parameters

    weight = model.conv1.weight
    expected = folded_parameters(model.conv1, model.bn1)
    with pytest.raises(ZeroDivisionError), propagation.attach(model, DTD, st.leaf_order, st.bn_folds):
        assert model.conv1.weight is weight and model.conv1.bias is None  # no copy of the weights is held
        for got, want in zip(parameters(model.conv1), expected):
            torch.testing.assert_close(got, want)  # w' = w g / sqrt(v + eps), b' = -m g / sqrt(v + eps) + beta
        with torch.no_grad():  # the rules run on the model: folding keeps its function
            torch.testing.assert_close(model(x.clone().requires_grad_(True)), logits_of(ResidualNet().double(), x))
        raise ZeroDivisionError
    assert model.conv1.weight is weight and model.conv1.bias is None
    assert parameters(model.conv1)[0].data_ptr() == weight.data_ptr()  # the fold is gone
    assert not any("forward" in vars(m) for m in model.modules())


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture
def no_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if an explainer gets as far as building its working copy."""

    def forbidden(model: nn.Module) -> nn.Module:
        raise AssertionError("validation must fail before the model is copied")

    monkeypatch.setattr(explainer_base, "eval_copy", forbidden)


def _with(module_name: str, module: nn.Module) -> nn.Sequential:
    net = tiny_chain()
    setattr(net, module_name, module)
    return net


class _ConvWithOwnForward(nn.Conv3d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2


class _PreActivation(nn.Module):
    """BN -> ReLU -> conv, the pre-activation order: the BatchNorm has no conv before it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv3d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.relu0 = nn.ReLU()
        self.relu = nn.ReLU()
        self.conv = nn.Conv3d(4, 4, 3, padding=1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 8 * 8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.relu0(self.conv0(x)))
        return self.fc(self.flatten(self.relu(self.conv(h))))


class _SharedOutput(nn.Module):
    """conv -> BN, but the conv's output is also used by a second branch: folding would change that branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.add = Add()
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 8 * 8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return self.fc(self.flatten(self.relu(self.add(self.bn(h), h))))


class _PoolWithIndices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool3d(2, return_indices=True)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 2 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        pooled, _ = self.pool(self.relu(self.conv(x)))
        return self.fc(self.flatten(pooled))


BAD = [
    (lambda: _with("relu2", nn.Tanh()), TypeError, r"DTD has no rule for module 'relu2' \(Tanh\); supported module "
                                                   r"types: .*Conv3d \(z\+"),
    (lambda: _with("conv2", _ConvWithOwnForward(4, 6, 3, padding=1)), TypeError, r"'conv2' \(_ConvWithOwnForward\)"),
    (lambda: _PreActivation(), ValueError, r"cannot fold BatchNorm3d 'bn'.*comes from 'relu0' \(ReLU\)"),
    (lambda: _SharedOutput(), ValueError, r"cannot fold BatchNorm3d 'bn'.*'conv' is also used elsewhere"),
    (lambda: _PoolWithIndices(), ValueError, r"'pool' \(MaxPool3d\): max-pooling with return_indices=True"),
    (lambda: _with("conv2", nn.Conv3d(4, 6, 3, padding=1, padding_mode="reflect")), ValueError, "padding_mode"),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD)
def test_unsupported_modules_are_refused_before_any_work(make, error, message, no_copy) -> None:  # type: ignore[no-untyped-def]
    model = make().double()
    with pytest.raises(error, match=message):
        DeepTaylor(LOW, HIGH)(model, clips(2))
    assert hook_counts(model) == 0


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
def test_bad_rules_for_attention_modules_are_refused(no_copy) -> None:  # type: ignore[no-untyped-def]
    model = TinyAttention().double()
    model.softmax = nn.Softmax(dim=None)
    with pytest.raises(ValueError, match="'softmax'.*explicit dim"):
        AttnLRP(LOW, HIGH)(model, clips(2))


class _FunctionalResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv3d(3, 3, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * 4 * 8 * 8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.conv1(x))
        return self.fc(self.flatten(self.relu2(self.conv2(h) + h)))


class _FunctionalTanh(_FunctionalResidual):
    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(torch.tanh(self.conv2(self.relu1(self.conv1(x))))))


@pytest.mark.parametrize(("make", "message"), [
    (_FunctionalResidual, r"sum of two input-dependent tensors written in a forward\(\) method \(its result feeds "
                          r"module 'relu2'\).*models\.layers\.Add"),
    (_FunctionalTanh, r"TanhBackward0 written in a forward\(\) method \(its result feeds module 'fc'\)"),
])
def test_operations_without_a_rule_in_forward_are_refused(make, message) -> None:  # type: ignore[no-untyped-def]
    model = make().double()
    before = _snapshot(model)
    with pytest.raises(PropagationError, match=message):  # canonize=False: the engine's own graph check
        DeepTaylor(LOW, HIGH, canonize=False)(model, clips(2))
    _assert_untouched(model, before)


def test_bad_layers_and_inputs_for_grad_cam_and_multi_input(no_copy) -> None:  # type: ignore[no-untyped-def]
    model = TwoPathwayNet().double()
    with pytest.raises(ValueError, match=r"no layer 'fast3'; did you mean \['fast2'.*convolution/linear layers"):
        GradCAM("fast3")(model, two_clips())
    with pytest.raises(ValueError, match=r"3-D convolutional.*'fc' outputs \(1, 5\).*TokenGradCAM"):
        GradCAM("fc")(model, two_clips())
    with pytest.raises(ValueError, match="input_index=2 but the model takes 2"):
        GradCAM("slow2", input_index=2)(model, two_clips())
    with pytest.raises(ValueError, match=r"share the batch size B, got \[2, 3\]"):
        GradCAM()(model, [clips(2, shape=(3, 2, 8, 8)), clips(3, shape=(3, 8, 8, 8))])
    with pytest.raises(ValueError, match=r"clips\[1\] must have shape"):
        DeepTaylor(LOW, HIGH)(model, [clips(2, shape=(3, 2, 8, 8)), torch.zeros(2, 3, 8)])

    class SingleInput(Explainer):
        def _explain(self, model, clips, target, structure):  # type: ignore[no-untyped-def]
            return clips

    with pytest.raises(TypeError, match="single-input models; got a list of 2 clips"):
        SingleInput()(model, two_clips())


# ---------------------------------------------------------------------------------------- multi-input


def test_multi_input_explainers_return_one_relevance_per_input() -> None:
    model, x = TwoPathwayNet().double(), two_clips()
    target = logits_of(model, x).argmax(1)
    for explainer in (DeepTaylor(LOW, HIGH), GuidedBackprop(), GradCAM(), GuidedGradCAM()):
        out = explainer(model, x, target)
        assert isinstance(out, tuple) and len(out) == 2
        channels = 1 if isinstance(explainer, GradCAM) else 3
        assert [tuple(r.shape) for r in out] == [(2, channels, *t.shape[2:]) for t in x]
    # Saliency through CaptumExplainer against autograd on both inputs
    xs = [t.clone().requires_grad_(True) for t in x]
    picked = eval_copy(model)(xs).gather(1, target.view(-1, 1)).sum()
    grads = torch.autograd.grad(picked, xs)
    saliency = CaptumExplainer("captum.attr.Saliency")(model, x, target)
    for got, grad in zip(saliency, grads):
        torch.testing.assert_close(got, grad.abs())
    # Guided Grad-CAM = Guided Backprop x Grad-CAM on each input (zeros on the other pathway)
    gbp, cam = GuidedBackprop()(model, x, target), GradCAM("slow2")(model, x, target)
    ggc = GuidedGradCAM("slow2")(model, x, target)
    for g, c, gg in zip(gbp, cam, ggc):
        torch.testing.assert_close(gg, g * c)
    assert cam[1].abs().sum() == 0 and cam[0].abs().sum() > 0


def test_grad_cam_maps_each_pathway_back_to_its_own_input() -> None:
    model, x = TwoPathwayNet().double(), two_clips()
    slow, fast = GradCAM("slow2")(model, x), GradCAM()(model, x)  # default: explain_layer = the fast pathway
    assert slow[0].abs().sum() > 0 and slow[1].abs().sum() == 0
    assert fast[0].abs().sum() == 0 and fast[1].abs().sum() > 0
    # the slow layer's map, by hand: Grad-CAM at slow resolution (T' = 2 = slow frames, stride 1)
    store: dict[str, Tensor] = {}
    work = eval_copy(model)
    work.slow2.register_forward_hook(lambda m, i, o: store.update(act=o))
    out = work([t.clone().requires_grad_(True) for t in x])
    target = out.argmax(1)
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), store["act"])
    cam = F.relu((grad.mean(dim=(2, 3, 4), keepdim=True) * store["act"]).sum(1, keepdim=True))
    torch.testing.assert_close(slow[0], cam.detach())


# --------------------------------------------------------------------------------------- frame alignment


def test_layer_maps_are_frame_aligned_with_the_layer_stride() -> None:
    """A map of T' cells from a layer of temporal stride s: cell k covers frames [k s, (k+1) s)."""
    maps = torch.arange(7, dtype=torch.float64).view(1, 1, 7, 1, 1)
    nearest = to_input_frames(maps, (13, 1, 1), "nearest").flatten()
    torch.testing.assert_close(nearest, torch.arange(13, dtype=torch.float64) // 2)  # s = ceil(13 / 7) = 2
    linear = to_input_frames(maps, (13, 1, 1), "trilinear").flatten().numpy()
    centres = np.arange(7) * 2 + 0.5  # cell k's value sits at the centre of its frames
    np.testing.assert_allclose(linear, np.interp(np.arange(13), centres, np.arange(7)), rtol=0, atol=1e-12)
    # resizing 7 cells to 13 frames stretches them (cell centres every 13 / 7 frames): late frames drift
    stretched = F.interpolate(maps, size=(13, 1, 1), mode="trilinear", align_corners=False).flatten().numpy()
    assert abs(stretched[11] - linear[11]) > 0.2
    # T = s T': the plain trilinear resize (the method's Grad-CAM upsampling) is already frame-aligned
    maps = torch.rand(2, 1, 2, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(to_input_frames(maps, (16, 112, 112)),
                               F.interpolate(maps, size=(16, 112, 112), mode="trilinear", align_corners=False))


def test_grad_cam_on_a_strided_layer_of_a_real_resnet() -> None:
    """layer3 of R3D-18 has temporal stride 4 (T = 8 -> T' = 2): 'nearest' repeats each cell over 4 frames."""
    from motion_relevance.models import r3d_18

    model = r3d_18(num_classes=3, width=0.125)
    x = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    cam = GradCAM("layer3", upsample="nearest")(model, x)
    assert cam.shape == (1, 1, 8, 32, 32)
    for k in range(2):
        block = cam[:, :, 4 * k:4 * k + 4]
        assert torch.equal(block, block[:, :, :1].expand_as(block))
    assert GradCAM()(model, x).shape == (1, 1, 8, 32, 32)  # layer=None: the model's explain_layer (layer4)


# --------------------------------------------------------------------------------------- engine API


def test_composite_lookup_and_extension() -> None:
    class Conv3dSameForward(nn.Conv3d):
        pass

    assert DTD.rule_for(Conv3dSameForward(1, 1, 1)) is DTD.rule_for(nn.Conv3d(1, 1, 1))  # inherits forward
    assert DTD.rule_for(_ConvWithOwnForward(1, 1, 1)) is None  # own forward: needs its own entry
    extended = DTD.with_rules({nn.Tanh: ZPlus()}, name="mine")
    assert extended.rule_for(nn.Tanh()) is not None and DTD.rule_for(nn.Tanh()) is None
    assert ("Tanh", extended.rule_for(nn.Tanh()).name) in extended.table()
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        Composite("bad", {int: ZPlus()})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="must be a Rule"):
        Composite("bad", {nn.ReLU: "identity"})  # type: ignore[dict-item]


def test_propagation_docstring_example() -> None:
    import doctest

    result = doctest.testmod(propagation, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------- torch internals _copy uses


def test_module_internals_the_copy_relies_on() -> None:
    """eval_copy rebuilds each module's ``_parameters`` / ``_buffers`` / ``_modules`` dicts and pre-copies the
    hook tables (``..._hooks`` dicts) of deep-copied modules: fail loudly if torch changes either."""
    module = nn.Sequential(OrderedDict(conv=nn.Conv3d(2, 3, 3), bn=nn.BatchNorm3d(3)))
    for owner, table, public in (
        (module.conv, "_parameters", dict(module.conv.named_parameters(recurse=False))),
        (module.bn, "_buffers", dict(module.bn.named_buffers(recurse=False))),
        (module, "_modules", dict(module.named_children())),
    ):
        assert type(vars(owner)[table]) is dict
        assert {k: v for k, v in vars(owner)[table].items() if v is not None} == public
    conv = module.conv
    handles = [
        conv.register_forward_hook(lambda *a: None),
        conv.register_forward_pre_hook(lambda *a: None),
        conv.register_forward_hook(lambda *a, **k: None, with_kwargs=True),
        conv.register_full_backward_hook(lambda *a: None),
        conv.register_full_backward_pre_hook(lambda *a: None),
        conv.register_state_dict_pre_hook(lambda *a: None),
        conv.register_load_state_dict_post_hook(lambda *a: None),
    ]
    found = {key for table in hook_tables(conv) for key in table}
    assert {h.id for h in handles} <= found
    for h in handles:
        h.remove()
    copied = eval_copy(module)
    assert copied.conv.weight.data_ptr() == conv.weight.data_ptr() and copied.conv is not conv
    assert vars(copied.conv)["_parameters"] is not vars(conv)["_parameters"]
    assert not copied.conv.weight.requires_grad and conv.weight.requires_grad


# --------------------------------------------------------------------------- structure facts the rules use


def test_structure_knows_non_negative_inputs_and_signed_layers() -> None:
    from motion_relevance.explain.explainers import signed_layers
    from motion_relevance.explain.validation import analyse_model

    chain = tiny_chain()
    st = analyse_model(chain, clips(1))
    assert st.nonnegative_inputs == {"conv2", "fc1", "fc2"}  # after ReLU / pooling / dropout; conv1 sees the clip
    assert signed_layers(chain, st) == []
    se = SENet().double()
    st = analyse_model(se, clips(1))
    assert signed_layers(se, st) == ["conv_b"]  # -> BN -> gate -> SiLU; the gate's own convs carry no relevance
    assert st.bn_folds == {"stem_bn": "stem", "bn_a": "conv_a", "bn_b": "conv_b", "bn_c": "conv_c"}

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_chain()

        def forward(self, x: Tensor) -> Tensor:
            h = self.net.pool1(self.net.relu1(self.net.conv1(x)))
            h -= 0.5  # in place on a ReLU's (pooled) output: no longer >= 0
            return self.net[3:](h)

    model = InPlace()
    assert "net.conv2" not in analyse_model(model, clips(1)).nonnegative_inputs
