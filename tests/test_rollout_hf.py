"""Attention rollout on transformers' video classifiers (models.hf) through canonization by tracing.

References: our own VideoMAE (every softmax an nn.Softmax module) with the same weights, and rollouts written by
hand with loops from the attention probabilities transformers itself returns (``output_attentions=True``, or the
attention layers' own outputs where the model does not return them: TimeSformer's time attention, V-JEPA 2's
pooler), mapped to voxels by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from motion_relevance.explain.transformer import AttentionRollout  # noqa: E402
from motion_relevance.models import from_transformers  # noqa: E402
from motion_relevance.models.hf import SUPPORTED  # noqa: E402
from motion_relevance.models.videomae import VideoMAE  # noqa: E402

FRAMES, SIZE, PATCH, CLASSES = 4, 16, 8, 3
TUBELET = {"VideoMAEForVideoClassification": 2, "TimesformerForVideoClassification": 1,
           "VivitForVideoClassification": 2, "VJEPA2ForVideoClassification": 2}


def config(arch: str, layers: int, **extra: object) -> object:
    common = {"hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2, "num_labels": CLASSES,
              **extra}
    if arch == "VideoMAEForVideoClassification":
        return transformers.VideoMAEConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2,
                                           intermediate_size=64, **common)
    if arch == "TimesformerForVideoClassification":
        return transformers.TimesformerConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES,
                                              intermediate_size=64, **common)
    if arch == "VivitForVideoClassification":
        return transformers.VivitConfig(image_size=SIZE, tubelet_size=[2, PATCH, PATCH], num_frames=FRAMES,
                                        intermediate_size=64, **common)
    return transformers.VJEPA2Config(crop_size=SIZE, patch_size=PATCH, frames_per_clip=FRAMES, tubelet_size=2,
                                     mlp_ratio=2.0, pred_hidden_size=16, pred_num_hidden_layers=1,
                                     pred_num_attention_heads=2, num_pooler_layers=1, **common)


def tiny(arch: str, layers: int = 1, seed: int = 0, **extra: object) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config(arch, layers, **extra)).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():  # larger weights: attention far from uniform, so a wrong mixing shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def clips(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, type], int, dict]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = {name: type(m) for name, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return state, classes, hooks, dict(vars(model.config))


def same(before: tuple, after: tuple) -> bool:
    return (before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
            and before[1:] == after[1:])


# ------------------------------------------------------------------------------------------- hand-written rollout
def transformers_attentions(model: nn.Module, arch: str, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """(kind, probabilities (B', heads, a, b)) of every attention in the order it runs, as transformers returns
    them."""
    inputs = {SUPPORTED[arch].input_name: x.permute(0, 2, 1, 3, 4).contiguous()}
    extra: list[tuple[str, torch.Tensor]] = []
    handles = []
    divided = arch == "TimesformerForVideoClassification" and model.config.attention_type == "divided_space_time"
    if divided:  # the time attention's probabilities are not returned: ask
        for block in model.timesformer.encoder.layer:
            handles.append(block.temporal_attention.register_forward_pre_hook(
                lambda _m, args, kwargs: (args, {**kwargs, "output_attentions": True}), with_kwargs=True))
            handles.append(block.temporal_attention.register_forward_hook(
                lambda _m, _i, out: extra.append(("time", out[1]))))
    if arch == "VJEPA2ForVideoClassification":  # the pooler's attention layers return their probabilities
        for layer in model.pooler.self_attention_layers:
            handles.append(layer.register_forward_hook(lambda _m, _i, out: extra.append(("joint", out[1]))))
        handles.append(model.pooler.cross_attention_layer.register_forward_hook(
            lambda _m, _i, out: extra.append(("query", out[1]))))
    try:
        with torch.no_grad():
            returned = model(**inputs, output_attentions=True).attentions
    finally:
        for handle in handles:
            handle.remove()
    out: list[tuple[str, np.ndarray]] = []
    if divided:
        assert len(returned) == len(extra)
        for time, space in zip(extra, returned):  # each block: time attention, then space attention
            out += [("time", time[1].double().numpy()), ("space", space.double().numpy())]
        return out
    out = [("joint", a.double().numpy()) for a in returned]
    return out + [(kind, a.double().numpy()) for kind, a in extra]


def divided_matrix(kind: str, probs: np.ndarray, b: int, frames: int, positions: int) -> np.ndarray:
    """TimeSformer's time or space attention of clip b as one matrix over [CLS, patches in (h, w, t) order]."""
    n = 1 + frames * positions
    a = np.zeros((n, n))

    def tok(t: int, s: int) -> int:
        return 1 + s * frames + t

    if kind == "time":  # groups: spatial positions s, entries over frames
        a[0, 0] = 1.0
        for s in range(positions):
            fused = probs[b * positions + s].mean(0)
            for t in range(frames):
                for u in range(frames):
                    a[tok(t, s), tok(u, s)] = fused[t, u]
        return a
    for t in range(frames):  # groups: frames t, entries over [CLS, positions of frame t]
        fused = probs[b * frames + t].mean(0)
        a[0, 0] += fused[0, 0] / frames  # the CLS output is the mean over frames of its per-frame outputs
        for s in range(positions):
            a[0, tok(t, s)] += fused[0, 1 + s] / frames
            a[tok(t, s), 0] = fused[1 + s, 0]
            for s2 in range(positions):
                a[tok(t, s), tok(t, s2)] = fused[1 + s, 1 + s2]
    return a


def rollout_by_hand(arch: str, attentions: list[tuple[str, np.ndarray]], batch: int) -> np.ndarray:
    """(B, T, H, W) voxel maps: A_hat = (0.5 A + 0.5 I) / row sums per attention, multiplied in running order,
    read out as the classifier reads the tokens, class token dropped, each token's value over its own voxels."""
    tub = TUBELET[arch]
    t_, h_, w_ = FRAMES // tub, SIZE // PATCH, SIZE // PATCH
    prefix = 1 if arch in ("TimesformerForVideoClassification", "VivitForVideoClassification") else 0
    n = prefix + t_ * h_ * w_
    out = np.zeros((batch, FRAMES, SIZE, SIZE))
    for b in range(batch):
        rollout = np.eye(n)
        readout = None
        for kind, probs in attentions:
            if kind == "query":
                readout = probs[b].mean(0)[0]
                continue
            a = probs[b].mean(0) if kind == "joint" else divided_matrix(kind, probs, b, t_, h_ * w_)
            a_hat = 0.5 * a + 0.5 * np.eye(n)
            a_hat /= a_hat.sum(1, keepdims=True)
            rollout = a_hat @ rollout
        if readout is not None:
            row = readout @ rollout
        elif arch == "VideoMAEForVideoClassification":
            row = rollout.mean(0)
        else:
            row = rollout[0]
        for t in range(t_):
            for h in range(h_):
                for w in range(w_):
                    s = h * w_ + w
                    index = prefix + (s * t_ + t if arch == "TimesformerForVideoClassification" else t * h_ * w_ + s)
                    out[b, t * tub:(t + 1) * tub, h * PATCH:(h + 1) * PATCH, w * PATCH:(w + 1) * PATCH] = row[index]
    return out


# ------------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("mean_pooling", [True, False])
def test_rollout_on_transformers_videomae_equals_our_videomae(mean_pooling: bool) -> None:
    hf = tiny("VideoMAEForVideoClassification", layers=2, use_mean_pooling=mean_pooling)
    ours = VideoMAE(num_classes=CLASSES, image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2,
                    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    use_mean_pooling=mean_pooling).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    net, x = from_transformers(hf), clips()
    with torch.no_grad():
        torch.testing.assert_close(net(x), ours(x), rtol=1e-5, atol=1e-5)
    want, got = AttentionRollout()(ours, x), AttentionRollout()(net, x)
    assert float(want.std()) > 1e-3  # not uniform
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for kwargs in ({"head_fusion": "max"}, {"discard_ratio": 0.5}) if mean_pooling else ():
        torch.testing.assert_close(AttentionRollout(**kwargs)(net, x), AttentionRollout(**kwargs)(ours, x),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch, layers, extra", [
    *((arch, 1, {}) for arch in TUBELET),
    ("TimesformerForVideoClassification", 2, {}),
    ("TimesformerForVideoClassification", 1, {"attention_type": "joint_space_time"}),  # tokens in (h, w, t) order
])
def test_rollout_equals_a_hand_written_rollout_of_transformers_attentions(arch: str, layers: int, extra: dict) -> None:
    model = tiny(arch, layers, **extra)
    net, x = from_transformers(model), clips()
    attentions = transformers_attentions(model, arch, x)
    kinds = [kind for kind, _ in attentions]
    expected_kinds = {"TimesformerForVideoClassification": ["time", "space"] * layers,
                      "VJEPA2ForVideoClassification": ["joint"] * (layers + 1) + ["query"]}
    assert kinds == (["joint"] * layers if extra else expected_kinds.get(arch, ["joint"] * layers))
    got = AttentionRollout()(net, x)
    assert got.shape == (2, 1, FRAMES, SIZE, SIZE)
    want = rollout_by_hand(arch, attentions, 2)
    assert float(want.std()) > 1e-3
    np.testing.assert_allclose(got[:, 0].double().numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", ["hf_timesformer_tiny", *(pytest.param(m, marks=pytest.mark.slow) for m in (
    "hf_videomae_tiny", "hf_vivit_tiny", "hf_vjepa2_tiny"))])
def test_rollout_runs_on_the_tiny_configs_and_leaves_the_model_as_it_was(tmp_path: Path, model: str) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config("train", [f"model={model}", "data.clip_len=8", "data.crop_size=32"], tmp_path)
    net = instantiate(cfg.model.net, num_classes=2).eval()
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    before, before_net = snapshot(net.hf), {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        logits = net(x)
    explainer = AttentionRollout()
    relevance = explainer(net, x)
    assert relevance.shape == (2, 1, 8, 32, 32) and relevance.dtype == x.dtype
    assert bool((relevance >= 0).all()) and float(relevance.amax()) > 0
    tubelet, patch = net.tubelet_size, net.patch_size[0]
    grid = relevance[:, 0, ::tubelet, ::patch, ::patch]  # one value per token
    total = grid.sum((1, 2, 3))
    class_token = model in ("hf_timesformer_tiny", "hf_vivit_tiny")
    assert bool((total <= 1 + 1e-5).all()) and (bool((total < 1).all()) if class_token else
                                                 torch.allclose(total, torch.ones(2), atol=1e-5))
    torch.testing.assert_close(explainer(net, x), relevance, rtol=0, atol=0)  # again: the cached canonization
    assert same(before, snapshot(net.hf))
    assert {k: v for k, v in net.state_dict().items()}.keys() == before_net.keys()
    assert not any(isinstance(m, nn.Softmax) for m in net.modules())  # the canonized copy is not the model
    with torch.no_grad():
        assert torch.equal(net(x), logits)


def test_rollout_without_canonization_refuses_transformers_models_naming_the_fix() -> None:
    net = from_transformers(tiny("VivitForVideoClassification"))
    with pytest.raises(ValueError, match=r"no attention softmax.*pass canonize=True"):
        AttentionRollout(canonize=False)(net, clips())


def test_rollout_refuses_models_without_attention_naming_the_fix() -> None:
    class Tokens(nn.Module):  # a token model without attention (functional ops: canonization runs, finds none)
        tubelet_size, patch_size = 2, 8

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv3d(3, 4, (2, 8, 8), (2, 8, 8))
            self.head = nn.Linear(4, 3)

        def token_grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
            return shape[-3] // 2, shape[-2] // 8, shape[-1] // 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.embed(x)).flatten(2).mean(2))

    with pytest.raises(ValueError, match=r"no attention softmax.*explain models with attention"):
        AttentionRollout()(Tokens(), clips())

    class Cnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv3d(3, 4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).mean((2, 3, 4)))

    with pytest.raises(TypeError, match="not a token model"):
        AttentionRollout()(Cnn(), clips())


@pytest.mark.slow
def test_mr_explain_runs_rollout_on_a_transformers_timesformer_checkpoint(tmp_path: Path, data_root: Path) -> None:
    from motion_relevance.explain_app import explain
    from motion_relevance.train import train
    from tests.conftest import TINY_DATA, compose_config

    common = [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", "logger=csv",
              "~callbacks.progress_bar", *TINY_DATA]
    train_cfg = compose_config("train", [*common, "model=hf_timesformer_tiny", "callbacks=default",
                                         "trainer.max_epochs=1", "test=false"], tmp_path / "train")
    train(train_cfg)
    ckpt = Path(train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = compose_config("explain", [*common, f"ckpt_path={ckpt}", "num_clips=2", "~explainers.dtd", "~explainers.gbp",
                                     "~explainers.guided_gradcam", "+explainer@explainers.rollout=rollout",
                                     "objective.method=gradcam", "faithfulness=none", "randomization=none",
                                     "flow=none", "cache=none"], tmp_path / "explain")
    metrics, _ = explain(cfg)
    assert float(metrics["test/explained_clips"]) == 2
    keys = [k for k in metrics if k.endswith("/rollout")]
    assert "test/gt_precision/rollout" in keys, sorted(metrics)


class _FunctionalSoftmax(nn.Module):
    """A softmax that is no nn.Softmax: the attention it computes is invisible to rollout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(-1)


@pytest.mark.parametrize("arch, path, match", [
    ("TimesformerForVideoClassification", "hf.timesformer.encoder.layer.0.temporal_attention.attention.softmax",
     r"found 0 time and 1 space attentions under 'hf.timesformer.encoder.layer'"),
    ("VJEPA2ForVideoClassification", "hf.pooler.cross_attention_layer.cross_attn.softmax",
     r"one cross-attention from the pooler's query to the 8 tokens, found 0"),
])
def test_rollout_refuses_a_layout_with_an_attention_it_cannot_see(arch: str, path: str, match: str) -> None:
    from motion_relevance.explain import canonize

    x = clips()
    model = canonize(from_transformers(tiny(arch)), x, strict=False)  # every softmax an nn.Softmax: taken as is
    parent, _, child = path.rpartition(".")
    assert isinstance(model.get_submodule(path), nn.Softmax)
    model.get_submodule(parent).add_module(child, _FunctionalSoftmax())
    with pytest.raises(ValueError, match=match):
        AttentionRollout()(model, x)
