"""temporal_share: the cross-frame share of the relevance AttnLRP passes through attention products.

References: a one-block VideoMAE run and propagated by hand here (float64, the rules of ``explain.rules`` written
out) with the per-pair epsilon-LRP terms summed over an explicit ``(q, k, d)`` tensor; attention masked to each
frame (exactly 0); a single-frame token grid (exactly 0); batch composition; the refusals.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from motion_relevance.explain import AttnLRP, DeepTaylor, temporal_share
from motion_relevance.explain.rules import Epsilon
from motion_relevance.explain.temporal_flow import (
    TOKEN_FRAMES,
    pair_flows,
    register_token_frames,
    videomae_token_frames,
)
from motion_relevance.models.layers import MatMul
from motion_relevance.models.videomae import VideoMAE
from tests.test_videomae import clips, small

EPS = 1e-6


def test_exported_lazily_as_the_function() -> None:
    import motion_relevance.explain as explain

    assert callable(explain.temporal_share) and explain.temporal_share.__name__ == "temporal_share"


@pytest.mark.parametrize("target", [None, 0, 3])
def test_value_strictly_inside_unit_interval_for_a_random_model(target) -> None:
    share = temporal_share(small(), clips(batch=3), target)
    assert share.shape == (3,) and share.dtype == torch.float32
    assert bool(((share > 0) & (share < 1)).all()), share


def test_batch_composition_does_not_change_a_clips_value() -> None:
    model, x = small(), clips(batch=3, seed=4)
    together = temporal_share(model, x)
    alone = torch.cat([temporal_share(model, x[i:i + 1]) for i in range(3)])
    reordered = temporal_share(model, x[[2, 0, 1]])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(reordered, together[[2, 0, 1]], rtol=0, atol=1e-6)


def test_single_frame_token_grid_gives_exactly_zero() -> None:
    model = small(num_frames=2)  # tubelet 2: T' = 1
    assert model.grid[0] == 1
    assert torch.equal(temporal_share(model, clips(frames=2)), torch.zeros(2))


def _same_frame_only(model: VideoMAE) -> list:
    """Pre-hooks on every softmax: logits of cross-frame pairs set to -inf (attention stays within a frame)."""
    t, h, w = model.grid
    frames = torch.arange(t * h * w) // (h * w)
    mask = torch.zeros(t * h * w, t * h * w)
    mask[frames.view(-1, 1) != frames.view(1, -1)] = float("-inf")
    handles = []
    for block in model.block_names:
        softmax = model.get_submodule(f"{block}.attention.attention.softmax")
        handles.append(softmax.register_forward_pre_hook(lambda _m, args: (args[0] + mask,)))
    return handles


def test_attention_masked_to_each_frame_gives_exactly_zero() -> None:
    model, x = small(num_frames=6), clips(frames=6)  # T' = 3
    handles = _same_frame_only(model)
    try:
        share = temporal_share(model, x)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(share, torch.zeros(2))
    assert bool((temporal_share(model, x) > 0).all())  # the same model unmasked does cross frames


# ------------------------------------------------------------------------------ hand-written reference


def _stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def _linear_relevance(x: Tensor, z: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    return x * ((relevance / _stab(z, EPS)) @ weight)


def _layernorm(x: Tensor, ln: nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    std = (x.var(-1, correction=0, keepdim=True) + ln.eps).sqrt()
    return (x - mean) / std * ln.weight.double() + ln.bias.double()


def _layernorm_relevance(x: Tensor, y: Tensor, ln: nn.LayerNorm, relevance: Tensor) -> Tensor:
    std = (x.var(-1, correction=0, keepdim=True) + ln.eps).sqrt()
    u = relevance / _stab(y, EPS) * ln.weight.double()
    return (u - u.mean(-1, keepdim=True)) / std * x


def _reference_share(model: VideoMAE, x: Tensor, target: Tensor) -> Tensor:
    """One block, mean pooling: forward and AttnLRP backward down to ``A @ V`` by hand, in float64."""
    (block,) = model.videomae.encoder.layer
    att = block.attention.attention
    p = {k: v.double() for k, v in model.state_dict().items()}
    x = x.double()
    emb = model.videomae.embeddings
    tokens = F.conv3d(x, p["videomae.embeddings.patch_embeddings.projection.weight"],
                      p["videomae.embeddings.patch_embeddings.projection.bias"],
                      stride=emb.patch_embeddings.projection.stride).flatten(2).transpose(1, 2)
    x0 = tokens + emb.position_embeddings.double()
    batch, n, dim = x0.shape
    heads, dh = att.num_attention_heads, att.attention_head_size

    def split(t: Tensor) -> Tensor:
        return t.view(batch, n, heads, dh).transpose(1, 2)

    pre = "videomae.encoder.layer.0."
    ln1 = _layernorm(x0, block.layernorm_before)
    q = split(ln1 @ p[pre + "attention.attention.query.weight"].T + p[pre + "attention.attention.query.bias"])
    k = split(ln1 @ p[pre + "attention.attention.key.weight"].T)
    v = split(ln1 @ p[pre + "attention.attention.value.weight"].T + p[pre + "attention.attention.value.bias"])
    a = torch.softmax((q * dh**-0.5) @ k.transpose(-1, -2), -1)
    o = a @ v
    ctx = o.transpose(1, 2).reshape(batch, n, dim)
    w_o, w_i, w_out = (p[pre + s + ".weight"] for s in ("attention.output.dense", "intermediate.dense",
                                                         "output.dense"))
    z1 = ctx @ w_o.T + p[pre + "attention.output.dense.bias"]
    h1 = z1 + x0
    ln2 = _layernorm(h1, block.layernorm_after)
    m = ln2 @ w_i.T + p[pre + "intermediate.dense.bias"]
    g = F.gelu(m)
    z2 = g @ w_out.T + p[pre + "output.dense.bias"]
    h2 = z2 + h1
    pooled = h2.mean(1)
    f = _layernorm(pooled, model.fc_norm)
    logits = f @ p["classifier.weight"].T + p["classifier.bias"]
    # backward: relevance starts as the target logit
    r = torch.zeros_like(logits).scatter_(1, target.view(-1, 1), logits.gather(1, target.view(-1, 1)))
    r = _linear_relevance(f, logits, p["classifier.weight"], r)
    r = _layernorm_relevance(pooled, f, model.fc_norm, r)
    r_h2 = h2 * (r / _stab(pooled, 1e-9) / n).unsqueeze(1)  # mean over tokens, proportional
    share = r_h2 / _stab(h2, EPS)
    r_z2, r_h1 = share * z2, share * h1  # mlp_residual (branch, skip)
    r_g = _linear_relevance(g, z2, w_out, r_z2)  # GELU passes relevance
    r_ln2 = _linear_relevance(ln2, m, w_i, r_g)
    r_h1 = r_h1 + _layernorm_relevance(h1, ln2, block.layernorm_after, r_ln2)
    r_z1 = r_h1 / _stab(h1, EPS) * z1  # attention_residual (branch, skip)
    r_ctx = _linear_relevance(ctx, z1, w_o, r_z1)
    r_o = r_ctx.view(batch, n, heads, dh).transpose(1, 2)
    # per-pair epsilon-LRP terms of o = a @ v, the V-factor half as the uniform rule forms it
    terms = a.unsqueeze(-1) * v.unsqueeze(-3) * (r_o / (2 * o + EPS * torch.where(o >= 0, 1.0, -1.0).double())
                                                 ).unsqueeze(-2)  # (B, h, q, k, d)
    per_pair = terms.abs().sum(-1)
    frame = torch.arange(n) // (model.grid[1] * model.grid[2])
    cross = per_pair[..., frame.view(-1, 1) != frame.view(1, -1)]
    return cross.sum((1, 2)) / per_pair.sum((1, 2, 3))


def test_matches_a_hand_written_one_block_reference() -> None:
    model = small(num_hidden_layers=1, num_frames=6)  # T' = 3, 48 tokens, 4 heads
    x = clips(batch=2, frames=6, seed=7)
    target = torch.tensor([1, 4])
    expected = _reference_share(model, x, target)
    assert bool(((expected > 0.05) & (expected < 0.95)).all()), expected
    torch.testing.assert_close(temporal_share(model, x, target), expected.float(), rtol=1e-5, atol=1e-6)


def test_pair_flows_against_the_explicit_term_sum() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64)
    o = a @ v
    o[0, 0, 0, 0] = 0.0  # the stabiliser's sign at 0 is +
    r = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    den = 2 * o + 0.1 * torch.where(o >= 0, 1.0, -1.0).double()
    expected = torch.einsum("bhqk,bhkd,bhqd->bhqkd", a, v, r / den).abs().sum(-1)
    torch.testing.assert_close(pair_flows(a, v, o, r, 0.1), expected)


# ------------------------------------------------------------------------------ refusals


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_refuses_a_model_without_a_token_frame_map() -> None:
    with pytest.raises(ValueError, match="cannot measure Sequential") as err:
        temporal_share(nn.Sequential(nn.Flatten(), nn.LazyLinear(3)), clips())
    assert "VideoMAE" in _one_line(err)


def test_refuses_an_explainer_without_the_uniform_matmul_rule() -> None:
    with pytest.raises(ValueError, match="uniform rule") as err:
        temporal_share(small(), clips(), explainer=AttnLRP(lower=-5, upper=5, rules={MatMul: Epsilon(1e-6)}))
    _one_line(err)
    with pytest.raises(TypeError, match="must be an AttnLRP, got DeepTaylor"):
        temporal_share(small(), clips(), explainer=DeepTaylor(lower=-5, upper=5))


def test_refuses_bad_clips() -> None:
    with pytest.raises(ValueError, match="temporal_share clips"):
        temporal_share(small(), clips()[0])
    bad = clips()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="temporal_share clips"):
        temporal_share(small(), bad)


class _Mislabelled(VideoMAE):
    pass


def test_refuses_a_map_naming_a_module_that_is_no_matmul() -> None:
    register_token_frames(_Mislabelled, lambda model, x: {"classifier": videomae_token_frames(model, x)[
        "videomae.encoder.layer.0.attention.attention.av_matmul"]})
    try:
        model = _Mislabelled(num_classes=3, image_size=16, patch_size=8, num_frames=4, hidden_size=8,
                             num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
        with pytest.raises(ValueError, match="names 'classifier', which is not a models.layers.MatMul") as err:
            temporal_share(model, clips(size=16))
        _one_line(err)
    finally:
        TOKEN_FRAMES.pop(_Mislabelled)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_token_frames("VideoMAE", videomae_token_frames)  # type: ignore[arg-type]


def test_leaves_no_hook_and_does_not_change_the_attnlrp_map() -> None:
    model, x = small(), clips()
    explainer = AttnLRP(lower=-5, upper=5)
    before = explainer(model, x)
    temporal_share(model, x, explainer=explainer)
    with pytest.raises(ValueError):
        temporal_share(model, x, target=99, explainer=explainer)  # refused inside the explainer: hooks removed too
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(explainer(model, x), before)


class _NoPass(AttnLRP):
    """An AttnLRP that runs no backward pass: no relevance reaches the products."""

    def __call__(self, model, clips, target=None):
        return model(clips)


def test_refuses_a_pass_in_which_a_product_received_no_relevance() -> None:
    with pytest.raises(RuntimeError, match="received relevance 0 times") as err:
        temporal_share(small(), clips(), explainer=_NoPass(lower=-5, upper=5))
    _one_line(err)
