"""VideoMAE in transformers' layout: keys and shapes, both attention-bias namings, equal logits, bad input.

References: a key/shape table and a functional forward pass written here from transformers'
``modeling_videomae.py`` (they need no transformers), the sinusoid formula written out with ``math``, and — when
installed — transformers' ``VideoMAEForVideoClassification`` itself.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from motion_relevance.models.layers import Add, MatMul
from motion_relevance.models.registry import build_registered
from motion_relevance.models.videomae import VideoMAE, read_weights, rename_attention_biases

#: A small model: 4 frames of 32x32, tubelets 2x8x8 -> token grid 2x4x4 = 32 tokens.
SMALL = dict(
    num_classes=5, image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=4, intermediate_size=64,
)


def small(**overrides) -> VideoMAE:
    torch.manual_seed(0)
    model = VideoMAE(**{**SMALL, **overrides}).eval()
    randomise(model)
    return model


def randomise(model: torch.nn.Module, std: float = 0.3) -> None:
    """Every parameter random (biases and LayerNorm affines too), so that no key can load silently wrong."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)


def clips(batch: int = 2, frames: int = 4, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ independent transcription of transformers' code
def transcribed_layout(
    hidden: int, channels: int, tubelet: int, patch: int, layers: int, intermediate: int, classes: int,
    mean_pooling: bool = True, bias: bool = True, naming: str = "5.x",
) -> list[tuple[str, tuple[int, ...]]]:
    """Keys and shapes of ``VideoMAEForVideoClassification.state_dict()``, in order, read off its ``__init__``s."""
    d = hidden
    keys = [
        ("videomae.embeddings.patch_embeddings.projection.weight", (d, channels, tubelet, patch, patch)),
        ("videomae.embeddings.patch_embeddings.projection.bias", (d,)),
    ]
    for i in range(layers):
        p = f"videomae.encoder.layer.{i}."
        att = p + "attention.attention."
        if naming == "5.x":  # query/key/value are nn.Linear; key has bias=False
            keys += [(att + "query.weight", (d, d))] + ([(att + "query.bias", (d,))] if bias else [])
            keys += [(att + "key.weight", (d, d))]
            keys += [(att + "value.weight", (d, d))] + ([(att + "value.bias", (d,))] if bias else [])
        else:  # 4.x: bias-free Linear layers; q_bias / v_bias are the attention module's own parameters (listed
            # first: a module's own parameters precede its children's in a state dict)
            keys += [(att + "q_bias", (d,)), (att + "v_bias", (d,))] if bias else []
            keys += [(att + "query.weight", (d, d)), (att + "key.weight", (d, d)), (att + "value.weight", (d, d))]
        keys += [
            (p + "attention.output.dense.weight", (d, d)), (p + "attention.output.dense.bias", (d,)),
            (p + "intermediate.dense.weight", (intermediate, d)), (p + "intermediate.dense.bias", (intermediate,)),
            (p + "output.dense.weight", (d, intermediate)), (p + "output.dense.bias", (d,)),
            (p + "layernorm_before.weight", (d,)), (p + "layernorm_before.bias", (d,)),
            (p + "layernorm_after.weight", (d,)), (p + "layernorm_after.bias", (d,)),
        ]
    if mean_pooling:
        keys += [("fc_norm.weight", (d,)), ("fc_norm.bias", (d,))]
    else:
        keys += [("videomae.layernorm.weight", (d,)), ("videomae.layernorm.bias", (d,))]
    keys += [("classifier.weight", (classes, d)), ("classifier.bias", (classes,))]
    return keys


def sinusoid_by_hand(n: int, d: int) -> torch.Tensor:
    """The position table written out: sin(pos / 10000^(2*(j//2)/d)) at even j, cos at odd j."""
    rows = []
    for pos in range(n):
        row = []
        for j in range(d):
            angle = pos / 10000 ** (2 * (j // 2) / d)
            row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def reference_forward(
    state: dict[str, torch.Tensor], x: torch.Tensor, *, heads: int, tubelet: int, patch: int, eps: float,
    mean_pooling: bool = True, attentions: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits of VideoMAEForVideoClassification from a 5.x-named state dict, in plain functional torch."""
    w = state["videomae.embeddings.patch_embeddings.projection.weight"]
    h = F.conv3d(x, w, state["videomae.embeddings.patch_embeddings.projection.bias"], stride=(tubelet, patch, patch))
    h = h.flatten(2).transpose(1, 2)
    batch, n, d = h.shape
    h = h + sinusoid_by_hand(n, d).to(h.dtype)
    layers = len([k for k in state if re.fullmatch(r"videomae\.encoder\.layer\.\d+\.layernorm_before\.weight", k)])
    for i in range(layers):
        p = f"videomae.encoder.layer.{i}."
        a = F.layer_norm(h, (d,), state[p + "layernorm_before.weight"], state[p + "layernorm_before.bias"], eps)

        def proj(name: str, inp: torch.Tensor = a, p: str = p) -> torch.Tensor:
            out = F.linear(inp, state[p + f"attention.attention.{name}.weight"],
                           state.get(p + f"attention.attention.{name}.bias"))
            return out.view(batch, n, heads, d // heads).transpose(1, 2)

        q, k, v = proj("query"), proj("key"), proj("value")
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        if attentions is not None:
            attentions.append(probs)
        context = (probs @ v).transpose(1, 2).reshape(batch, n, d)
        h = h + F.linear(context, state[p + "attention.output.dense.weight"], state[p + "attention.output.dense.bias"])
        m = F.layer_norm(h, (d,), state[p + "layernorm_after.weight"], state[p + "layernorm_after.bias"], eps)
        m = F.gelu(F.linear(m, state[p + "intermediate.dense.weight"], state[p + "intermediate.dense.bias"]))
        h = h + F.linear(m, state[p + "output.dense.weight"], state[p + "output.dense.bias"])
    if mean_pooling:
        pooled = F.layer_norm(h.mean(1), (d,), state["fc_norm.weight"], state["fc_norm.bias"], 1e-5)
    else:
        pooled = F.layer_norm(h, (d,), state["videomae.layernorm.weight"], state["videomae.layernorm.bias"], eps)[:, 0]
    return F.linear(pooled, state["classifier.weight"], state["classifier.bias"])


def to_4x_by_hand(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace("attention.attention.query.bias", "attention.attention.q_bias")
        key = key.replace("attention.attention.value.bias", "attention.attention.v_bias")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------- layout without transformers
@pytest.mark.parametrize("mean_pooling", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_matches_transcribed_layout(mean_pooling: bool, bias: bool) -> None:
    model = VideoMAE(**{**SMALL, "use_mean_pooling": mean_pooling, "qkv_bias": bias})
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == transcribed_layout(32, 3, 2, 8, 2, 64, 5, mean_pooling, bias)
    assert not any("position" in k for k, _ in got)  # the sinusoid table is not a weight


@pytest.mark.parametrize("mean_pooling", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_logits_equal_functional_transcription(mean_pooling: bool, bias: bool) -> None:
    model = small(use_mean_pooling=mean_pooling, qv_bias=bias, layer_norm_eps=0.1)
    x = clips()
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, heads=4, tubelet=2, patch=8, eps=0.1,
                                mean_pooling=mean_pooling)
    assert ours.shape == (2, 5)
    assert (ours - ref).abs().max() <= 1e-4, (ours - ref).abs().max()


def test_both_bias_namings_load_with_equal_logits() -> None:
    source = small()
    state5 = source.state_dict()
    state4 = to_4x_by_hand(state5)
    assert {k: tuple(v.shape) for k, v in state4.items()} == dict(
        transcribed_layout(32, 3, 2, 8, 2, 64, 5, naming="4.x"))
    assert sum("q_bias" in k for k in state4) == 2 and not any("query.bias" in k for k in state4)
    x = clips()
    with torch.no_grad():
        expected = source(x)
    for state in (state5, state4):
        target = VideoMAE(**SMALL).eval()
        target.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert torch.equal(target(x), expected)
    assert list(target.state_dict()) == list(state5)  # state_dict() writes the 5.x naming
    assert rename_attention_biases(state5, "4.x").keys() == state4.keys()
    assert rename_attention_biases(state4, "5.x").keys() == state5.keys()
    with pytest.raises(ValueError, match="naming"):
        rename_attention_biases(state5, "6.x")


def test_4x_naming_loads_when_nested_like_a_lightning_module() -> None:
    """The rename happens in the attention module, so it also works under a prefix (``net.`` of VideoClassifier)."""
    source = small()
    wrapper = torch.nn.Module()
    wrapper.net = VideoMAE(**SMALL)
    wrapper.load_state_dict({f"net.{k}": v for k, v in to_4x_by_hand(source.state_dict()).items()}, strict=True)
    assert torch.equal(wrapper.net.classifier.weight, source.classifier.weight)
    assert torch.equal(wrapper.net.videomae.encoder.layer[1].attention.attention.value.bias,
                       source.videomae.encoder.layer[1].attention.attention.value.bias)


def test_bias_free_model_refuses_bias_keys() -> None:
    state = to_4x_by_hand(small().state_dict())
    with pytest.raises(RuntimeError, match="q_bias"):
        VideoMAE(**SMALL, qkv_bias=False).load_state_dict(state, strict=True)


def test_position_table_is_the_sinusoid_and_a_non_persistent_buffer() -> None:
    model = VideoMAE(**SMALL)
    table = model.videomae.embeddings.position_embeddings
    assert table.shape == (1, 32, 32)
    assert torch.allclose(table[0].double(), sinusoid_by_hand(32, 32), atol=1e-7)
    assert "videomae.embeddings.position_embeddings" not in model.state_dict()
    assert model.double().videomae.embeddings.position_embeddings.dtype == torch.float64


def test_blocks_expose_each_operation_as_its_own_module_once() -> None:
    model = small()
    kinds = (MatMul, torch.nn.Softmax, torch.nn.GELU, torch.nn.LayerNorm, Add)
    calls: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, _o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, kinds)
    ]
    with torch.no_grad():
        model(clips())
    for h in handles:
        h.remove()
    block = "videomae.encoder.layer.0."
    expected = {
        block + "attention.attention.qk_matmul", block + "attention.attention.av_matmul",
        block + "attention.attention.softmax", block + "intermediate.intermediate_act_fn",
        block + "layernorm_before", block + "layernorm_after", block + "attention_residual", block + "mlp_residual",
    }
    assert expected <= set(calls)
    assert set(calls) == {n.replace(".0.", f".{i}.") for n in expected for i in range(2)} | {
        "videomae.embeddings.position_add", "fc_norm"}
    assert all(count == 1 for count in calls.values()), calls
    ids = [id(m) for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, kinds)]
    assert len(ids) == len(set(ids))
    assert model.explain_layer == "videomae.encoder.layer.1" and model.block_names[0] == "videomae.encoder.layer.0"


def test_token_grid_and_attributes() -> None:
    model = VideoMAE(**{**SMALL, "image_size": (32, 48), "patch_size": (8, 16)})
    assert model.grid == (2, 4, 3) and model.num_tokens == 24
    assert model.token_grid((1, 3, 4, 32, 48)) == (2, 4, 3) and model.token_grid((6, 16, 32)) == (3, 2, 2)
    assert model.tubelet_size == 2 and model.patch_size == (8, 16) and model.num_classes == 5
    assert model(torch.randn(1, 3, 4, 32, 48)).shape == (1, 5)


def test_registry_builds_it() -> None:
    model = build_registered({"_target_": "motion_relevance.models.VideoMAE", **SMALL})
    assert isinstance(model, VideoMAE)


# ------------------------------------------------------------------------------------------------ files
def write_safetensors_by_hand(path: Path, state: dict[str, torch.Tensor]) -> None:
    header, blobs, offset = {}, [], 0
    for name, tensor in state.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_pretrained_files_load_torch_lightning_and_safetensors(tmp_path: Path) -> None:
    source = small()
    state4 = to_4x_by_hand(source.state_dict())
    torch.save(state4, tmp_path / "pytorch_model.bin")
    torch.save({"state_dict": {f"net.{k}": v for k, v in state4.items()}, "epoch": 3}, tmp_path / "last.ckpt")
    write_safetensors_by_hand(tmp_path / "model.safetensors", state4)
    x = clips()
    with torch.no_grad():
        expected = source(x)
    for name in ("pytorch_model.bin", "last.ckpt", "model.safetensors"):
        model = VideoMAE(**SMALL, pretrained=str(tmp_path / name)).eval()
        with torch.no_grad():
            assert torch.equal(model(x), expected), name


def test_own_safetensors_reader_agrees_with_the_library(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
             "c": torch.randn(2).to(torch.bfloat16), "d": torch.zeros(0)}
    safetensors_torch.save_file(state, str(tmp_path / "x.safetensors"))
    ours = read_weights(tmp_path / "x.safetensors")
    assert ours.keys() == state.keys()
    for key in state:
        assert ours[key].dtype == state[key].dtype and torch.equal(ours[key], state[key])


def test_head_is_reinitialised_when_only_the_class_count_differs() -> None:
    kinetics = small(num_classes=7)
    model = VideoMAE(**SMALL).load_pretrained(rename_attention_biases(kinetics.state_dict(), "4.x"))
    assert torch.equal(model.videomae.encoder.layer[0].attention.attention.query.bias,
                       kinetics.videomae.encoder.layer[0].attention.attention.query.bias)
    assert model.classifier.weight.shape == (5, 32) and torch.count_nonzero(model.classifier.bias) == 0


# -------------------------------------------------------------------------------------------- bad input
def test_layout_mismatch_lists_missing_and_unexpected_keys() -> None:
    deeper = VideoMAE(**{**SMALL, "num_hidden_layers": 3}).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \(15\): videomae\.encoder\.layer\.2\.attention.*more"):
        VideoMAE(**SMALL).load_pretrained(deeper)
    with pytest.raises(ValueError, match=r"missing keys \(2\): fc_norm\.weight, fc_norm\.bias.*unexpected keys "
                                         r"\(2\): videomae\.layernorm\.weight"):
        VideoMAE(**SMALL).load_pretrained(VideoMAE(**SMALL, use_mean_pooling=False).state_dict())
    wider = VideoMAE(**{**SMALL, "hidden_size": 64}).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatches .*projection\.weight: file \(64, 3, 2, 8, 8\) vs model "
                                         r"\(32, 3, 2, 8, 8\)"):
        VideoMAE(**SMALL).load_pretrained(wider)
    from motion_relevance.models import C3D

    with pytest.raises(ValueError, match=r"missing keys \(\d+\): videomae\.embeddings.*unexpected keys .*conv1"):
        VideoMAE(**SMALL).load_pretrained(C3D(num_classes=5, width=0.125, crop_size=32).state_dict())


def test_unreadable_weight_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoMAE(**SMALL, pretrained=str(tmp_path / "nope.bin"))
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        read_weights(tmp_path / "junk.bin")
    torch.save({"a": 1}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        read_weights(tmp_path / "plain.pt")
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_weights(tmp_path / "bad.safetensors")
    head = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "short.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 8)
    with pytest.raises(ValueError, match="do not fit its shape"):
        read_weights(tmp_path / "short.safetensors")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 5, 32, 32), r"5 frames are not divisible by tubelet_size=2"),
        ((1, 3, 4, 30, 32), r"height 30 is not divisible by patch_size=8"),
        ((1, 3, 4, 32, 36), r"width 36 is not divisible by patch_size=8"),
        ((1, 3, 8, 32, 32), r"built for clips of 4 frames of 32x32 \(token grid 2x4x4, 32 tokens\), got 8 frames "
                            r"of 32x32 \(grid 4x4x4, 64 tokens\)"),
        ((1, 1, 4, 32, 32), r"3 input channels"),
        ((3, 4, 32, 32), r"\(B, C, T, H, W\)"),
    ],
)
def test_bad_clips_are_refused_with_sizes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VideoMAE(**SMALL)(torch.randn(*shape))


def test_interpolated_position_table_accepts_other_grids() -> None:
    model = small(interpolate_pos_encoding=True)
    same = model.videomae.embeddings.table_for((2, 4, 4))
    assert same is model.videomae.embeddings.position_embeddings
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 48, 32)).shape == (2, 5)
    table = model.videomae.embeddings.table_for((4, 4, 4))  # T doubled: each source row is repeated or averaged
    source = model.videomae.embeddings.position_embeddings.reshape(2, 16, 32)
    assert torch.allclose(table.reshape(4, 16, 32)[0], source[0]) and torch.allclose(table.reshape(4, 16, 32)[3],
                                                                                     source[1])
    assert torch.allclose(table.reshape(4, 16, 32)[1], 0.75 * source[0] + 0.25 * source[1], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"qkv_bias": True, "qv_bias": False}, "two names of one switch"),
        ({"num_attention_heads": 5}, "not a multiple"),
        ({"num_frames": 5}, "num_frames=5 is not divisible by model.tubelet_size=2"),
        ({"image_size": 30}, "height 30 is not divisible"),
        ({"hidden_act": "swish"}, "hidden_act"),
        ({"num_classes": 0}, "num_classes"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
        ({"init": "xavier"}, "init"),
        ({"patch_size": (8, 8, 8)}, "patch_size"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VideoMAE(**{**SMALL, **kwargs})


def test_qv_bias_names_agree() -> None:
    assert VideoMAE(**SMALL, qv_bias=False).qv_bias is False
    assert VideoMAE(**SMALL, qkv_bias=False).qv_bias is False
    assert VideoMAE(**SMALL).qv_bias is True


# ------------------------------------------------------------------------------------- configs of this repo
@pytest.mark.parametrize("option", ["videomae_tiny", "videomae_small", "videomae_base"])
def test_model_configs_build_the_net(option: str, tmp_path: Path) -> None:
    import hydra

    from tests.conftest import compose_config

    cfg = compose_config("train", [f"model={option}", "model.net.num_classes=5"], tmp_path)
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, VideoMAE) and net.num_classes == 5
    assert cfg.model.explain_layer is None and net.explain_layer == net.block_names[-1]  # the model's own default
    assert cfg.model.pretrained is None
    if option == "videomae_base":
        prep = cfg.model.preprocessing
        assert list(prep.mean) == [0.485, 0.456, 0.406] and list(prep.std) == [0.229, 0.224, 0.225]
        assert prep.scale == 255 and prep.channel_order == "RGB" and prep.clip_len == 16 and prep.crop_size == 224
        assert (net.hidden_size, len(net.block_names), net.grid) == (768, 12, (8, 14, 14))
    elif option == "videomae_tiny":
        assert cfg.model.preprocessing is None and net.grid[0] * net.tubelet_size == cfg.data.clip_len
        module = hydra.utils.instantiate(cfg.model)  # the LightningModule, on the CPU
        assert module.net.explain_layer == "videomae.encoder.layer.2"
        with torch.no_grad():
            assert module(torch.randn(1, 3, cfg.data.clip_len, cfg.data.crop_size, cfg.data.crop_size)).shape == (1, 5)


# ------------------------------------------------------------------------------------------ vs transformers
def hf_pair(mean_pooling: bool, bias: bool, eps: float = 0.1):
    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, qv_bias=bias, use_mean_pooling=mean_pooling, num_labels=5,
        layer_norm_eps=eps, attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.VideoMAEForVideoClassification(config).eval()
    randomise(hf)
    return hf


@pytest.mark.parametrize("mean_pooling", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_transformers_state_dict_loads_strictly_with_equal_logits(mean_pooling: bool, bias: bool) -> None:
    hf = hf_pair(mean_pooling, bias)
    state = hf.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == transcribed_layout(
        32, 3, 2, 8, 2, 64, 5, mean_pooling, bias)
    x = clips()
    with torch.no_grad():
        expected = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    for naming in (state, to_4x_by_hand(state)):
        model = VideoMAE(**SMALL, use_mean_pooling=mean_pooling, qkv_bias=bias, layer_norm_eps=0.1).eval()
        model.load_state_dict(naming, strict=True)
        with torch.no_grad():
            got = model(x)
        assert (got - expected).abs().max() <= 1e-4, (got - expected).abs().max()
    assert list(model.state_dict()) == list(state)


def test_position_table_equals_transformers() -> None:
    hf = hf_pair(True, True)
    ours = VideoMAE(**SMALL).videomae.embeddings.position_embeddings
    assert torch.allclose(ours, hf.videomae.embeddings.position_embeddings, atol=1e-7)


def test_base_kinetics_parameter_count_equals_transformers() -> None:
    """MCG-NJU/videomae-base-finetuned-kinetics: ViT-B/16, 16x224x224, tubelet 2, 400 classes."""
    by_hand = (768 * 3 * 2 * 16 * 16 + 768) + 12 * (
        4 * 768 * 768 + 2 * 768 + 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768) + 2 * 768 + 768 * 400 + 400
    with torch.device("meta"):
        ours = VideoMAE(num_classes=400)
    assert sum(p.numel() for p in ours.parameters()) == by_hand == 86_534_800
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(num_labels=400))
    assert sum(p.numel() for p in hf.parameters()) == by_hand
    assert [(k, tuple(v.shape)) for k, v in hf.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in ours.state_dict().items()]
