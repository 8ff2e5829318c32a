"""SlowFast R50 against an independent transcription of pytorchvideo's ``slowfast_r50`` layout and forward."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from torch import nn

from motion_relevance.models import SlowFast, slowfast_r50
from motion_relevance.models.layers import Add, Concat
from motion_relevance.models.published import load_published
from motion_relevance.models.slowfast import pack_pathways
from tests import _layouts as L
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def published() -> tuple[SlowFast, dict[str, torch.Tensor]]:
    """The full-size net (head kernels for 8-frame 64x64 fast clips) with a random transcribed state dict."""
    sd = L.random_state_dict(L.slowfast_layout(), seed=0)
    with torch.device("meta"):
        net = slowfast_r50(clip_len=8, crop_size=64, init="default")
    net.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True, assign=True)
    return net.eval(), sd


def _pair(batch: int, frames: int, side: int, seed: int = 0) -> list[torch.Tensor]:
    clip = torch.randn(batch, 3, frames, side, side, generator=torch.Generator().manual_seed(seed))
    return pack_pathways(clip, 4)


def test_keys_shapes_and_parameter_count_equal_the_transcription() -> None:
    layout = L.slowfast_layout()
    with torch.device("meta"):
        net = slowfast_r50(init="default")
    assert L.state_signature(net) == layout
    n = sum(p.numel() for p in net.parameters())
    assert n == L.parameter_count(layout)
    assert round(n / 1e6, 2) == L.PYTORCHVIDEO_PARAMS_M["slowfast_r50"]
    assert net.head_pool_kernels == ((8, 7, 7), (32, 7, 7))  # pytorchvideo's head_pool_kernel_sizes


@pytest.mark.parametrize("side", [64, 96])
def test_logits_equal_the_functional_forward(side: int, published) -> None:
    """64: the pooled maps are 1x1x1; 96: 2x2 pooled positions, projected one by one and averaged (pytorchvideo)."""
    net, sd = published
    slow, fast = _pair(2, 8, side)
    with torch.no_grad():
        ours = net([slow, fast])
        ref = L.slowfast_forward(sd, slow, fast, ((2, 2, 2), (8, 2, 2)))
    assert ours.shape == (2, 400) and ref.abs().max() > 0.1
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("side", [224, 256])
def test_logits_equal_the_functional_forward_at_kinetics_size(side: int) -> None:
    sd = L.random_state_dict(L.slowfast_layout(), seed=1)
    with torch.device("meta"):
        net = slowfast_r50(init="default")
    net.load_state_dict(sd, strict=True, assign=True)
    slow, fast = _pair(1, 32, side, seed=2)
    with torch.no_grad():
        ours = net.eval()([slow, fast])
        ref = L.slowfast_forward(sd, slow, fast, ((8, 7, 7), (32, 7, 7)))
    assert (ours - ref).abs().max().item() <= 1e-4


def test_pack_pathways_follows_pytorchvideo() -> None:
    clip = torch.arange(16.0).view(1, 1, 16, 1, 1).expand(2, 3, 16, 4, 4).contiguous()
    slow, fast = pack_pathways(clip, 4)
    assert fast is clip
    assert slow[0, 0, :, 0, 0].tolist() == [0.0, 5.0, 10.0, 15.0]  # linspace(0, 15, 4).long()
    slow4, _ = pack_pathways(clip[0], 4)  # (C, T, H, W)
    assert torch.equal(slow4, slow[0])
    assert pack_pathways(clip[:, :, :10], 4)[0][0, 0, :, 0, 0].tolist() == [0.0, 9.0]
    with pytest.raises(ValueError, match="fewer than alpha"):
        pack_pathways(clip[:, :, :3], 4)
    with pytest.raises(ValueError, match="model.alpha"):
        pack_pathways(clip, 0)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        pack_pathways(clip[0, 0], 4)


def test_one_tensor_is_refused_naming_alpha_beta_and_the_pair(published) -> None:
    net, _ = published
    with pytest.raises(ValueError, match=r"alpha=4.*beta=0.125.*pack_pathways\(clip, alpha=4\)"):
        net(torch.randn(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match="alpha"):
        net([torch.randn(1, 3, 8, 64, 64)])
    slow, fast = _pair(1, 8, 64)
    with pytest.raises(ValueError, match="temporal stride alpha"):  # slow pathway at the wrong frame rate
        net([fast[:, :, :4], fast])
    with pytest.raises(ValueError, match="differ in batch or frame size"):
        net([slow[:, :, :, :32, :32], fast])
    with pytest.raises(ValueError, match="head_pool=adaptive"):  # smaller than the fixed head kernel
        net(_pair(1, 8, 32))


def test_adaptive_head_takes_any_size() -> None:
    net = SlowFast(num_classes=3, width=0.125, depth=18, beta=0.25, head_pool="adaptive").eval()
    with torch.no_grad():
        assert net(_pair(1, 8, 24)).shape == (1, 3) and net(_pair(2, 12, 40)).shape == (2, 3)


def test_structure_for_relevance_propagation(published) -> None:
    net, _ = published
    run = lambda: net(_pair(1, 8, 64))  # noqa: E731
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert not any(m.inplace for m in relus)
    assert len(list(net.named_modules(remove_duplicate=False))) == len(list(net.named_modules()))
    counts = L.call_counts(net, run, (nn.ReLU, Add, Concat))
    assert set(counts.values()) == {1}
    adds = [n for n in counts if n.endswith(".add")]
    concats = [n for n in counts if isinstance(net.get_submodule(n), Concat)]
    assert len(adds) == 2 * (3 + 4 + 6 + 3)
    assert concats == [f"blocks.{i}.multipathway_fusion.concat" for i in range(4)] + ["blocks.5.concat"]
    # residual sums: branch2 first, shortcut second
    block = "blocks.2.multipathway_blocks.1.res_blocks.0"
    seen = L.record_io(net, run, [f"{block}.add", f"{block}.branch2", f"{block}.branch1_norm",
                                  "blocks.1.multipathway_blocks.0.res_blocks.1.add",
                                  "blocks.1.multipathway_blocks.0.res_blocks.1", "blocks.1.multipathway_fusion.concat",
                                  "blocks.1.multipathway_blocks.0", "blocks.1.multipathway_fusion.activation"])
    assert seen[f"{block}.add"][0][0] is seen[f"{block}.branch2"][1]
    assert seen[f"{block}.add"][0][1] is seen[f"{block}.branch1_norm"][1]
    identity_block = "blocks.1.multipathway_blocks.0.res_blocks.1"
    assert seen[f"{identity_block}.add"][0][1] is seen[identity_block][0][0]
    # lateral fusion: the slow pathway's output first, the fused fast features second
    (slow_in, fused), _ = seen["blocks.1.multipathway_fusion.concat"]
    assert slow_in is seen["blocks.1.multipathway_blocks.0"][1]
    assert fused is seen["blocks.1.multipathway_fusion.activation"][1]
    assert isinstance(net.get_submodule("blocks.4.multipathway_fusion"), nn.Identity)


def test_every_batchnorm_directly_follows_its_conv(published) -> None:
    net, _ = published
    pairs = net.conv_bn_pairs()
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    seen = L.record_io(net, lambda: net(_pair(1, 8, 64)), sorted({p for pair in pairs for p in pair}))
    for conv, bn in pairs:
        assert seen[bn][0][0] is seen[conv][1], (conv, bn)
    assert ("blocks.0.multipathway_fusion.conv_fast_to_slow", "blocks.0.multipathway_fusion.norm") in pairs


def test_attributes(published) -> None:
    net, _ = published
    assert (net.num_classes, net.alpha, net.beta) == (400, 4, 0.125)
    assert net.explain_layer == net.explain_layers["fast"]
    for path in net.explain_layers.values():
        net.get_submodule(path)
    assert net.head_name == "blocks.6.proj" and net.get_submodule(net.head_name).in_features == 2304


def test_training_on_random_tensors_lowers_the_loss() -> None:
    """A small SlowFast fits 8 random clip pairs (labels at random): the training path works end to end."""
    torch.manual_seed(0)
    net = SlowFast(num_classes=4, width=0.125, beta=0.25, depth=18, head_pool="adaptive", dropout=0.0)
    pair = _pair(8, 8, 24, seed=3)
    labels = torch.arange(8) % 4
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(net(pair), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert all(p.grad is not None for p in net.parameters())


def test_load_published_checkpoint_and_reinit_the_head(tmp_path: Path) -> None:
    small = SlowFast(num_classes=400, width=0.25, head_pool="adaptive")
    sd = L.random_state_dict(L.state_signature(small), seed=4)
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": sd, "epoch": 196}, path)  # pytorchvideo's checkpoint container
    net = SlowFast(num_classes=5, width=0.25, head_pool="adaptive", pretrained=str(path))
    own = net.state_dict()
    assert own["blocks.6.proj.weight"].shape == (5, 512 + 64)
    assert torch.equal(own["blocks.3.multipathway_fusion.conv_fast_to_slow.weight"],
                       sd["blocks.3.multipathway_fusion.conv_fast_to_slow.weight"])
    with pytest.raises(ValueError, match="most resemble the layout of slowfast_r50"):
        load_published(SlowFast(width=0.25, beta=0.25, head_pool="adaptive"), path)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"alpha": 0}, "model.alpha"),
        ({"beta": 0.3}, "model.beta"),
        ({"beta": 2.0}, "model.beta"),
        ({"fusion_kernel": 6}, "model.fusion_kernel"),
        ({"fusion_ratio": 0}, "model.fusion_ratio"),
        ({"depth": 34}, "model.depth"),
        ({"width": 0.1}, "model.width"),
        ({"head_pool": "max"}, "model.head_pool"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"clip_len": 2}, "model.clip_len"),
        ({"num_classes": -1}, "model.num_classes"),
        ({"init": "zeros"}, "model.init"),
    ],
)
def test_bad_constructor_arguments_name_the_key(kwargs: dict, key: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SlowFast(**{"init": "default", **kwargs})


@pytest.mark.parametrize("name", ["slowfast_r50", "slowfast_small"])
def test_configs_declare_layer_and_preprocessing(name: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={name}", "model.net.num_classes=4", "model.net.init=default"], tmp_path)
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, SlowFast) and net.num_classes == 4
    assert cfg.model.explain_layer is None and net.explain_layer == net.explain_layers["fast"]  # the class's
    assert cfg.model.pretrained is None
    assert set(net.state_dict()) == set(L.slowfast_layout())  # small variants keep the keys
    pre = cfg.model.preprocessing
    assert pre.pathways.alpha == net.alpha == 4  # mr-train copies it into data.pathways: the data feeds [slow, fast]
    if name == "slowfast_small":
        assert set(pre) == {"pathways", "channel_shuffle"} and net.head_pool_kernels is None  # data's own mean/std
    else:
        assert list(pre.mean) == [0.45] * 3 and list(pre.std) == [0.225] * 3
        assert (pre.scale, pre.channel_order, pre.clip_len, pre.crop_size) == (255, "RGB", 32, 256)
