"""R3D-18 / MC3-18 / R(2+1)D-18 against an independent transcription of torchvision's layout and forward."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from torch import nn

from motion_relevance.models import mc3_18, r2plus1d_18, r3d_18
from motion_relevance.models.layers import Add
from motion_relevance.models.published import load_published, resembled_layout
from motion_relevance.models.registry import build_registered
from motion_relevance.models.resnet3d import VideoResNet
from tests import _layouts as L
from tests.conftest import compose_config

FACTORIES = {"r3d_18": r3d_18, "mc3_18": mc3_18, "r2plus1d_18": r2plus1d_18}
ARCHS = list(FACTORIES)


def _loaded(arch: str, sd: dict[str, torch.Tensor]) -> VideoResNet:
    """The full-size model built on the meta device (no init cost) with ``sd`` loaded strictly into it."""
    with torch.device("meta"):
        net = FACTORIES[arch](init="default")
    net.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True, assign=True)
    return net


@pytest.fixture(scope="module")
def published() -> dict[str, tuple[VideoResNet, dict[str, torch.Tensor]]]:
    """Each full-size model with a random state dict of the transcribed layout loaded strictly (eval mode)."""
    out = {}
    for i, arch in enumerate(ARCHS):
        sd = L.random_state_dict(L.torchvision_layout(arch), seed=i)
        out[arch] = (_loaded(arch, sd).eval(), sd)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_keys_and_shapes_equal_the_transcription(arch: str) -> None:
    layout = L.torchvision_layout(arch)
    with torch.device("meta"):
        net = FACTORIES[arch](init="default")
    assert L.state_signature(net) == layout
    assert L.parameter_count(layout) == L.TORCHVISION_PARAMS[arch]
    assert sum(p.numel() for p in net.parameters()) == L.TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_the_functional_forward(arch: str, published) -> None:
    net, sd = published[arch]
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = net(x), L.torchvision_forward(sd, arch, x)
    assert ours.shape == (2, 400)
    assert ref.abs().max() > 0.1  # the comparison is not between zeros
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_the_functional_forward_at_kinetics_size(arch: str, published) -> None:
    net, sd = published[arch]
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (net(x) - L.torchvision_forward(sd, arch, x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ["r3d_18", "r2plus1d_18"])
def test_training_mode_batchnorm_is_unchanged(arch: str, published) -> None:
    """Train mode: batch statistics, and the running statistics updated as torchvision's BatchNorm3d does."""
    _, sd = published[arch]
    net = _loaded(arch, sd).train()
    ref_sd = {k: v.clone() for k, v in sd.items()}
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = net(x)
        ref = L.torchvision_forward(ref_sd, arch, x, training=True)
    assert (ours - ref).abs().max().item() <= 1e-4
    own = net.state_dict()
    for key in ("stem.1.running_mean", "layer4.1.conv2.1.running_var", "layer2.0.downsample.1.running_mean"):
        assert not torch.equal(own[key], sd[key])  # updated …
        assert torch.allclose(own[key], ref_sd[key], atol=1e-5)  # … like the reference
    assert int(own["stem.1.num_batches_tracked"]) == int(sd["stem.1.num_batches_tracked"]) + 1


def test_load_published_from_a_wrapped_file_and_reinit_fc(tmp_path: Path) -> None:
    net = r3d_18(width=0.125).eval()
    sd = L.random_state_dict(L.state_signature(net), seed=5)
    net.load_state_dict(sd)
    path = tmp_path / "r3d.ckpt"
    torch.save({"state_dict": {f"module.net.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    same = load_published(r3d_18(width=0.125), path).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x), net(x))
    # Another class count: everything but fc is loaded, fc is re-initialised N(0, 0.01).
    other = r3d_18(num_classes=8, width=0.125, pretrained=str(path))
    own = other.state_dict()
    assert own["fc.weight"].shape == (8, 64)
    assert torch.equal(own["layer3.1.conv1.0.weight"], sd["layer3.1.conv1.0.weight"])
    assert torch.equal(own["stem.1.running_var"], sd["stem.1.running_var"])
    assert 0.005 < own["fc.weight"].std().item() < 0.02 and own["fc.bias"].abs().max() == 0


def test_another_layout_is_refused_with_the_layout_it_resembles() -> None:
    with torch.device("meta"):
        target = r3d_18(init="default")
        mc3 = mc3_18(init="default").state_dict()
        sf = {k: torch.empty(v) for k, v in L.slowfast_layout().items()}
    with pytest.raises(ValueError, match=r"shape mismatches \(\d+\): layer2\.0\.conv1\.0\.weight.*mc3_18"):
        load_published(target, mc3)
    with pytest.raises(ValueError) as err:
        load_published(target, sf)
    text = str(err.value)
    assert "missing keys (122)" in text and "fc.bias" in text
    assert "unexpected keys" in text and "blocks.0.multipathway_blocks.0.conv.weight" in text
    assert "most resemble the layout of slowfast_r50" in text


def test_width_scaled_variant_keeps_the_keys_and_is_diagnosed_as_such() -> None:
    small = r3d_18(num_classes=8, width=0.125)
    full = L.torchvision_layout("r3d_18", num_classes=8)
    assert set(small.state_dict()) == set(full)
    assert small.layer4[0].conv1[0].weight.shape == (64, 32, 3, 3, 3)
    name, text = resembled_layout(small.state_dict())
    assert name == "r3d_18" and "122 of its 122 keys present" in text
    with torch.device("meta"):
        full_net = r3d_18(num_classes=8, init="default")
    with pytest.raises(ValueError, match=r"mismatches \(100\): stem.0.weight: file .8, 3, 3, 7, 7. vs model .64, 3"):
        load_published(full_net, small.state_dict())


def test_unreadable_and_unsafe_files_are_refused(tmp_path: Path) -> None:
    net = r3d_18(width=0.125)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_published(net, tmp_path / "missing.pth")
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_published(net, not_weights)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model_state": {"fc.bias": torch.zeros(1)}, "cfg": Path("x")}, unsafe)  # pickles a Python object
    with pytest.raises(ValueError, match="weights_only=True"):
        load_published(net, unsafe)


def test_relus_are_separate_not_in_place_and_used_once(published) -> None:
    for arch in ARCHS:
        net, _ = published[arch]
        relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
        assert relus and not any(m.inplace for m in relus)
        all_paths = list(net.named_modules(remove_duplicate=False))
        assert len(all_paths) == len(list(net.named_modules()))  # no module registered twice
        counts = L.call_counts(net, lambda net=net: net(torch.randn(1, 3, 4, 16, 16)), (nn.ReLU,))
        assert set(counts.values()) == {1}
        # one ReLU per conv+BN of the branch, one after every sum, one per stem stage (and per (2+1)D conv)
        expected = {"r3d_18": 1 + 8 * 2, "mc3_18": 1 + 8 * 2, "r2plus1d_18": 2 + 8 * 2 + 16}[arch]
        assert len(counts) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_every_residual_sum_is_an_add_module_branch_first(arch: str, published) -> None:
    net, _ = published[arch]
    adds = [name for name, m in net.named_modules() if isinstance(m, Add)]
    assert adds == [f"layer{i}.{b}.add" for i in range(1, 5) for b in range(2)]
    blocks = [a.rsplit(".", 1)[0] for a in adds]
    paths = adds + [f"{b}.conv2" for b in blocks] + [b for b in blocks]
    paths += [f"{b}.downsample" for b in blocks if net.get_submodule(b).downsample is not None]
    seen = L.record_io(net, lambda: net(torch.randn(1, 3, 4, 16, 16)), paths)
    for block in blocks:
        (branch, shortcut), _ = seen[f"{block}.add"]
        assert branch is seen[f"{block}.conv2"][1]
        if net.get_submodule(block).downsample is None:
            assert shortcut is seen[block][0][0]
        else:
            assert shortcut is seen[f"{block}.downsample"][1]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_batchnorm_directly_follows_its_conv(arch: str, published) -> None:
    net, _ = published[arch]
    pairs = net.conv_bn_pairs()
    n_bn = sum(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert len(pairs) == n_bn == {"r3d_18": 20, "mc3_18": 20, "r2plus1d_18": 37}[arch]
    paths = sorted({p for pair in pairs for p in pair})
    seen = L.record_io(net, lambda: net(torch.randn(1, 3, 4, 16, 16)), paths)
    for conv, bn in pairs:
        assert isinstance(net.get_submodule(conv), nn.Conv3d)
        assert seen[bn][0][0] is seen[conv][1], (conv, bn)
    if arch == "r2plus1d_18":
        assert ("layer1.0.conv1.0.3", "layer1.0.conv1.1") in pairs
        assert ("layer1.0.conv1.0.0", "layer1.0.conv1.0.1") in pairs


def test_attributes_and_exports() -> None:
    net = r2plus1d_18(num_classes=5, width=0.125)
    assert net.num_classes == 5 and net.explain_layer == "layer4" and net.head_name == "fc"
    assert isinstance(net.get_submodule(net.explain_layer), nn.Sequential)
    built = build_registered({"_target_": "motion_relevance.models.mc3_18", "num_classes": 3, "width": 0.125})
    assert isinstance(built, VideoResNet) and built.fc.out_features == 3
    assert built.layer2[0].conv1[0].kernel_size == (1, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_classes": 0}, "model.num_classes"),
        ({"width": 0.0}, "model.width"),
        ({"width": float("nan")}, "model.width"),
        ({"in_channels": 2.5}, "model.in_channels"),
        ({"init": "xavier"}, "model.init"),
        ({"stem": "big"}, "model.stem"),
        ({"conv_makers": ["3d", "3d", "3d"]}, "model.conv_makers"),
        ({"conv_makers": ["3d", "3d", "3d", "4d"]}, "model.conv_makers"),
        ({"layers": [2, 2, 0, 2]}, "model.layers"),
        ({"layers": [2, 2]}, "model.layers"),
    ],
)
def test_bad_constructor_arguments_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        VideoResNet(**kwargs)


def test_bad_inputs_are_refused() -> None:
    net = r3d_18(num_classes=2, width=0.125)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        net(torch.randn(3, 4, 16, 16))
    with pytest.raises(ValueError, match="model.in_channels"):
        net(torch.randn(1, 1, 4, 16, 16))


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "r3d_small", "mc3_small", "r2plus1d_small"])
def test_configs_declare_layer_and_preprocessing(name: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={name}", "model.net.num_classes=4", "model.net.init=default"], tmp_path)
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, VideoResNet) and net.num_classes == 4
    assert cfg.model.explain_layer is None and net.explain_layer == "layer4"  # the class's own default
    net.get_submodule(net.explain_layer)
    assert cfg.model.pretrained is None
    if name.endswith("_small"):
        pre = cfg.model.preprocessing  # the data's own normalisation; at most a training augmentation
        assert (pre is None or set(pre) == {"channel_shuffle"}) and net.width == 0.125
        assert set(net.state_dict()) == set(L.torchvision_layout(name.replace("_small", "_18")))
    else:
        pre = cfg.model.preprocessing
        assert list(pre.mean) == [0.43216, 0.394666, 0.37645] and list(pre.std) == [0.22803, 0.22145, 0.216989]
        assert (pre.scale, pre.channel_order, pre.clip_len, pre.crop_size) == (255, "RGB", 16, 112)
