"""C3D architecture, published parameter count, module uniqueness and Sports-1M weight loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from motion_relevance.models import C3D
from motion_relevance.models.pretrained import load_pretrained

PORT_KEYS = [
    f"{name}.{kind}"
    for name in ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b", "fc6", "fc7", "fc8")
    for kind in ("weight", "bias")
]


def published_c3d_parameters(num_classes: int) -> int:
    """Parameter count of C3D written out by hand from Tran et al. 2015, Fig. 3 (3x3x3 convs, fc 8192->4096)."""
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    total = sum(c_in * c_out * 27 + c_out for c_in, c_out in convs)
    total += 8192 * 4096 + 4096  # fc6: pool5 gives 512 x 1 x 4 x 4 = 8192
    total += 4096 * 4096 + 4096  # fc7
    total += 4096 * num_classes + num_classes  # fc8
    return total


@pytest.mark.parametrize("num_classes", [101, 487])
def test_full_c3d_matches_published_parameter_count(num_classes: int) -> None:
    model = C3D(num_classes=num_classes, init="default")
    assert sum(p.numel() for p in model.parameters()) == published_c3d_parameters(num_classes)
    assert list(model.state_dict()) == PORT_KEYS
    assert model.fc_in_features == 8192


def test_full_c3d_forward_shape() -> None:
    model = C3D(num_classes=101).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 16, 112, 112))
    assert logits.shape == (1, 101)
    assert torch.isfinite(logits).all()


def test_no_module_is_used_twice() -> None:
    model = C3D(num_classes=5, width=0.125, crop_size=32)
    calls: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        for name, m in model.named_modules()
        if name
    ]
    model(torch.randn(2, 3, 16, 32, 32))
    for h in handles:
        h.remove()
    assert calls and all(count == 1 for count in calls.values()), calls
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 10 and len({id(m) for m in relus}) == 10
    assert not any(m.inplace for m in relus)


@pytest.mark.parametrize(("clip_len", "crop"), [(16, 56), (32, 64), (16, (48, 64))])
def test_small_variants_compute_fc6_input(clip_len: int, crop) -> None:
    model = C3D(num_classes=4, width=0.125, clip_len=clip_len, crop_size=crop)
    h, w = (crop, crop) if isinstance(crop, int) else crop
    out = model(torch.randn(3, 3, clip_len, h, w))
    assert out.shape == (3, 4)
    assert model.conv1.out_channels == 8 and model.fc6.out_features == 512


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"width": 0}, "model.width"),
        ({"width": -1.0}, "model.width"),
        ({"clip_len": 0}, "model.clip_len"),
        ({"num_classes": 0}, "model.num_classes"),
        ({"width": True}, "model.width"),  # a bool is no number (was accepted as 1)
        ({"num_classes": True}, "model.num_classes"),
        ({"crop_size": (True, 112)}, "model.crop_size"),
        ({"clip_len": 8, "crop_size": 112}, "model.clip_len"),
        ({"crop_size": 8}, "model.clip_len"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"init": "xavier"}, "model.init"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        C3D(**kwargs)


def test_wrong_input_shape_is_explained() -> None:
    model = C3D(num_classes=3, width=0.125, crop_size=56)
    with pytest.raises(ValueError, match="crop_size"):
        model(torch.randn(1, 3, 16, 64, 64))


def _port_state_dict(num_classes: int = 487, width: float = 1.0) -> dict[str, torch.Tensor]:
    """Random tensors in the port's layout and shapes, built independently of our C3D class."""
    convs = [("conv1", 3, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
             ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512)]
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for name, c_in, c_out in convs:
        state[f"{name}.weight"] = torch.randn(c_out, c_in, 3, 3, 3, generator=g) * 0.01
        state[f"{name}.bias"] = torch.randn(c_out, generator=g)
    for name, n_in, n_out in (("fc6", 8192, 4096), ("fc7", 4096, 4096), ("fc8", 4096, num_classes)):
        state[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g) * 0.01
        state[f"{name}.bias"] = torch.randn(n_out, generator=g)
    return state


def test_sports1m_port_layout_loads_and_reinitialises_fc8(tmp_path) -> None:
    state = _port_state_dict()
    assert len(state) == 22
    path = tmp_path / "c3d.pickle"
    torch.save(state, path)
    model = C3D(num_classes=101, pretrained=str(path))
    loaded = model.state_dict()
    for key in PORT_KEYS:
        if key.startswith("fc8"):
            continue
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["fc8.weight"].shape == (101, 4096)
    assert torch.count_nonzero(loaded["fc8.bias"]) == 0


def test_sports1m_with_same_classes_loads_everything(tmp_path) -> None:
    state = _port_state_dict()
    path = tmp_path / "c3d.pickle"
    torch.save(state, path)
    model = C3D(num_classes=487, pretrained=str(path))
    assert torch.equal(model.state_dict()["fc8.weight"], state["fc8.weight"])


def test_wrong_state_dict_lists_keys_and_shapes(tmp_path) -> None:
    state = _port_state_dict()
    state["conv9.weight"] = state.pop("conv5b.weight")
    state["conv1.bias"] = torch.zeros(32)
    path = tmp_path / "bad.pickle"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(C3D(num_classes=101, init="default"), path)
    message = str(info.value)
    assert "missing keys (1): conv5b.weight" in message
    assert "unexpected keys (1): conv9.weight" in message
    assert "conv1.bias: file (32,) vs model (64,)" in message


def test_missing_weights_file_names_the_key(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        C3D(num_classes=4, width=0.125, crop_size=56, pretrained=str(tmp_path / "nope.pickle"))


def test_model_pretrained_override_loads_port_weights(tmp_path) -> None:
    """`model.pretrained=<c3d.pickle>` (the experiment's key) loads the port's weights through the config."""
    from types import SimpleNamespace

    from motion_relevance.train import build_model
    from tests.conftest import compose_config

    state = _port_state_dict()
    path = tmp_path / "c3d.pickle"
    torch.save(state, path)
    cfg = compose_config("train", ["model=c3d", "data.crop_size=112", f"model.pretrained={path}"], tmp_path)
    datamodule = SimpleNamespace(num_classes=5, class_names=[f"c{i}" for i in range(5)])
    datamodule.transform_config = lambda: {}
    model = build_model(cfg, datamodule)
    loaded = model.net.state_dict()
    assert torch.equal(loaded["conv3a.weight"], state["conv3a.weight"])
    assert loaded["fc8.weight"].shape == (5, 4096)
    assert "pretrained" not in model.hparams
