"""Masked video modelling before fine-tuning (mr-train pretrain=mae): tube masks, tubelet targets, the masked
encoder, the pre-training loop and its config, against hand-written references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from motion_relevance.models import VideoMAE
from motion_relevance.models.c3d import C3D
from motion_relevance.models.masking import MaskedVideoModel, normalize_targets, patchify, tube_mask
from motion_relevance.pretraining import MaskedPretraining
from motion_relevance.train import build_pretraining


def tiny_videomae(seed: int = 0) -> VideoMAE:
    torch.manual_seed(seed)
    return VideoMAE(num_classes=3, image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def clips(batch: int = 2, frames: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def expanded(mask: torch.Tensor, grid: tuple[int, int, int], tubelet: tuple[int, int, int]) -> torch.Tensor:
    """Token mask (B, N) -> pixel mask (B, 1, T, H, W), by loops."""
    b = mask.shape[0]
    t, h, w = grid
    out = torch.zeros(b, 1, t * tubelet[0], h * tubelet[1], w * tubelet[2], dtype=torch.bool)
    for i in range(b):
        for n in range(t * h * w):
            if mask[i, n]:
                tt, rest = divmod(n, h * w)
                hh, ww = divmod(rest, w)
                out[i, 0, tt * tubelet[0]:(tt + 1) * tubelet[0], hh * tubelet[1]:(hh + 1) * tubelet[1],
                    ww * tubelet[2]:(ww + 1) * tubelet[2]] = True
    return out


# ------------------------------------------------------------------------------------------------ tube masks
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_tube_mask_spans_all_frames_with_the_exact_ratio(ratio: float) -> None:
    grid = (4, 7, 7)
    mask = tube_mask(5, grid, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 4 * 49) and mask.dtype == torch.bool
    per_time = mask.reshape(5, 4, 49)
    for i in range(5):
        for t in range(1, 4):
            assert torch.equal(per_time[i, t], per_time[i, 0])  # a masked position is masked in every time step
        assert int(per_time[i, 0].sum()) == round(ratio * 49)
    assert not all(torch.equal(per_time[0, 0], per_time[i, 0]) for i in range(1, 5))  # drawn per clip


def test_tube_mask_refuses_ratios_that_mask_nothing_or_everything() -> None:
    for ratio in (0.0, 0.005, 0.999, 1.0):
        with pytest.raises(ValueError, match="pretrain.mask_ratio"):
            tube_mask(1, (2, 7, 7), ratio)
    with pytest.raises(ValueError, match="pretrain.mask_ratio"):
        tube_mask(1, (2, 7, 7), 1.5)


# ------------------------------------------------------------------------------------------- targets
def test_patchify_matches_a_loop() -> None:
    x = clips(batch=2, frames=4, size=8)
    tubelet = (2, 4, 2)
    got = patchify(x, tubelet)
    grid = (2, 2, 4)
    assert got.shape == (2, 16, 2 * 4 * 2 * 3)
    for b in range(2):
        for n in range(16):
            t, rest = divmod(n, grid[1] * grid[2])
            h, w = divmod(rest, grid[2])
            ref = [float(x[b, c, t * 2 + dt, h * 4 + dy, w * 2 + dx])
                   for dt in range(2) for dy in range(4) for dx in range(2) for c in range(3)]
            assert got[b, n].tolist() == pytest.approx(ref)
    with pytest.raises(ValueError, match="tubelets"):
        patchify(x, (3, 4, 2))


def test_normalize_targets_matches_numpy() -> None:
    pixels = torch.randn(3, 5, 12, dtype=torch.float64) * 4 + 2
    ref = pixels.numpy()
    ref = (ref - ref.mean(-1, keepdims=True)) / np.sqrt(ref.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalize_targets(pixels).numpy(), ref, rtol=1e-12)


# ------------------------------------------------------------------------------------- masked encoder
def test_masked_encoder_is_the_network_with_mask_tokens() -> None:
    """Hand-written reference: tubelet embedding, masked tokens replaced, position table, blocks."""
    net = tiny_videomae()
    model = MaskedVideoModel(net)
    x = clips()
    mask = tube_mask(2, model.grid, 0.5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(x, mask)  # runs the hooks once
        tokens = net.videomae.embeddings.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
        tokens = torch.where(mask.unsqueeze(-1), model.mask_token, tokens)
        hidden = tokens + net.videomae.embeddings.position_embeddings
        for block in net.videomae.encoder.layer:
            hidden = block(hidden)
        target = normalize_targets(patchify(x, model.tubelet))
        per_token = ((model.head(hidden) - target) ** 2).mean(-1)
        ref = per_token[mask].mean()
        assert float(model(x, mask)) == pytest.approx(float(ref), rel=1e-5)


def _prediction_ignores_masked_pixels(net: torch.nn.Module) -> None:
    model = MaskedVideoModel(net, norm_targets=False).eval()
    x = clips()
    mask = tube_mask(2, model.grid, 0.5, torch.Generator().manual_seed(4))
    changed = torch.where(expanded(mask, model.grid, model.tubelet), torch.randn_like(x) * 5, x)
    visible_changed = torch.where(expanded(~mask, model.grid, model.tubelet), torch.randn_like(x) * 5, x)
    assert not torch.equal(changed, x)
    seen = []
    hook = model.head.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        for clip in (x, changed, visible_changed):
            model(clip, mask)
    hook.remove()
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-5, atol=1e-5)  # masked pixels never reach the encoder
    assert not torch.allclose(seen[2], seen[0], rtol=1e-3, atol=1e-3)  # visible pixels do


def test_videomae_prediction_does_not_see_masked_tubes() -> None:
    _prediction_ignores_masked_pixels(tiny_videomae())


def test_remove_restores_the_classifier() -> None:
    net = tiny_videomae().eval()
    x = clips()
    before = net(x).detach()
    model = MaskedVideoModel(net)
    model(x, tube_mask(2, model.grid, 0.5))
    model.remove()
    torch.testing.assert_close(net(x).detach(), before)
    with pytest.raises(RuntimeError, match="remove"):
        model(x, tube_mask(2, model.grid, 0.5))


def test_masked_model_refuses_bad_masks_and_networks() -> None:
    model = MaskedVideoModel(tiny_videomae())
    with pytest.raises(ValueError, match="mask must be bool"):
        model(clips(), torch.zeros(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        model(clips(), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="drop pretrain="):
        MaskedVideoModel(C3D(num_classes=3))


# ---------------------------------------------------------------------------------------- HF models
HF_ARCHS = ["VideoMAEForVideoClassification", "VivitForVideoClassification", "TimesformerForVideoClassification"]


def tiny_hf(arch: str) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    from motion_relevance.models.hf import from_transformers

    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_labels": 3,
              "image_size": 16, "num_frames": 4, "intermediate_size": 64}
    config = {
        "VideoMAEForVideoClassification": lambda: transformers.VideoMAEConfig(patch_size=8, tubelet_size=2, **common),
        "VivitForVideoClassification": lambda: transformers.VivitConfig(tubelet_size=[2, 8, 8], **common),
        "TimesformerForVideoClassification": lambda: transformers.TimesformerConfig(patch_size=8, **common),
    }[arch]()
    torch.manual_seed(0)
    return from_transformers(getattr(transformers, arch)(config))


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_hf_prediction_does_not_see_masked_tubes(arch: str) -> None:
    _prediction_ignores_masked_pixels(tiny_hf(arch))


# ------------------------------------------------------------------------------------------- the loop
def test_pretraining_lowers_the_loss_and_trains_the_network_in_place() -> None:
    net = tiny_videomae()
    x = clips(batch=4)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    pre = MaskedPretraining(epochs=3, mask_ratio=0.5, lr=3e-3, warmup_epochs=0.5, seed=0)
    numbers = pre.fit(net, [{"clip": x}] * 8)
    assert numbers["pretrain/steps"] == 24
    assert numbers["pretrain/loss"] < numbers["pretrain/loss_first"]
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, first[k])]
    assert "videomae.embeddings.patch_embeddings.projection.weight" in changed
    assert set(net.state_dict()) == set(first)  # no mask token or head left behind
    assert not net.videomae.embeddings.patch_embeddings._forward_hooks


def test_learning_rate_warms_up_then_decays_as_a_cosine() -> None:
    pre = MaskedPretraining(epochs=2, lr=0.01)
    assert pre._lr(0, 4, 20) == pytest.approx(0.0025)
    assert pre._lr(3, 4, 20) == pytest.approx(0.01)
    assert pre._lr(12, 4, 20) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert pre._lr(20, 4, 20) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("key", "value"), [
    ("epochs", 0), ("mask_ratio", 1.0), ("mask_ratio", 0.0), ("lr", -1.0), ("weight_decay", -0.1),
    ("warmup_epochs", 5.0), ("norm_targets", "yes"), ("max_steps", 0), ("seed", 1.5),
])
def test_pretraining_settings_are_checked(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"pretrain.{key}"):
        MaskedPretraining(**{"epochs": 2, key: value})


def test_check_net_refuses_a_cnn_and_a_ratio_that_masks_nothing() -> None:
    with pytest.raises(ValueError, match="drop pretrain="):
        MaskedPretraining().check_net(C3D(num_classes=3))
    with pytest.raises(ValueError, match="pretrain.mask_ratio"):
        MaskedPretraining(mask_ratio=0.1).check_net(tiny_videomae())  # 4 positions: round(0.4) = 0


# ------------------------------------------------------------------------------------------- config
def test_pretrain_config_builds_and_is_refused_with_resume_or_test_only(train_cfg) -> None:
    cfg = train_cfg("model=videomae_tiny", "pretrain=mae", "pretrain.epochs=3")
    pre = build_pretraining(cfg)
    assert isinstance(pre, MaskedPretraining) and pre.epochs == 3 and pre.mask_ratio == 0.75
    assert build_pretraining(train_cfg("model=videomae_tiny")) is None
    with open_dict(cfg):
        cfg.ckpt_path = "last.ckpt"
    with pytest.raises(ValueError, match="ckpt_path"):
        build_pretraining(cfg)
    cfg = train_cfg("model=videomae_tiny", "pretrain=mae", "train=false")
    with pytest.raises(ValueError, match="train=false"):
        build_pretraining(cfg)
    with pytest.raises(Exception, match="pretrain.mask_ratio"):
        build_pretraining(train_cfg("model=videomae_tiny", "pretrain=mae", "pretrain.mask_ratio=1.0"))


def test_mr_train_pretrains_then_trains_and_records_the_numbers(train_cfg) -> None:
    from motion_relevance.train import train

    cfg = train_cfg("model=videomae_tiny", "pretrain=mae", "pretrain.epochs=1", "pretrain.max_steps=2",
                    "trainer.max_epochs=1", "test=false")
    metrics, objects = train(cfg)
    assert metrics["pretrain/steps"] == 2
    assert math.isfinite(metrics["pretrain/loss"])
    net = objects["model"].net
    assert not net.videomae.embeddings.patch_embeddings._forward_hooks  # the classifier trains without the mask
    assert "val/acc" in metrics
