"""Explainers (SPEC §2) against hand-written references on tiny 3-D nets; hygiene and input errors."""

from __future__ import annotations

import doctest
import math
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import motion_relevance.explain as explain
from motion_relevance.explain import (
    CaptumExplainer,
    DeepTaylor,
    FrameInflation,
    GradCAM,
    GuidedBackprop,
    GuidedGradCAM,
    zb_bounds_from_normalization,
)
from motion_relevance.explain import explainers as explainers_module
from motion_relevance.models import C3D
from tests.tiny_models import HIGH, LOW
from tests.tiny_models import tiny_chain as tiny_net


def clips_for(batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, 4, 8, 8, generator=g, dtype=torch.float64) * (HIGH - LOW) + LOW).contiguous()


def logits(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(clips)


def hook_counts(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


# ----------------------------------------------------------------------------------------------- DTD


@pytest.mark.parametrize("pooling", ["winner", "proportional"])
def test_dtd_conserves_the_target_logit_and_zb_is_non_negative(pooling: str) -> None:
    model, clips = tiny_net(), clips_for()
    out = logits(model, clips)
    target = out.argmax(1)
    relevance = DeepTaylor(lower=LOW, upper=HIGH, pooling=pooling)(model, clips)
    assert relevance.shape == clips.shape
    sums = relevance.sum(dim=(1, 2, 3, 4))
    expected = out.gather(1, target.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(sums, expected, rtol=1e-3, atol=1e-9)
    assert (expected > 0).all() and (relevance >= -1e-12).all()
    # an explicit other class: still conserved (the logit may be negative)
    other = DeepTaylor(lower=LOW, upper=HIGH, pooling=pooling)(model, clips, target=3)
    torch.testing.assert_close(other.sum(dim=(1, 2, 3, 4)), out[:, 3], rtol=1e-3, atol=1e-9)


def _zb_reference(x, weight, relevance_out, low, high, padding):  # type: ignore[no-untyped-def]
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    lo, hi = torch.full_like(x, low), torch.full_like(x, high)
    z = F.conv3d(x, weight, padding=padding) - F.conv3d(lo, wp, padding=padding) - F.conv3d(hi, wn, padding=padding)
    s = relevance_out / z
    return (
        x * F.conv_transpose3d(s, weight, padding=padding)
        - lo * F.conv_transpose3d(s, wp, padding=padding)
        - hi * F.conv_transpose3d(s, wn, padding=padding)
    )


def test_dtd_matches_hand_written_two_layer_reference() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv3d(3, 4, 3, padding=1, bias=False),
            relu=nn.ReLU(),
            flatten=nn.Flatten(),
            fc=nn.Linear(4 * 3 * 5 * 5, 3, bias=False),
        )
    ).double()
    clips = torch.rand(2, 3, 3, 5, 5, dtype=torch.float64) * 2 - 1
    target = torch.tensor([0, 2])
    # reference: z+ on fc from the target logit, then zB on conv, all explicit tensor maths
    a = F.relu(F.conv3d(clips, model.conv.weight, padding=1)).flatten(1)
    w_t = model.fc.weight[target]  # (B, features)
    y = (a * w_t).sum(1)
    zp = (a * w_t.clamp(min=0)).sum(1, keepdim=True)
    r_a = (a * w_t.clamp(min=0) / zp * y.view(-1, 1)).view(2, 4, 3, 5, 5)
    expected = _zb_reference(clips, model.conv.weight, r_a, LOW, HIGH, 1)
    relevance = DeepTaylor(lower=LOW, upper=HIGH)(model, clips, target=target)
    torch.testing.assert_close(relevance, expected.detach(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("pooling", ["winner", "proportional"])
def test_dtd_pooling_matches_hand_written_reference(pooling: str) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv3d(2, 3, 3, padding=1, bias=False),
            relu=nn.ReLU(),
            pool=nn.MaxPool3d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(3 * 1 * 2 * 2, 2, bias=False),
        )
    ).double()
    clips = torch.rand(1, 2, 2, 4, 4, dtype=torch.float64) * 2 - 1
    a = F.relu(F.conv3d(clips, model.conv.weight, padding=1))  # (1, 3, 2, 4, 4)
    p = F.max_pool3d(a, 2)
    target = 1
    w = model.fc.weight[target].view(1, 3, 1, 2, 2)
    r_p = p * w.clamp(min=0) / (p * w.clamp(min=0)).sum() * (p * w).sum()

    def up(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)

    if pooling == "winner":
        r_a = (a == up(p)).double() * up(r_p)
    else:
        window = F.avg_pool3d(a, 2) * 8
        r_a = a / up(window) * up(r_p)
    expected = _zb_reference(clips, model.conv.weight, r_a, -2.0, 2.0, 1)
    relevance = DeepTaylor(lower=-2.0, upper=2.0, pooling=pooling)(model, clips, target=target)
    torch.testing.assert_close(relevance, expected.detach(), rtol=1e-6, atol=1e-10)


def test_zb_per_channel_bounds_and_helper() -> None:
    lower, upper = zb_bounds_from_normalization(mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.1])
    assert lower == pytest.approx([-2.0, -2.0, -3.0]) and upper == pytest.approx([2.0, 3.0, 7.0])
    low_px, high_px = zb_bounds_from_normalization(mean=[90.25, 97.66, 101.41], std=1.0, scale=1.0)
    assert low_px == pytest.approx([-90.25, -97.66, -101.41]) and high_px[0] == pytest.approx(164.75)
    model = tiny_net()
    clips = clips_for()
    clips[:, 2] *= 0.5
    by_channel = DeepTaylor(lower=[-1.0, -1.0, -0.5], upper=[1.0, 1.0, 0.5])(model, clips)
    assert (by_channel >= -1e-12).all()
    from_norm = DeepTaylor(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 1.0])(model, clips)
    torch.testing.assert_close(from_norm, by_channel)


def test_dtd_warns_when_clips_exceed_the_bounds() -> None:
    with pytest.warns(UserWarning, match="outside the zB bounds"):
        DeepTaylor(lower=-0.1, upper=0.1)(tiny_net(), clips_for())


def test_dtd_on_float32_c3d_small_conserves() -> None:
    model = C3D(num_classes=8, width=0.125, crop_size=32, clip_len=16)
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            nn.init.zeros_(m.bias)
    clips = torch.rand(1, 3, 16, 32, 32) * 4 - 2
    out = logits(model, clips).max(1).values
    relevance = DeepTaylor(lower=-2, upper=2)(model, clips)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3, 4)), out, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------------- gradient methods


def test_gradcam_matches_hand_written_hooks() -> None:
    model, clips = tiny_net(bias=True), clips_for()
    store = {}
    handle = model.conv2.register_forward_hook(lambda m, i, o: store.update(act=o))
    out = model.eval()(clips)
    handle.remove()
    target = out.argmax(1)
    act = store["act"]
    (grads,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), act)
    cam = F.relu((grads.mean(dim=(2, 3, 4), keepdim=True) * act).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=clips.shape[2:], mode="trilinear", align_corners=False).detach()
    relevance = GradCAM(layer="conv2")(model.train(), clips)
    assert relevance.shape == (2, 1, 4, 8, 8)
    torch.testing.assert_close(relevance, expected)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


def _guided_reference(model: nn.Sequential, clips: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = clips.clone().requires_grad_(True)
    h = x
    for module in model.eval():
        h = _GuidedReLU.apply(h) if isinstance(module, nn.ReLU) else module(h)
    (grad,) = torch.autograd.grad(h.gather(1, target.view(-1, 1)).sum(), x)
    return grad


def test_guided_backprop_zeroes_negative_gradients_at_every_relu() -> None:
    model, clips = tiny_net(bias=True), clips_for()
    target = logits(model, clips).argmax(1)
    relevance = GuidedBackprop()(model, clips)
    assert relevance.shape == clips.shape
    torch.testing.assert_close(relevance, _guided_reference(model, clips, target))


def test_guided_gradcam_is_gbp_times_upsampled_gradcam() -> None:
    model, clips = tiny_net(bias=True), clips_for()
    ggc = GuidedGradCAM(layer="conv2")(model, clips)
    expected = GuidedBackprop()(model, clips) * GradCAM(layer="conv2")(model, clips)
    assert ggc.shape == clips.shape
    torch.testing.assert_close(ggc, expected)


def test_targets_none_int_and_tensor() -> None:
    model, clips = tiny_net(bias=True), clips_for()
    predicted = logits(model, clips).argmax(1)
    explainer = GuidedBackprop()
    torch.testing.assert_close(explainer(model, clips), explainer(model, clips, target=predicted))
    torch.testing.assert_close(explainer(model, clips, target=2), explainer(model, clips, target=[2, 2]))
    torch.testing.assert_close(explainer(model, clips, target=torch.tensor(2)), explainer(model, clips, target=2))


def test_captum_explainer_wraps_any_attribution() -> None:
    model, clips = tiny_net(bias=True), clips_for()
    saliency = CaptumExplainer("captum.attr.Saliency")
    assert saliency.name == "saliency"
    target = logits(model, clips).argmax(1)
    x = clips.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.eval()(x).gather(1, target.view(-1, 1)).sum(), x)
    torch.testing.assert_close(saliency(model, clips), grad.abs())
    ig = CaptumExplainer(
        "captum.attr.IntegratedGradients", attribute_kwargs={"n_steps": 64, "method": "gausslegendre"}, name="ig"
    )
    out = logits(model, clips)
    base = logits(model, torch.zeros_like(clips))
    completeness = ig(model, clips).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(
        completeness, (out - base).gather(1, target.view(-1, 1)).squeeze(1), rtol=1e-2, atol=1e-3
    )
    layer = CaptumExplainer("captum.attr.LayerGradCam", layer="conv2", attribute_kwargs={"relu_attributions": True})
    torch.testing.assert_close(layer(model, clips), GradCAM(layer="conv2")(model, clips))


def test_names_default_and_override() -> None:
    assert [e.name for e in (DeepTaylor(-1, 1), GradCAM(), GuidedBackprop(), GuidedGradCAM())] == [
        "dtd",
        "gradcam",
        "gbp",
        "guided_gradcam",
    ]
    assert GradCAM(name="cam5").name == "cam5"
    assert FrameInflation(GradCAM()).name == "fi_gradcam"


# ------------------------------------------------------------------------------------- frame inflation


def test_frame_inflation_static_clip_has_no_temporal_relevance_and_chunks_agree() -> None:
    model = tiny_net(bias=True)
    clips = clips_for(batch=2)
    static = clips[:, :, :1].expand(-1, -1, 4, -1, -1).contiguous()
    fi = FrameInflation(GuidedBackprop(), chunk_size=3, reduce="frame")
    torch.testing.assert_close(fi(model, static), torch.zeros_like(static), rtol=0, atol=1e-12)
    base = GuidedBackprop()
    temporal = FrameInflation(base, chunk_size=1)(model, clips)
    assert temporal.shape == clips.shape
    torch.testing.assert_close(temporal, FrameInflation(base, chunk_size=8)(model, clips))
    # temporal = original - mean over the inflated clip of frame t
    frame0 = clips[:1, :, :1].expand(-1, -1, 4, -1, -1).contiguous()
    target = logits(model, clips[:1]).argmax(1)
    spatial0 = base(model, frame0, target).mean(2)
    torch.testing.assert_close(temporal[0, :, 0], base(model, clips[:1])[0, :, 0] - spatial0[0])


# ------------------------------------------------------------------------------------------- hygiene


ALL = [
    lambda: DeepTaylor(lower=LOW, upper=HIGH),
    lambda: DeepTaylor(lower=LOW, upper=HIGH, pooling="proportional"),
    lambda: GradCAM(layer="conv2"),
    lambda: GuidedBackprop(),
    lambda: GuidedGradCAM(layer="conv2"),
    lambda: CaptumExplainer("captum.attr.Saliency"),
]


@pytest.mark.parametrize("make", ALL)
def test_caller_model_untouched(make) -> None:  # type: ignore[no-untyped-def]
    model, clips = tiny_net(bias=True), clips_for()
    model.train()
    model.conv1.weight.requires_grad_(False)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    clips_before = clips.clone()
    make()(model, clips)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert hook_counts(model) == 0 and not clips.requires_grad and torch.equal(clips, clips_before)
    assert not any(hasattr(m, "rule") for m in model.modules())


class _FailSecondForward(nn.Module):
    """Wraps a net; raises on the second forward of each explanation (the engine's one forward, rules attached)."""

    calls = 0  # class attribute: shared by the explainer's copies of the model

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net(bias=True)
        type(self).calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        if type(self).calls >= 2:  # 1st: structure trace; 2nd: the explanation's forward with the rules attached
            raise RuntimeError("boom")
        return self.net(x)


def test_hooks_removed_and_weights_kept_when_explaining_raises() -> None:
    model = _FailSecondForward()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        DeepTaylor(lower=LOW, upper=HIGH)(model, clips_for())
    assert hook_counts(model) == 0 and not any(hasattr(m, "rule") for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------- bad inputs


class _FunctionalReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 3, padding=1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * 4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(F.relu(self.conv(x))))


def _shared_relu_net() -> nn.Sequential:
    net = tiny_net()
    net.relu2 = net.relu1  # the same module at two places
    return net


def _inplace_relu_net() -> nn.Sequential:
    net = tiny_net()
    net.relu2 = nn.ReLU(inplace=True)
    return net


def _batchnorm_net() -> nn.Sequential:
    """A BatchNorm after the ReLU (before the next conv, as in pre-activation blocks): it cannot be folded."""
    net = tiny_net()
    net.relu1 = nn.Sequential(nn.ReLU(), nn.BatchNorm3d(4).double())
    return net


@pytest.fixture
def no_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if an explainer gets as far as building its working copy (where hooks would be attached)."""

    def forbidden(model: nn.Module) -> nn.Module:
        raise AssertionError("validation must fail before the model is copied and hooked")

    monkeypatch.setattr(explainers_module, "eval_copy", forbidden)


BAD_MODELS = [
    (_shared_relu_net, [DeepTaylor(LOW, HIGH), GuidedBackprop(), GuidedGradCAM("conv2")], "one nn.ReLU module per"),
    (_inplace_relu_net, [DeepTaylor(LOW, HIGH), GuidedBackprop()], "inplace"),
    (_FunctionalReLUNet, [DeepTaylor(LOW, HIGH), GuidedBackprop()], "functional ReLU"),
    (_batchnorm_net, [DeepTaylor(LOW, HIGH)], "BatchNorm3d"),
]


@pytest.mark.parametrize(("make_model", "explainers", "message"), BAD_MODELS)
def test_unsupported_models_raise_before_hooks(make_model, explainers, message, no_copy) -> None:  # type: ignore[no-untyped-def]
    model = make_model().double()
    for explainer in explainers:
        with pytest.raises((ValueError, TypeError), match=message):
            explainer(model, clips_for())
        assert hook_counts(model) == 0


def test_functional_relu_is_fine_for_gradcam() -> None:
    model = _FunctionalReLUNet().double()
    assert GradCAM(layer="conv")(model, clips_for()).shape == (2, 1, 4, 8, 8)


def test_bad_clips_targets_and_layers_raise(no_copy) -> None:  # type: ignore[no-untyped-def]
    model, clips = tiny_net(), clips_for()
    explainer = GuidedBackprop()
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        explainer(model, clips[0])
    with pytest.raises(TypeError, match="floating"):
        explainer(model, (clips * 10).long())
    broken = clips.clone()
    broken[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        explainer(model, broken)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        explainer(model, clips, target=5)
    with pytest.raises(ValueError, match="B=2"):
        explainer(model, clips, target=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        explainer(model, clips, target=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"layer=None but .* has no explain_layer attribute"):
        GradCAM()(model, clips)  # no default layer of its own: refused (no global fallback layer)
    with pytest.raises(ValueError, match=r"no layer 'conv5b'.*conv1"):
        GradCAM(layer="conv5b")(model, clips)
    with pytest.raises(ValueError, match="3-D convolutional"):
        GradCAM(layer="fc1")(model, clips)
    with pytest.raises(TypeError, match="Module"):
        explainer(lambda x: x, clips)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input channels"):
        DeepTaylor(lower=[-1, -1], upper=[1, 1])(model, clips)
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        explainer(model, clips)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="lower < upper"):
        DeepTaylor(lower=1.0, upper=-1.0)
    with pytest.raises(ValueError, match="zB bounds"):
        DeepTaylor()
    with pytest.raises(ValueError, match="pooling"):
        DeepTaylor(-1, 1, pooling="max")
    with pytest.raises(ValueError, match="upsample"):
        GradCAM(upsample="bicubic")
    with pytest.raises(ValueError, match="cannot import"):
        CaptumExplainer("captum.attr.NoSuchMethod")
    with pytest.raises(TypeError, match="not a Captum attribution"):
        CaptumExplainer("torch.nn.Linear")
    with pytest.raises(ValueError, match="chunk_size"):
        FrameInflation(GradCAM(), chunk_size=0)
    with pytest.raises(ValueError, match="std must be positive"):
        zb_bounds_from_normalization(mean=0.5, std=0.0)


# ------------------------------------------------------------------------------------------ C3D / docs


def test_readme_example_runs_as_doctest() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(explain, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_full_size_c3d_gradcam_shape() -> None:
    model = C3D(num_classes=101)
    relevance = GradCAM(layer="conv5b")(model, torch.randn(1, 3, 16, 112, 112))
    assert relevance.shape == (1, 1, 16, 112, 112) and (relevance >= 0).all()


def test_check_finite_fast_path_keeps_overflowing_but_finite_tensors() -> None:
    """check_finite clears tensors by their sum; a finite tensor whose sum overflows must still pass, and a single
    NaN or Inf anywhere must still be caught and counted."""
    from motion_relevance.explain.validation import check_finite

    big = torch.full((4, 8), 3e38)  # finite, but the float32 sum is inf
    assert not torch.isfinite(big.sum())
    check_finite(big, "big")
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.randn(2, 3, 4, 5, 6)
        x[1, 2, 3, 4, 5] = bad
        with pytest.raises(ValueError, match="1 NaN/Inf"):
            check_finite(x, "x")
    check_finite(torch.empty(0), "empty")


def test_eval_copy_is_isolated_from_the_callers_modules() -> None:
    """The shallow module copy must not leak state back: train() overrides run, containers are the copy's own,
    modules with custom pickling (torchmetrics) are deep-copied, weights are shared storage."""
    import torchmetrics

    from motion_relevance.explain._copy import eval_copy

    class Flagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flag = "train"
            self.cache: dict[str, int] = {}

        def train(self, mode: bool = True) -> Flagged:
            self.flag = "train" if mode else "eval"
            return super().train(mode)

    model = nn.Sequential(OrderedDict(conv=nn.Conv3d(3, 4, 3), flagged=Flagged()))
    model.metric = torchmetrics.MeanMetric()
    copy_ = eval_copy(model)
    assert not copy_.training and copy_.flagged.flag == "eval"
    assert model.training and model.flagged.flag == "train"
    copy_.flagged.cache["x"] = 1
    copy_.conv.register_buffer("scratch", torch.zeros(1), persistent=False)
    assert model.flagged.cache == {} and "scratch" not in model.conv._non_persistent_buffers_set
    copy_.metric.update(torch.tensor(3.0))
    assert model.metric.update_count == 0 and copy_.metric is not model.metric
    assert copy_.conv.weight.data_ptr() == model.conv.weight.data_ptr() and not copy_.conv.weight.requires_grad
