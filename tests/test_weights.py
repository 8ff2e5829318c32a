"""The weights module: safetensors parsing, safe torch.load, unwrapping, finiteness, strict loading, size estimates.

References are independent: safetensors bytes are written here by hand from the format's definition (8-byte
little-endian header length, JSON header, raw little-endian data), parameter bytes are counted on a model built
on the CPU, and the architecture a checkpoint holds is checked against the registry by name.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from motion_relevance.models import C3D
from motion_relevance.models.weights import (
    check_alpha,
    check_model_size,
    config_names_for,
    described_bytes,
    load_weights,
    read_safetensors,
    read_weights,
    unwrap,
)


def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file written from the format's definition, for any (also broken) header."""
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def test_hand_written_safetensors_read_back_exactly(tmp_path: Path) -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3) / 7
    b = np.array([-3, 5], dtype="<i8")
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]}}
    state = read_safetensors(write_safetensors(tmp_path / "x.safetensors", header, a.tobytes() + b.tobytes()))
    assert list(state) == ["a", "b"]
    assert state["a"].dtype == torch.float32 and np.array_equal(state["a"].numpy(), a)
    assert state["b"].dtype == torch.int64 and state["b"].tolist() == [-3, 5]


@pytest.mark.parametrize(("entry", "field"), [
    ({"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}, "w.shape=[-1, 2]"),
    ({"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}, "w.shape"),
    ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "w.shape='2'"),
    ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, "w.dtype='Q7'"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "w.data_offsets=[0]"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "w.data_offsets=[0, 4] do not fit its shape"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "w.data_offsets=[0, 16] do not fit"),  # past the end
    ("F32", "w='F32' is not an object"),
])
def test_safetensors_header_errors_name_the_file_and_the_field(tmp_path: Path, entry: object, field: str) -> None:
    path = write_safetensors(tmp_path / "broken.safetensors", {"w": entry}, b"\0" * 8)
    with pytest.raises(ValueError) as info:
        read_weights(path)
    message = str(info.value)
    assert "broken.safetensors" in message and field in message and "\n" not in message


def test_safetensors_header_length_and_json_are_checked(tmp_path: Path) -> None:
    (tmp_path / "tiny.safetensors").write_bytes(b"\1\0")
    with pytest.raises(ValueError, match=r"tiny\.safetensors.*header length"):
        read_weights(tmp_path / "tiny.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ValueError, match=r"huge\.safetensors.*header length 1000000000000"):
        read_weights(tmp_path / "huge.safetensors")
    (tmp_path / "json.safetensors").write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(ValueError, match=r"json\.safetensors.*safetensors header \(header:"):
        read_weights(tmp_path / "json.safetensors")


def test_pickled_objects_are_refused_and_junk_is_named(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2), "cfg": Path("x")}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt' was refused: it holds Python objects.*PosixPath"):
        read_weights(tmp_path / "obj.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"junk\.pt' is not a readable PyTorch state dict"):
        read_weights(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained=.*nope\.pt' does not exist"):
        read_weights(tmp_path / "nope.pt")


def test_containers_and_prefixes_are_removed() -> None:
    t = torch.ones(1)
    assert unwrap({"state_dict": {"module.net.a": t, "module.net.b": t}}, "x") == {"a": t, "b": t}
    assert unwrap({"model_state": {"a": t}}, "x") == {"a": t}
    assert set(unwrap({"net.a": t, "b": t}, "x")) == {"net.a", "b"}  # a prefix not shared by all keys stays
    with pytest.raises(ValueError, match="does not hold a state dict"):
        unwrap({"epoch": 3}, "x")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_file_and_the_first_tensor(tmp_path: Path, bad: float) -> None:
    state = C3D(num_classes=3, width=0.125, crop_size=32, clip_len=16).state_dict()
    state["conv3a.weight"].view(-1)[5] = bad
    state["fc8.weight"].view(-1)[0] = float("nan")  # a later tensor: the first one is named
    torch.save(state, tmp_path / "c3d.pth")
    with pytest.raises(ValueError) as info:
        read_weights(tmp_path / "c3d.pth")
    message = str(info.value)
    assert "c3d.pth" in message and "'conv3a.weight'" in message and "fc8" not in message
    nan, inf = (1, 0) if bad != bad else (0, 1)
    assert f"holds {nan} NaN and {inf} infinite values" in message
    model = C3D(num_classes=3, width=0.125, crop_size=32, clip_len=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="conv3a.weight"):
        load_weights(model, tmp_path / "c3d.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was copied
    with pytest.raises(ValueError, match=r"model\.pretrained \(a state dict\): tensor 'conv3a\.weight'"):
        load_weights(model, state)


def test_strict_load_reinitialises_only_a_head_of_another_class_count(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = C3D(num_classes=5, width=0.125, crop_size=32, clip_len=16)
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "last.ckpt")
    target = load_weights(C3D(num_classes=3, width=0.125, crop_size=32, clip_len=16), tmp_path / "last.ckpt")
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert target.fc8.weight.shape == (3, source.fc8.weight.shape[1]) and not target.fc8.bias.any()
    from motion_relevance.models import r3d_18

    with pytest.raises(ValueError, match=r"does not fit C3D — missing keys .*resemble the layout of r3d_18"):
        load_weights(C3D(num_classes=3, width=0.125, crop_size=32, clip_len=16), r3d_18(num_classes=3).state_dict())


def test_described_bytes_counts_the_parameters_of_the_built_model() -> None:
    config = {"_target_": "motion_relevance.models.C3D", "num_classes": 4, "width": 0.125, "clip_len": 16,
              "crop_size": 32}
    built = C3D(num_classes=4, width=0.125, clip_len=16, crop_size=32)
    expected = sum(p.numel() * p.element_size() for p in [*built.parameters(), *built.buffers()])
    assert described_bytes(config) == expected
    assert check_model_size(config, "model.net", available=expected) == expected
    with pytest.raises(ValueError, match=r"^model\.net \(c3d\) describes a network of \d+\.\d MB of parameters, "
                                         r"more than the 0\.\d MB of memory available; nothing was allocated"):
        check_model_size(config, "model.net", available=expected // 100)
    wide = {**config, "width": 2.0}  # the argument whose default shrinks the model most is named
    with pytest.raises(ValueError, match=r"^model\.net\.width=2\.0 describes .* set model\.net\.width to a size "
                                         r"this machine holds \(default 1\.0\)"):
        check_model_size(wide, "model.net", available=described_bytes({**config, "width": 1.0}))
    assert described_bytes({"_target_": "some.Foreign"}) is None


def test_a_width_that_cannot_fit_is_refused_before_allocation() -> None:
    config = {"_target_": "motion_relevance.models.C3D", "num_classes": 4, "width": 1000.0}
    with pytest.raises(ValueError, match=r"model\.width=1000\.0 describes a network of \d+\.\d GB"):
        check_model_size(config, "model", available=8 * 10**9)


def test_two_pathway_alpha_must_match_the_data() -> None:
    net = {"_target_": "motion_relevance.models.SlowFast", "alpha": 4}
    check_alpha(net, {"pathways": {"alpha": 4}}, "model.net.alpha", "data.pathways.alpha")
    check_alpha(net, {}, "model.net.alpha", "data.pathways.alpha")  # not recorded: nothing to compare
    with pytest.raises(ValueError, match=r"model\.net\.alpha=4 but data\.pathways\.alpha=2.*set data\.pathways"
                                         r"\.alpha=4"):
        check_alpha(net, {"pathways": {"alpha": 2}}, "model.net.alpha", "data.pathways.alpha")
    with pytest.raises(ValueError, match=r"model\.net\.alpha=4 is a two-pathway model but data\.pathways=None"):
        check_alpha(net, {"pathways": None}, "model.net.alpha", "data.pathways.alpha")
    check_alpha({"_target_": "motion_relevance.models.C3D"}, {"pathways": None}, "a", "b")  # one pathway: fine


def test_config_names_for_finds_the_model_config() -> None:
    assert config_names_for({"_target_": "motion_relevance.models.r3d_18", "width": 0.125}) == ["r3d_small"]
    assert config_names_for({"_target_": "motion_relevance.models.r3d_18", "width": 1.0}) == ["r3d_18"]
    assert config_names_for({"_target_": "not.registered"}) == []
