"""Token Grad-CAM, attention rollout and Integrated Gradients on VideoMAE, against hand-written references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motion_relevance.explain.explainers import CaptumExplainer
from motion_relevance.explain.transformer import AttentionRollout, TokenGradCAM, block_names, tokens_to_frames
from motion_relevance.models.videomae import VideoMAE
from tests.test_videomae import SMALL, clips, randomise, reference_forward


def small(**overrides) -> VideoMAE:
    torch.manual_seed(0)
    model = VideoMAE(**{**SMALL, **overrides}).eval()
    randomise(model, std=0.2)
    return model


def token_values(maps: torch.Tensor, tubelet: int = 2, patch: int = 8) -> torch.Tensor:
    """``(B, 1, T, H, W)`` nearest maps -> the token grid ``(B, T', H', W')`` (one voxel per token)."""
    return maps[:, 0, ::tubelet, ::patch, ::patch]


# ------------------------------------------------------------------------------------------- tokens_to_frames
def test_tokens_to_frames_nearest_covers_each_tubelet() -> None:
    maps = torch.randn(2, 3, 2, 4)
    out = tokens_to_frames(maps, tubelet=2, patch=(4, 3), size=(6, 8, 12))
    assert out.shape == (2, 1, 6, 8, 12)
    for b in range(2):
        for t in range(6):
            for y in range(8):
                for x in range(12):
                    assert out[b, 0, t, y, x] == maps[b, t // 2, y // 4, x // 3]


def test_tokens_to_frames_trilinear_is_centre_aligned_linear_interpolation() -> None:
    values = torch.tensor([1.0, 3.0, 7.0, 2.0])
    maps = values.view(1, 4, 1, 1).expand(1, 4, 2, 2)
    out = tokens_to_frames(maps, tubelet=2, patch=2, size=(8, 4, 4), mode="trilinear")[0, 0, :, 0, 0]
    expected = []
    for frame in range(8):  # token i sits at the centre of frames 2i, 2i+1; clamp outside the first/last centre
        pos = min(max((frame + 0.5) / 2 - 0.5, 0.0), 3.0)
        lo = int(np.floor(pos))
        hi = min(lo + 1, 3)
        expected.append(values[lo] * (1 - (pos - lo)) + values[hi] * (pos - lo))
    assert torch.allclose(out, torch.stack(expected))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(1, 2, 2), 2, 8, (4, 16, 16)), r"\(B, T', H', W'\)"),
        ((torch.zeros(1, 2, 2, 2), 2, 8, (4, 16, 24)), r"token grid 2x2x2 .* covers 4x16x16 .* not the clip's 4x16x24"),
        ((torch.zeros(1, 2, 2, 2), 0, 8, (4, 16, 16)), "tubelet"),
        ((torch.zeros(1, 2, 2, 2), 2, (8, 8, 8), (4, 16, 16)), "patch"),
    ],
)
def test_tokens_to_frames_refuses_bad_sizes(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tokens_to_frames(*args)
    with pytest.raises(ValueError, match="mode"):
        tokens_to_frames(torch.zeros(1, 2, 2, 2), 2, 8, (4, 16, 16), mode="cubic")


# ------------------------------------------------------------------------------------------- token Grad-CAM
def test_token_gradcam_on_the_last_block_equals_the_head_linearisation() -> None:
    """With mean pooling every last-block token gets the same gradient g / N (g: the head's gradient at the
    pooled features), so the map is ReLU(g . x_n / N) per token."""
    model, x = small(), clips()
    relevance = TokenGradCAM()(model, x, target=[1, 3])
    assert relevance.shape == (2, 1, 4, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
    pooled = tokens.mean(1).requires_grad_(True)
    logits = model.classifier(model.fc_norm(pooled))
    (g,) = torch.autograd.grad(logits[0, 1] + logits[1, 3], pooled)
    expected = torch.relu((tokens * g[:, None, :]).sum(-1) / tokens.shape[1]).reshape(2, 2, 4, 4)
    assert torch.allclose(token_values(relevance), expected, atol=1e-6)
    assert relevance.max() > 0


def test_token_gradcam_on_the_first_block_equals_a_split_model_reference() -> None:
    model, x = small(), clips()
    relevance = TokenGradCAM(layer="videomae.encoder.layer.0")(model, x, target=2)
    with torch.no_grad():
        first = model.videomae.encoder.layer[0](model.videomae.embeddings(x, model.grid))
    first.requires_grad_(True)
    rest = model.videomae.encoder.layer[1](first)
    logits = model.classifier(model.fc_norm(rest.mean(1)))
    (grad,) = torch.autograd.grad(logits[:, 2].sum(), first)
    alpha, first = grad.mean(1), first.detach()  # (B, D), (B, N, D)
    cam = np.zeros((2, 32))
    for b in range(2):
        for n in range(32):
            cam[b, n] = max(0.0, float(sum(alpha[b, d] * first[b, n, d] for d in range(32))))
    assert np.allclose(token_values(relevance).reshape(2, 32).numpy(), cam, atol=1e-5)


def test_token_gradcam_default_target_is_the_prediction_and_trilinear_runs() -> None:
    model, x = small(), clips()
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    assert torch.equal(TokenGradCAM()(model, x), TokenGradCAM()(model, x, target=predicted))
    smooth = TokenGradCAM(upsample="trilinear")(model, x)
    assert smooth.shape == (2, 1, 4, 32, 32) and torch.isfinite(smooth).all()


def test_token_gradcam_leaves_the_model_as_it_was() -> None:
    model = small().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TokenGradCAM()(model, clips())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("layer", ["classifier", "videomae.encoder.layer.0.attention.attention.softmax",
                                   "videomae.encoder.layer"])
def test_token_gradcam_refuses_a_layer_that_is_not_a_block(layer: str) -> None:
    with pytest.raises(ValueError, match=rf"{layer}'.*blocks: \['videomae\.encoder\.layer\.0', "
                                         r"'videomae\.encoder\.layer\.1'\]"):
        TokenGradCAM(layer=layer)(small(), clips())


def test_token_explainers_refuse_non_token_models_and_bad_clips() -> None:
    from motion_relevance.models import C3D

    cnn = C3D(num_classes=3, width=0.125, clip_len=16, crop_size=32)
    for explainer in (TokenGradCAM(), AttentionRollout()):
        with pytest.raises(TypeError, match="not a token model"):
            explainer(cnn, torch.randn(1, 3, 16, 32, 32))
        with pytest.raises(ValueError, match="5 frames are not divisible by tubelet_size=2"):
            explainer(small(), torch.randn(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match="upsample"):
        TokenGradCAM(upsample="area")
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionRollout(head_fusion="sum")
    with pytest.raises(ValueError, match="discard_ratio"):
        AttentionRollout(discard_ratio=1.0)


# -------------------------------------------------------------------------------------------- attention rollout
def rollout_by_hand(attentions: list[torch.Tensor], first_token: bool = False) -> np.ndarray:
    """Abnar & Zuidema's rollout with explicit loops: per clip, A_hat = (0.5 A + 0.5 I) / row sums, product of the
    layers (last on the left), then the mean row (mean pooling) or row 0 (first-token pooling)."""
    batch, _, n, _ = attentions[0].shape
    out = np.zeros((batch, n))
    for b in range(batch):
        rollout = np.eye(n)
        for probs in attentions:  # layer 1 first: rollout <- A_hat_l @ rollout
            a = probs[b].double().mean(0).numpy()
            a_hat = np.zeros((n, n))
            for i in range(n):
                row = [0.5 * a[i, j] + (0.5 if i == j else 0.0) for j in range(n)]
                total = sum(row)
                a_hat[i] = [r / total for r in row]
            rollout = a_hat @ rollout
        out[b] = rollout[0] if first_token else rollout.mean(0)
    return out


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_rollout_equals_hand_computed_reference(mean_pooling: bool) -> None:
    model, x = small(use_mean_pooling=mean_pooling), clips()
    attentions: list[torch.Tensor] = []
    with torch.no_grad():
        reference_forward(model.state_dict(), x, heads=4, tubelet=2, patch=8, eps=1e-12, mean_pooling=mean_pooling,
                          attentions=attentions)
    relevance = AttentionRollout()(model, x)
    assert relevance.shape == (2, 1, 4, 32, 32)
    got = token_values(relevance).reshape(2, 32).double().numpy()
    assert np.allclose(got, rollout_by_hand(attentions, first_token=not mean_pooling), atol=1e-5)
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)


def test_rollout_of_uniform_attention_is_analytic() -> None:
    """Zero queries -> uniform attention 1/N in every block. Mean pooling: every token 1/N. First-token pooling,
    one block: token 0 gets 0.5 + 0.5 / N, every other token 0.5 / N."""
    for mean_pooling, depth in ((True, 2), (False, 1)):
        model = small(use_mean_pooling=mean_pooling, num_hidden_layers=depth)
        with torch.no_grad():
            for block in model.videomae.encoder.layer:
                block.attention.attention.query.weight.zero_()
                block.attention.attention.query.bias.zero_()
        got = token_values(AttentionRollout()(model, clips())).reshape(2, 32)
        if mean_pooling:
            expected = torch.full((2, 32), 1 / 32)
        else:
            expected = torch.full((2, 32), 0.5 / 32)
            expected[:, 0] += 0.5
        assert torch.allclose(got, expected, atol=1e-6)


def test_rollout_ignores_the_target_and_offers_head_fusions() -> None:
    model, x = small(), clips()
    base = AttentionRollout()(model, x)
    assert torch.equal(base, AttentionRollout()(model, x, target=4))
    for kwargs in ({"head_fusion": "max"}, {"head_fusion": "min"}, {"discard_ratio": 0.9}):
        other = token_values(AttentionRollout(**kwargs)(model, x)).reshape(2, 32)
        assert torch.allclose(other.sum(1), torch.ones(2), atol=1e-5) and (other >= 0).all()
        assert not torch.allclose(other, token_values(base).reshape(2, 32))


def test_rollout_refuses_a_model_without_attention_softmax() -> None:
    class Tokens(torch.nn.Module):  # a token model without attention
        tubelet_size, patch_size = 2, 8

        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Conv3d(3, 4, (2, 8, 8), (2, 8, 8))
            self.head = torch.nn.Linear(4, 3)

        def token_grid(self, shape):
            return shape[-3] // 2, shape[-2] // 8, shape[-1] // 8

        def forward(self, x):
            return self.head(self.embed(x).flatten(2).mean(2))

    with pytest.raises(ValueError, match="no attention softmax"):
        AttentionRollout()(Tokens(), clips())
    with pytest.raises(ValueError, match="no transformer block"):
        TokenGradCAM()(Tokens(), clips())


def test_hooked_attention_equals_transformers_attentions() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=5, attn_implementation="eager",
    )
    hf = transformers.VideoMAEForVideoClassification(config).eval()
    randomise(hf, std=0.2)
    model = VideoMAE(**SMALL).eval()
    model.load_state_dict(hf.state_dict(), strict=True)
    x = clips()
    with torch.no_grad():
        hf_attn = hf(pixel_values=x.permute(0, 2, 1, 3, 4), output_attentions=True).attentions
    assert len(hf_attn) == 2
    got = token_values(AttentionRollout()(model, x)).reshape(2, 32).double().numpy()
    assert np.allclose(got, rollout_by_hand(list(hf_attn)), atol=1e-5)


# ------------------------------------------------------------------------------------ Integrated Gradients
def test_integrated_gradients_runs_on_the_tiny_config_model() -> None:
    model = small(num_frames=8, image_size=32, num_hidden_layers=2)
    x = clips(frames=8)
    ig = CaptumExplainer(method="captum.attr.IntegratedGradients", attribute_kwargs={"n_steps": 8,
                                                                                    "internal_batch_size": 8})
    relevance = ig(model, x, target=[0, 1])
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    with torch.no_grad():  # completeness: the attributions sum to F(x) - F(0), up to the Riemann error
        gap = model(x)[[0, 1], [0, 1]] - model(torch.zeros_like(x))[[0, 1], [0, 1]]
    assert torch.allclose(relevance.sum((1, 2, 3, 4)), gap, rtol=0.2, atol=0.05)


def test_block_names_lists_the_encoder_blocks() -> None:
    assert block_names(small()) == ["videomae.encoder.layer.0", "videomae.encoder.layer.1"]


def test_grad_cam_on_a_transformer_block_is_token_grad_cam() -> None:
    """explainer=gradcam / guided_gradcam work on every model: on a block of a tubelet model Grad-CAM is the token
    Grad-CAM of that block (same map, same frame mapping) and Guided Grad-CAM multiplies it into the gradient."""
    from motion_relevance.explain import GradCAM, GuidedBackprop, GuidedGradCAM

    model, x = small(), clips()
    layer = "videomae.encoder.layer.1"
    cam = GradCAM(layer=layer, upsample="nearest")(model, x, target=[1, 3])
    assert torch.equal(cam, TokenGradCAM(layer=layer)(model, x, target=[1, 3]))
    guided = GuidedGradCAM(layer=layer, upsample="nearest")(model, x, target=[1, 3])
    assert torch.allclose(guided, GuidedBackprop()(model, x, target=[1, 3]) * cam)
    with pytest.raises(ValueError, match=r"3-D convolutional.*'classifier' outputs"):
        GradCAM(layer="classifier")(model, x)
