"""X3D-XS / X3D-S against an independent transcription of pytorchvideo's ``x3d_xs`` / ``x3d_s`` layout and forward."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from torch import nn

from motion_relevance.models import X3D, x3d_s, x3d_xs
from motion_relevance.models.layers import Add, GateMul
from motion_relevance.models.published import load_published
from tests import _layouts as L
from tests.conftest import compose_config


def _loaded(sd: dict[str, torch.Tensor], **kwargs) -> X3D:
    with torch.device("meta"):
        net = X3D(init="default", **kwargs)
    net.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True, assign=True)
    return net


@pytest.fixture(scope="module")
def published() -> tuple[X3D, dict[str, torch.Tensor]]:
    """The full-size net (head kernel for 4x64x64 clips) with a random transcribed state dict (eval mode)."""
    sd = L.random_state_dict(L.x3d_layout(), seed=0)
    return _loaded(sd, clip_len=4, crop_size=64).eval(), sd


def _clip(batch: int, frames: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, side, side, generator=torch.Generator().manual_seed(seed))


def test_keys_shapes_and_parameter_count_equal_the_transcription() -> None:
    layout = L.x3d_layout()
    with torch.device("meta"):
        xs, s = x3d_xs(init="default"), x3d_s(init="default")
    assert L.state_signature(xs) == layout == L.state_signature(s)
    n = sum(p.numel() for p in xs.parameters())
    assert n == L.parameter_count(layout)
    assert round(n / 1e6, 2) == L.PYTORCHVIDEO_PARAMS_M["x3d_xs"] == L.PYTORCHVIDEO_PARAMS_M["x3d_s"]
    assert xs.stage_depths == (3, 5, 11, 7)
    assert xs.head_pool_kernel == (4, 5, 5) and s.head_pool_kernel == (13, 5, 5)


@pytest.mark.parametrize("side", [64, 96])
def test_logits_equal_the_functional_forward(side: int, published) -> None:
    """64: the pooled map is 1x1x1; 96: 2x2 pooled positions, projected one by one and averaged (pytorchvideo)."""
    net, sd = published
    x = _clip(2, 4, side)
    with torch.no_grad():
        ours, ref = net(x), L.x3d_forward(sd, x, clip_len=4, crop_size=64)
    assert ours.shape == (2, 400) and ref.abs().max() > 0.1
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "frames", "side"), [(x3d_xs, 4, 160), (x3d_xs, 4, 182), (x3d_s, 13, 182)])
def test_logits_equal_the_functional_forward_at_kinetics_size(factory, frames: int, side: int) -> None:
    sd = L.random_state_dict(L.x3d_layout(), seed=1)
    with torch.device("meta"):
        net = factory(init="default")
    net.load_state_dict(sd, strict=True, assign=True)
    x = _clip(1, frames, side, seed=2)
    with torch.no_grad():
        ours, ref = net.eval()(x), L.x3d_forward(sd, x, clip_len=frames, crop_size=160)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_training_mode_batchnorm_is_unchanged(published) -> None:
    _, sd = published
    net = _loaded(sd, clip_len=4, crop_size=64, dropout=0.0).train()
    ref_sd = {k: v.clone() for k, v in sd.items()}
    x = _clip(2, 4, 64, seed=3)
    with torch.no_grad():
        ours = net(x)
        ref = L.x3d_forward(ref_sd, x, clip_len=4, crop_size=64, training=True)
    assert (ours - ref).abs().max().item() <= 1e-4
    own = net.state_dict()
    for key in ("blocks.0.norm.running_mean", "blocks.3.res_blocks.4.branch2.norm_b.0.running_var",
                "blocks.5.pool.pre_norm.running_mean"):
        assert not torch.equal(own[key], sd[key]) and torch.allclose(own[key], ref_sd[key], atol=1e-5)


def test_structure_for_relevance_propagation(published) -> None:
    net, _ = published
    run = lambda: net(_clip(1, 4, 64))  # noqa: E731
    assert not any(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    assert len(list(net.named_modules(remove_duplicate=False))) == len(list(net.named_modules()))
    counts = L.call_counts(net, run, (nn.ReLU, nn.SiLU, Add, GateMul))
    assert set(counts.values()) == {1}
    kinds = {t: [n for n in counts if isinstance(net.get_submodule(n), t)] for t in (nn.SiLU, Add, GateMul, nn.ReLU)}
    assert len(kinds[nn.SiLU]) == len(kinds[Add]) == 3 + 5 + 11 + 7  # one Swish and one sum per block
    assert len(kinds[GateMul]) == 2 + 3 + 6 + 4  # squeeze-excitation in blocks 0, 2, 4, …
    assert "blocks.1.res_blocks.0.branch2.norm_b.1.gate" in kinds[GateMul]
    assert isinstance(net.get_submodule("blocks.1.res_blocks.1.branch2.norm_b.1"), nn.Identity)
    # gate: the BatchNorm's output first, the sigmoid gate second; sums: branch2 first, shortcut second
    se = "blocks.2.res_blocks.2.branch2.norm_b"
    blk = "blocks.2.res_blocks.0"
    paths = [f"{se}.1.gate", f"{se}.0", f"{se}.1.block", f"{blk}.add", f"{blk}.branch2", f"{blk}.branch1_norm",
             "blocks.1.res_blocks.0.add", "blocks.1.res_blocks.0.branch1_conv"]
    seen = L.record_io(net, run, paths)
    gate_in, gate = seen[f"{se}.1.gate"][0]
    assert gate_in is seen[f"{se}.0"][1] and gate is seen[f"{se}.1.block"][1] and gate.shape[2:] == (1, 1, 1)
    assert seen[f"{blk}.add"][0][0] is seen[f"{blk}.branch2"][1]
    assert seen[f"{blk}.add"][0][1] is seen[f"{blk}.branch1_norm"][1]
    # stage 1 keeps its width: the strided shortcut is a conv without BatchNorm, as pytorchvideo builds it
    assert seen["blocks.1.res_blocks.0.add"][0][1] is seen["blocks.1.res_blocks.0.branch1_conv"][1]


def test_every_batchnorm_directly_follows_its_conv(published) -> None:
    net, _ = published
    pairs = net.conv_bn_pairs()
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    seen = L.record_io(net, lambda: net(_clip(1, 4, 64)), sorted({p for pair in pairs for p in pair}))
    for conv, bn in pairs:
        assert seen[bn][0][0] is seen[conv][1], (conv, bn)
    assert ("blocks.0.conv.conv_xy", "blocks.0.norm") in pairs
    assert ("blocks.1.res_blocks.0.branch2.conv_b", "blocks.1.res_blocks.0.branch2.norm_b.0") in pairs


def test_fixed_head_refuses_small_clips_and_adaptive_takes_any() -> None:
    fixed = X3D(num_classes=3, width_factor=0.5, head_dim_out=32, clip_len=4, crop_size=64).eval()
    assert fixed.head_pool_kernel == (4, 2, 2)
    with torch.no_grad(), pytest.raises(ValueError, match="head_pool=adaptive"):
        fixed(_clip(1, 4, 32))
    small = X3D(num_classes=3, width_factor=0.5, head_dim_out=32, head_pool="adaptive").eval()
    with torch.no_grad():
        assert small(_clip(2, 3, 20)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        small(torch.randn(3, 4, 16, 16))
    with pytest.raises(ValueError, match="model.in_channels"):
        small(torch.randn(1, 1, 4, 16, 16))


def test_load_published_checkpoint_and_reinit_the_head(tmp_path: Path) -> None:
    small = X3D(width_factor=0.5, head_dim_out=32, head_pool="adaptive")
    sd = L.random_state_dict(L.state_signature(small), seed=4)
    path = tmp_path / "X3D_XS.pyth"
    torch.save({"model_state": sd, "epoch": 300}, path)
    net = X3D(num_classes=6, width_factor=0.5, head_dim_out=32, head_pool="adaptive", pretrained=str(path))
    assert net.state_dict()["blocks.5.proj.weight"].shape == (6, 32)
    assert torch.equal(net.state_dict()["blocks.0.conv.conv_xy.weight"], sd["blocks.0.conv.conv_xy.weight"])
    with pytest.raises(ValueError, match="unexpected keys .*blocks.1.res_blocks.1.* resemble the layout of x3d_xs"):
        load_published(X3D(width_factor=0.5, depth_factor=1.0, head_dim_out=32, head_pool="adaptive"), path)


def test_attributes() -> None:
    net = X3D(num_classes=4, width_factor=0.5, head_dim_out=32, head_pool="adaptive")
    assert net.num_classes == 4 and net.explain_layer == "blocks.4" and net.head_name == "blocks.5.proj"
    net.get_submodule(net.explain_layer)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_classes": 0}, "model.num_classes"),
        ({"clip_len": 0}, "model.clip_len"),
        ({"crop_size": 16}, "model.crop_size"),
        ({"width_factor": -1.0}, "model.width_factor"),
        ({"depth_factor": 0}, "model.depth_factor"),
        ({"se_ratio": 1.5}, "model.se_ratio"),
        ({"head_dim_out": 0}, "model.head_dim_out"),
        ({"head_pool": "max"}, "model.head_pool"),
        ({"dropout": -0.1}, "model.dropout"),
        ({"init": "xavier"}, "model.init"),
    ],
)
def test_bad_constructor_arguments_name_the_key(kwargs: dict, key: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=key.replace(".", r"\.")):
        X3D(**{"init": "default", **kwargs})


@pytest.mark.parametrize("name", ["x3d_xs", "x3d_s", "x3d_small"])
def test_configs_declare_layer_and_preprocessing(name: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={name}", "model.net.num_classes=4", "model.net.init=default"], tmp_path)
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, X3D) and net.num_classes == 4
    assert cfg.model.explain_layer is None and net.explain_layer == "blocks.4"  # the class's own default
    assert cfg.model.pretrained is None
    if name == "x3d_small":  # shallower: the published key names for the blocks it has
        assert set(net.state_dict()) < set(L.x3d_layout()) and net.stage_depths == (1, 2, 5, 3)
        assert set(cfg.model.preprocessing) == {"channel_shuffle"} and net.head_pool_kernel is None
    else:
        assert set(net.state_dict()) == set(L.x3d_layout())
        pre = cfg.model.preprocessing
        assert list(pre.mean) == [0.45] * 3 and list(pre.std) == [0.225] * 3
        assert (pre.scale, pre.channel_order, pre.crop_size) == (255, "RGB", 182)
        assert pre.clip_len == {"x3d_xs": 4, "x3d_s": 13}[name] == net.head_pool_kernel[0]
