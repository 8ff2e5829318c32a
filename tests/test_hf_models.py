"""transformers' video classifiers through models.hf: logits, token views, folders, checkpoints, refusals."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from motion_relevance.models import from_folder, from_transformers  # noqa: E402
from motion_relevance.models.checkpoint import load_classifier  # noqa: E402
from motion_relevance.models.hf import SUPPORTED, HFVideoClassifier, folder_preprocessing  # noqa: E402
from motion_relevance.models.registry import build_registered  # noqa: E402

FRAMES, SIZE, CLASSES = 4, 16, 3
COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_labels": CLASSES}
CONFIGS = {
    "VideoMAEForVideoClassification": lambda: transformers.VideoMAEConfig(
        image_size=SIZE, patch_size=8, num_frames=FRAMES, tubelet_size=2, intermediate_size=64, **COMMON),
    "TimesformerForVideoClassification": lambda: transformers.TimesformerConfig(
        image_size=SIZE, patch_size=8, num_frames=FRAMES, intermediate_size=64, **COMMON),
    "VivitForVideoClassification": lambda: transformers.VivitConfig(
        image_size=SIZE, tubelet_size=[2, 8, 8], num_frames=FRAMES, intermediate_size=64, **COMMON),
    "VJEPA2ForVideoClassification": lambda: transformers.VJEPA2Config(
        crop_size=SIZE, patch_size=8, frames_per_clip=FRAMES, tubelet_size=2, mlp_ratio=2.0, pred_hidden_size=16,
        pred_num_hidden_layers=1, pred_num_attention_heads=2, num_pooler_layers=1, **COMMON),
}
ARCHS = list(CONFIGS)


def tiny_hf(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(transformers, arch)(CONFIGS[arch]()).eval()


def clips(frames: int = FRAMES, size: int = SIZE, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(1))


def hf_logits(model: torch.nn.Module, arch: str, x: torch.Tensor) -> torch.Tensor:
    """transformers' own forward on the same clips, in its (B, T, C, H, W) layout."""
    with torch.no_grad():
        return model(**{SUPPORTED[arch].input_name: x.permute(0, 2, 1, 3, 4).contiguous()}).logits


def saved(tmp_path: Path, arch: str, **extra: object) -> Path:
    folder = tmp_path / "hf"
    tiny_hf(arch).save_pretrained(folder)
    if extra:
        config = json.loads((folder / "config.json").read_text())
        config.update(extra)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


# ------------------------------------------------------------------------------------------------ the adapter
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_transformers_and_keys_under_one_prefix(arch: str) -> None:
    model = tiny_hf(arch)
    net = from_transformers(model)
    assert model.config._attn_implementation == "eager"
    x = clips()
    with torch.no_grad():
        ours = net(x)
    assert torch.equal(ours, hf_logits(model, arch, x))
    assert list(net.state_dict()) == [f"hf.{k}" for k in model.state_dict()]
    assert net.num_classes == CLASSES


@pytest.mark.parametrize("model", [torch.nn.Linear(2, 2), None])
def test_other_classes_are_refused_by_name(model: torch.nn.Module | None) -> None:
    if model is None:  # a transformers class without a video-classification head
        model = transformers.VideoMAEModel(CONFIGS["VideoMAEForVideoClassification"]())
    with pytest.raises(ValueError, match=f"{type(model).__name__} is not a supported video classifier"):
        from_transformers(model)


@pytest.mark.parametrize(("frames", "size"), [(6, SIZE), (FRAMES, 24)])
def test_clips_of_other_sizes_are_refused_naming_the_sizes(frames: int, size: int) -> None:
    net = from_transformers(tiny_hf("VideoMAEForVideoClassification"))
    with pytest.raises(ValueError, match=rf"takes clips of {FRAMES} frames of {SIZE}x{SIZE}.*num_frames={FRAMES}.*"
                                         rf"tubelet 2, patch 8x8\), got {frames} frames of {size}x{size}"):
        net(clips(frames, size))


def test_timesformer_token_view_is_its_patch_tokens_in_time_major_order() -> None:
    net = from_transformers(tiny_hf("TimesformerForVideoClassification"))
    block_out, view_out = [], []
    net.hf.timesformer.encoder.layer[0].register_forward_hook(lambda _m, _i, out: block_out.append(out[0]))
    net.token_views[0].register_forward_hook(lambda _m, _i, out: view_out.append(out))
    with torch.no_grad():
        net(clips())
    hidden, view = block_out[0], view_out[0]
    t, h, w = FRAMES, SIZE // 8, SIZE // 8
    assert view.shape == (2, t * h * w, 32)
    for ti in range(t):  # transformers orders TimeSformer's patch tokens (h, w, t), after the class token
        for hi in range(h):
            for wi in range(w):
                assert torch.equal(view[:, (ti * h + hi) * w + wi], hidden[:, 1 + (hi * w + wi) * t + ti])


@pytest.mark.parametrize("arch", ARCHS)
def test_gradcam_gives_token_maps_on_the_default_block(arch: str) -> None:
    from motion_relevance.explain.explainers import GradCAM

    net = from_transformers(tiny_hf(arch))
    cam = GradCAM(upsample="nearest")(net, clips())
    assert cam.shape == (2, 1, FRAMES, SIZE, SIZE)
    assert float(cam.sum()) > 0  # class-token models: the block before the last (the last one gets no gradient)
    # nearest upsampling: constant over each token's tubelet x patch
    tubelet = net.tubelet_size
    assert torch.equal(cam[:, :, :tubelet, :8, :8], cam[:, :, :1, :1, :1].expand(-1, -1, tubelet, 8, 8))


@pytest.mark.parametrize("method", ["captum.attr.IntegratedGradients", "captum.attr.Saliency"])
def test_captum_attributions_run_on_the_adapter(method: str) -> None:
    from motion_relevance.explain import CaptumExplainer

    net = from_transformers(tiny_hf("VivitForVideoClassification"))
    kwargs = {"n_steps": 4} if method.endswith("IntegratedGradients") else {}
    maps = CaptumExplainer(method=method, attribute_kwargs=kwargs)(net, clips())
    assert maps.shape == (2, 3, FRAMES, SIZE, SIZE) and bool(maps.abs().sum() > 0)


# ------------------------------------------------------------------------------------------------ folders
@pytest.mark.parametrize("arch", ARCHS)
def test_folder_gives_the_saved_models_logits(tmp_path: Path, arch: str) -> None:
    folder = saved(tmp_path, arch)
    assert (folder / "model.safetensors").is_file()
    net = from_folder(folder)
    reference = tiny_hf(arch)
    reference.set_attn_implementation("eager")  # the adapter's attention (sdpa differs in the last bits)
    x = clips()
    with torch.no_grad():
        assert torch.equal(net(x), hf_logits(reference, arch, x))


@pytest.mark.parametrize("classes", [5, CLASSES])
def test_folder_head_is_replaced_for_the_data_classes(tmp_path: Path, classes: int) -> None:
    arch = "VideoMAEForVideoClassification"
    net = from_folder(saved(tmp_path, arch), num_classes=classes)
    assert net.num_classes == classes and net.hf.classifier.out_features == classes
    reference = tiny_hf(arch).state_dict()
    for key, value in net.hf.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, reference[key]), key
    assert not torch.equal(net.hf.classifier.weight, reference["classifier.weight"]) if classes == CLASSES else True


def test_wrapping_twice_keeps_one_view_per_block() -> None:
    from motion_relevance.explain.transformer import TokenGradCAM

    model = tiny_hf("VideoMAEForVideoClassification")
    first, second = from_transformers(model), from_transformers(model)
    assert all(a is b for a, b in zip(first.token_views, second.token_views))
    calls = []
    handle = second.token_views[1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        second(clips())
    handle.remove()
    assert len(calls) == 1  # one view call per forward pass
    TokenGradCAM()(second, clips())  # refuses a layer that runs more than once


def test_pickle_weights_are_refused_never_unpickled(tmp_path: Path) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # unpickling would create the marker file
            return (open, (str(marker), "w"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin' is a pickle file, which is never loaded"):
        from_folder(folder)
    assert not marker.exists()


def test_auto_map_is_refused_naming_the_field(tmp_path: Path) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification",
                   auto_map={"AutoModelForVideoClassification": "modeling_x.Evil"})
    with pytest.raises(ValueError, match="config.json' has the field auto_map"):
        from_folder(folder)
    with pytest.raises(ValueError, match="has the field auto_map"):
        folder_preprocessing(folder)


@pytest.mark.parametrize(("extra", "message"), [
    ({"architectures": ["BertForSequenceClassification"]},
     r"field architectures='BertForSequenceClassification' is not a supported video classifier; supported: "
     r"VideoMAEForVideoClassification, TimesformerForVideoClassification"),
    ({"architectures": None, "model_type": "bert"}, r"field model_type='bert' \(and no architectures\)"),
    ({"model_type": "vivit"}, r"field model_type='vivit' does not match architectures"),
])
def test_unsupported_architectures_are_refused_naming_the_field(tmp_path: Path, extra: dict, message: str) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification", **extra)
    if extra.get("architectures", 1) is None:
        config = json.loads((folder / "config.json").read_text())
        del config["architectures"]
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        from_folder(folder)


def test_missing_files_are_named(tmp_path: Path) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds no \*\.safetensors weights"):
        from_folder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json' does not exist"):
        from_folder(folder)
    with pytest.raises(ValueError, match="model.path is not set"):
        from_folder(None)  # type: ignore[arg-type]


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification", hidden_size=64)
    with pytest.raises(ValueError, match="do not fit its config.json.*shape mismatches"):
        from_folder(folder)


def test_folder_model_refuses_another_frame_count(tmp_path: Path) -> None:
    net = from_folder(saved(tmp_path, "TimesformerForVideoClassification"))
    with pytest.raises(ValueError, match=r"num_frames=4.*got 8 frames.*set data.clip_len=4 data.crop_size=16"):
        net(clips(frames=8))


def test_folder_preprocessing_from_preprocessor_config_else_defaults(tmp_path: Path) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification")
    default = folder_preprocessing(folder)
    assert default == {"mean": [0.5] * 3, "std": [0.5] * 3, "scale": 255.0, "channel_order": "RGB",
                       "clip_len": FRAMES, "crop_size": SIZE}
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "rescale_factor": 1 / 255}))
    given = folder_preprocessing(folder)
    assert given["mean"] == [0.1, 0.2, 0.3] and given["std"] == [0.4, 0.5, 0.6]
    assert given["scale"] == pytest.approx(255.0)


def test_vivit_offset_rescaling_is_folded_into_the_mean(tmp_path: Path) -> None:
    """ViViT's processor computes (x * r - 1 - m) / s; ours (x / scale - mean) / std must give the same values."""
    prep = folder_preprocessing(saved(tmp_path, "VivitForVideoClassification"))
    for x in (0.0, 64.0, 127.5, 255.0):
        theirs = (x * (1 / 127.5) - 1 - 0.5) / 0.5
        ours = (x / prep["scale"] - prep["mean"][0]) / prep["std"][0]
        assert ours == pytest.approx(theirs, abs=1e-12)


# ------------------------------------------------------------------------------------------------ checkpoints
def _checkpoint(tmp_path: Path, net: HFVideoClassifier, net_config: dict) -> Path:
    from motion_relevance.classifier import VideoClassifier

    module = VideoClassifier(net, net_config=net_config, preprocessing={"clip_len": FRAMES},
                             class_names=[f"c{i}" for i in range(net.num_classes)])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path / "model.ckpt"
    torch.save(checkpoint, path)
    return path


def test_folder_to_checkpoint_to_registry_gives_equal_logits(tmp_path: Path) -> None:
    folder = saved(tmp_path, "TimesformerForVideoClassification")
    net = from_folder(folder, num_classes=CLASSES)
    path = _checkpoint(tmp_path, net, {"_target_": "motion_relevance.models.hf.from_folder", "path": str(folder)})
    meta = torch.load(path, weights_only=True)["motion_relevance"]["model"]
    assert meta["_target_"] == "motion_relevance.models.hf.HFVideoClassifier"  # not the folder reader
    assert "path" not in meta and json.loads(json.dumps(meta)) == meta  # plain JSON, self-contained
    loaded = load_classifier(path)
    x = clips()
    with torch.no_grad():
        assert torch.equal(loaded.net(x), net.eval()(x))


def test_checkpoint_may_not_name_the_folder_reader_or_remote_code(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not one of the project's model classes"):
        build_registered({"_target_": "motion_relevance.models.hf.from_folder", "path": str(tmp_path)})
    description = from_transformers(tiny_hf("VideoMAEForVideoClassification")).config_dict()
    description["config"]["auto_map"] = {"AutoModel": "x.Y"}
    with pytest.raises(ValueError, match="has the field auto_map"):
        build_registered(description)


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from motion_relevance.models import hf

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'motion_relevance\[transformers\]'"):
        hf._transformers()


# ------------------------------------------------------------------------------------------------ mr-train, mr-explain
EXPLAIN_FAST = ["~explainers.dtd", "~explainers.guided_gradcam", "~explainers.gbp", "objective.method=gradcam",
                "faithfulness=none", "randomization=none", "flow=none", "num_clips=2", "logger=csv",
                "~callbacks.progress_bar"]


def _train_then_explain(tmp_path: Path, data_root: Path, model: list[str], explain_extra: list[str]) -> dict:
    from motion_relevance.explain_app import explain
    from motion_relevance.train import train
    from tests.conftest import TINY_DATA, compose_config

    data = [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", *TINY_DATA]
    cfg = compose_config("train", [*model, "trainer.max_epochs=1", "test=false", "logger=csv", "callbacks=default",
                                   "~callbacks.progress_bar", *data], tmp_path / "train")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cfg = compose_config("explain", [f"ckpt_path={ckpt}", *EXPLAIN_FAST, *explain_extra, *data], tmp_path / "explain")
    metrics, _ = explain(cfg)
    return {"ckpt": ckpt, "metrics": metrics}


def test_train_and_explain_hf_timesformer_tiny(tmp_path: Path, data_root: Path) -> None:
    """mr-train and mr-explain (Grad-CAM on token views) in process, on the tiny data."""
    out = _train_then_explain(tmp_path, data_root, ["model=hf_timesformer_tiny"], [])
    meta = torch.load(out["ckpt"], weights_only=True)["motion_relevance"]
    assert meta["model"]["architecture"] == "TimesformerForVideoClassification"
    assert meta["explain_layer"] == "token_views.0"
    assert float(out["metrics"]["test/explained_clips"]) == 2
    assert "test/gt_precision/gradcam" in out["metrics"]


def test_train_from_a_save_pretrained_folder_records_its_preprocessing(tmp_path: Path, data_root: Path) -> None:
    """model=hf model.path=<folder>: the folder's mean/std reach the data and the checkpoint; the checkpoint
    describes the model by its config (no folder path) and explains."""
    config = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=16, tubelet_size=4,
                                         intermediate_size=64, **COMMON)
    folder = tmp_path / "folder"
    transformers.VideoMAEForVideoClassification(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2], "rescale_factor": 1 / 255}))
    out = _train_then_explain(tmp_path, data_root, ["model=hf", f"model.path={folder}"],
                              ["data.mean=[0.4,0.4,0.4]", "data.std=[0.2,0.2,0.2]"])
    meta = torch.load(out["ckpt"], weights_only=True)["motion_relevance"]
    assert meta["preprocessing"]["mean"] == [0.4, 0.4, 0.4] and meta["preprocessing"]["std"] == [0.2, 0.2, 0.2]
    assert meta["model"]["_target_"] == "motion_relevance.models.hf.HFVideoClassifier"
    assert str(folder) not in json.dumps(meta["model"])
    assert meta["model"]["num_classes"] == 2  # the head was replaced for the tiny data's 2 classes
    assert float(out["metrics"]["test/explained_clips"]) == 2


@pytest.mark.slow
def test_cli_train_and_explain_hf_timesformer_tiny(tmp_path: Path) -> None:
    """The entry points as a user runs them (python -m ...), with Grad-CAM, Guided Backprop and Integrated
    Gradients."""
    import subprocess

    from tests.conftest import TINY_DATA

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "src")}
    common = [f"paths.data_dir={tmp_path}/data", f"paths.cache_dir={tmp_path}/cache", f"paths.log_dir={tmp_path}/logs",
              *TINY_DATA]
    run = subprocess.run([sys.executable, "-m", "motion_relevance.train", "model=hf_timesformer_tiny",
                          "trainer.max_epochs=1", "test=false", "logger=csv", "callbacks=default",
                          "~callbacks.progress_bar", *common], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    ckpt = next((tmp_path / "logs").rglob("last.ckpt"))
    run = subprocess.run([sys.executable, "-m", "motion_relevance.explain_app", f"ckpt_path={ckpt}",
                          "~explainers.dtd", "~explainers.guided_gradcam",
                          "+explainer@explainers.ig=integrated_gradients",
                          "objective.method=gradcam", "faithfulness=none", "randomization=none", "num_clips=2",
                          "logger=csv", "~callbacks.progress_bar", *common], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads(next((tmp_path / "logs" / "explain").rglob("metrics.json")).read_text())
    for method in ("gradcam", "gbp", "ig"):
        assert f"test/precision/{method}" in metrics, method


def test_core_package_does_not_need_transformers() -> None:
    """transformers is imported only inside functions of models/hf.py, and the package's models and explainers import
    and run without it (the adapter then names the extra to install)."""
    import ast
    import subprocess

    root = Path(__file__).resolve().parents[1]
    package = root / "src" / "motion_relevance"
    for file in package.rglob("*.py"):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "transformers" or n.startswith("transformers.") for n in names):
                where = f"{file.relative_to(root)}:{node.lineno}"
                assert file == package / "models" / "hf.py" and id(node) not in top_level, where
    # Without transformers (blocked before any import), the models, the explainers (temporal_share's TimeSformer
    # map included) and the adapter module import, a zoo model builds, and the adapter names the extra to install.
    # (The entry points are not imported here: torchmetrics itself imports transformers when it finds it.)
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import motion_relevance.models, motion_relevance.models.hf, motion_relevance.explain\n"
            "import motion_relevance.explain.temporal_flow, motion_relevance.explain.canonize_trace\n"
            "motion_relevance.models.C3D(num_classes=2)\n"
            "try:\n    motion_relevance.models.hf._transformers()\n"
            "except ImportError as err:\n    sys.exit(0 if 'motion_relevance[transformers]' in str(err) else 3)\n"
            "sys.exit(4)")
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "src")}
    assert subprocess.run([sys.executable, "-c", code], cwd=root, env=env, timeout=120).returncode == 0


def _index(folder: Path, weight_map: object) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize(("damage", "error", "message"), [
    (lambda f: _index(f, None), ValueError, r"model\.safetensors\.index\.json' has no weight_map"),
    (lambda f: _index(f, {"w": "gone.safetensors"}), FileNotFoundError,
     r"names missing shards \[.gone\.safetensors.\]"),
    (lambda f: _index(f, {"w": "../outside.safetensors"}), ValueError, "outside"),
    (lambda f: (_index(f, {"w": "w.bin"}), (f / "w.bin").write_bytes(b"x")), ValueError,
     "names files that are not .safetensors"),
    (lambda f: (f / "config.json").write_text("{not json"), ValueError, r"config\.json' is not readable JSON"),
    (lambda f: (f / "config.json").write_text("[1, 2]"), ValueError, r"config\.json' holds a list"),
    (lambda f: (f / "extra.safetensors").write_bytes((f / "model.safetensors").read_bytes()), ValueError,
     "repeats the tensor"),
])
def test_damaged_folders_are_refused_naming_the_file(tmp_path: Path, damage, error: type, message: str) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    damage(folder)
    with pytest.raises(error, match=message):
        from_folder(folder)


def test_bad_paths_configs_and_channels_are_refused(tmp_path: Path) -> None:
    folder = saved(tmp_path, "VideoMAEForVideoClassification",
                   architectures=["VideoMAEForVideoClassification", "VivitForVideoClassification"])
    with pytest.raises(ValueError, match="field architectures=.* must name one class"):
        from_folder(folder)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        from_folder(folder / "config.json")
    with pytest.raises(ValueError, match="config must be a mapping"):
        HFVideoClassifier("VideoMAEForVideoClassification", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config.model_type='vivit' does not match architecture"):
        HFVideoClassifier("VideoMAEForVideoClassification", {"model_type": "vivit"})
    with pytest.raises(ValueError, match="architecture='Nope' is not a supported video classifier"):
        HFVideoClassifier("Nope", {})
    net = from_transformers(tiny_hf("VideoMAEForVideoClassification"))
    with pytest.raises(ValueError, match=r"built for 3 channels, got clips \(2, 1, 4, 16, 16\)"):
        net(clips()[:, :1])


def test_timesformer_as_built_is_blind_to_frame_order_until_its_time_embeddings_move() -> None:
    """transformers starts TimeSformer's time embeddings at zero; with per-frame patches, time attention that only
    mixes the frames of one position and a class token averaged over frames, the network is then exactly invariant
    to the order of the frames: a clip and its time reversal (MoveLeft vs MoveRight) get the same logits. ViViT's
    tubelets span frames, so its logits tell them apart from the start (docs/method.md, "Seeds, batch size and
    schedule")."""
    x = clips()
    reverse = x.flip(2)
    shuffled = x[:, :, torch.tensor([2, 0, 3, 1])]
    timesformer = tiny_hf("TimesformerForVideoClassification")
    arch = "TimesformerForVideoClassification"
    assert not timesformer.timesformer.embeddings.time_embeddings.any()
    torch.testing.assert_close(hf_logits(timesformer, arch, reverse), hf_logits(timesformer, arch, x))
    torch.testing.assert_close(hf_logits(timesformer, arch, shuffled), hf_logits(timesformer, arch, x))
    with torch.no_grad():
        timesformer.timesformer.embeddings.time_embeddings.normal_(0.0, 0.5)
    assert (hf_logits(timesformer, arch, reverse) - hf_logits(timesformer, arch, x)).abs().max() > 1e-3
    vivit = tiny_hf("VivitForVideoClassification")
    arch = "VivitForVideoClassification"
    assert (hf_logits(vivit, arch, reverse) - hf_logits(vivit, arch, x)).abs().max() > 1e-3
