"""Weights are checked where they enter: pretrained files, checkpoints for mr-explain / mr-live (``load_classifier``)
and checkpoints to resume or test in mr-train (``check_resume``). Each test feeds one bad input built here with the
project's own save path (``VideoClassifier.on_save_checkpoint`` + ``torch.save``, as ModelCheckpoint writes)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from motion_relevance.models.checkpoint import load_classifier
from motion_relevance.models.module import VideoClassifier
from motion_relevance.models.registry import build_registered
from motion_relevance.models.weights import available_memory
from motion_relevance.train import build_model, check_resume, train
from tests.conftest import compose_config

CLASSES = ["right", "left"]
C3D_NET = {"_target_": "motion_relevance.models.C3D", "num_classes": 2, "width": 0.125, "clip_len": 16,
           "crop_size": 32, "in_channels": 3, "dropout": 0.0, "init": "kaiming"}
R3D_NET = {"_target_": "motion_relevance.models.r3d_18", "num_classes": 2, "width": 0.125, "in_channels": 3,
           "init": "kaiming"}
PRE = {"clip_len": 16, "stride": 1, "resize": None, "crop_size": [32, 32], "mean": [0.5, 0.5, 0.5],
       "std": [0.2, 0.2, 0.2], "scale": 255.0, "channel_order": "RGB", "pathways": None}


def save_checkpoint(path: Path, net_config: dict[str, Any], preprocessing: dict[str, Any] | None = None,
                    model_edit: dict[str, Any] | None = None, tensor_edit: dict[str, float] | None = None) -> Path:
    """A checkpoint as mr-train writes it; ``model_edit`` then changes the stored description, ``tensor_edit``
    writes one value into the first element of the named ``state_dict`` tensors."""
    torch.manual_seed(0)
    net = build_registered(net_config)
    module = VideoClassifier(net=net, net_config=net_config, preprocessing=preprocessing or PRE,
                             class_names=CLASSES)
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    checkpoint["motion_relevance"]["model"] = {**net_config, **(model_edit or {})}  # a copy: the constants stay
    for key, value in (tensor_edit or {}).items():
        checkpoint["state_dict"][key].view(-1)[0] = value
    torch.save(checkpoint, path)
    return path


def _datamodule(pre: dict[str, Any] | None = None) -> SimpleNamespace:
    dm = SimpleNamespace(num_classes=len(CLASSES), class_names=list(CLASSES))
    dm.transform_config = lambda: dict(pre or PRE)
    return dm


# ------------------------------------------------------------------------------------------- non-finite weights
def test_nan_pretrained_weights_stop_mr_train_before_training(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("model=videomae_tiny", "trainer.max_epochs=1")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_registered({**cfg.model.net, "num_classes": 2}).state_dict().items()}
    torch.save({k: torch.full(s, math.nan) for k, s in shapes.items()}, tmp_path / "nan_videomae.bin")
    cfg = train_cfg("model=videomae_tiny", "trainer.max_epochs=1", f"model.pretrained={tmp_path / 'nan_videomae.bin'}")
    with pytest.raises(ValueError, match=r"model\.pretrained='.*nan_videomae\.bin': tensor 'videomae\.embeddings\."
                                         r"patch_embeddings\.projection\.weight' .* NaN"):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))  # nothing was trained


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_checkpoint_is_refused_at_load_naming_file_and_tensor(tmp_path: Path, value: float) -> None:
    path = save_checkpoint(tmp_path / "diverged.ckpt", C3D_NET, tensor_edit={"net.conv3b.weight": value})
    for load in (lambda: load_classifier(path), lambda: check_resume(str(path), _datamodule())):
        with pytest.raises(ValueError, match=r"^ckpt_path='.*diverged\.ckpt': tensor 'net\.conv3b\.weight' "):
            load()


# ------------------------------------------------------------------------------ descriptions against tensors
@pytest.mark.parametrize(("edit", "message"), [
    # C3D's fc8 is (num_classes, 4096 * width); conv1 has 64 * width output channels.
    ({"num_classes": 7}, r"model\.num_classes=7 gives fc8\.weight the shape \(7, 512\), but the stored tensor is "
                         r"\(2, 512\)"),
    ({"width": 0.25}, r"model\.width=0\.25 gives conv1\.weight the shape \(16, 3, 3, 3, 3\), but the stored tensor "
                      r"is \(8, 3, 3, 3, 3\)"),
])
def test_a_description_that_disagrees_with_its_tensors_names_the_key(tmp_path: Path, edit: dict,
                                                                      message: str) -> None:
    path = save_checkpoint(tmp_path / "edited.ckpt", C3D_NET, model_edit=edit)
    with pytest.raises(ValueError, match=r"^ckpt_path='.*edited\.ckpt': " + message + r".*re-save the checkpoint"):
        load_classifier(path)


def test_a_class_count_that_disagrees_with_the_class_names_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "three.ckpt", {**C3D_NET, "num_classes": 3})  # 2 class names stored
    with pytest.raises(ValueError, match=r"^ckpt_path='.*three\.ckpt': model\.num_classes=3 but class_names lists 2 "
                                         r"classes"):
        load_classifier(path)


def test_a_stored_width_that_cannot_fit_is_refused_before_allocation(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "huge.ckpt", C3D_NET, model_edit={"width": 1000})
    available = available_memory()
    if available is not None and available > 10**12:
        pytest.skip("this machine holds a C3D of width 1000")
    with pytest.raises(ValueError, match=r"^ckpt_path='.*huge\.ckpt': model\.width=1000 describes a network of "
                                         r"\d+\.\d GB of parameters, more than the .* nothing was allocated"):
        load_classifier(path)
    with pytest.raises(ValueError, match=r"model\.width=1000 describes"):
        check_resume(str(path), _datamodule())


def test_a_run_model_that_cannot_fit_is_refused_before_allocation(tmp_path: Path) -> None:
    cfg = compose_config("train", ["model=c3d_small", "data.crop_size=32", "model.net.width=1000"], tmp_path)
    if (available_memory() or 0) > 10**12:
        pytest.skip("this machine holds a C3D of width 1000")
    with pytest.raises(ValueError, match=r"^model\.net\.width=1000 describes a network of \d+\.\d GB"):
        build_model(cfg, _datamodule())


# ----------------------------------------------------------------------------------- another architecture
def test_resuming_a_checkpoint_of_another_architecture_names_it(train_cfg, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "r3d.ckpt", R3D_NET)
    with pytest.raises(ValueError, match=r"^ckpt_path='.*r3d\.ckpt' holds a r3d_18 \(width=0\.125\) .* but model\.net "
                                         r"builds a x3d.*; pass model=r3d_small$"):
        train(train_cfg("model=x3d_small", f"ckpt_path={path}", "trainer.max_epochs=1"))
    run = compose_config("train", ["model=r3d_18"], tmp_path / "cfg").model.net  # same class, other width
    with pytest.raises(ValueError, match=r"holds a r3d_18 \(width=0\.125\) whose shapes differ from the r3d_18 that "
                                         r"model\.net builds \(width: checkpoint 0\.125 vs run 1\.0\); pass "
                                         r"model=r3d_small$"):
        check_resume(str(path), _datamodule(), run)
    assert check_resume(str(path), _datamodule(), compose_config("train", ["model=r3d_small"], tmp_path / "ok"
                                                                 ).model.net)["model"]["width"] == 0.125


def test_tensors_of_another_layout_under_a_description_name_the_layout(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "swapped.ckpt", R3D_NET)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["motion_relevance"]["model"] = dict(C3D_NET)  # r3d tensors under a C3D description
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"^ckpt_path='.*swapped\.ckpt': model describes a c3d but its tensors do "
                                         r"not fit it \(missing keys .*; its tensors resemble r3d_18"):
        load_classifier(path)


# ---------------------------------------------------------------------------------------- SlowFast's alpha
SLOWFAST_NET = {"_target_": "motion_relevance.models.SlowFast", "num_classes": 2, "alpha": 4, "beta": 0.125,
                "depth": 50, "width": 0.125, "clip_len": 16, "crop_size": 32, "head_pool": "adaptive",
                "init": "default"}


def test_slowfast_alpha_of_model_and_preprocessing_must_agree(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "sf.ckpt", SLOWFAST_NET, preprocessing={**PRE, "pathways": {"alpha": 2}})
    with pytest.raises(ValueError, match=r"^ckpt_path='.*sf\.ckpt': model\.alpha=4 but preprocessing\.pathways\.alpha=2"
                                         r".*set preprocessing\.pathways\.alpha=4"):
        load_classifier(path)
    ok = save_checkpoint(tmp_path / "sf_ok.ckpt", SLOWFAST_NET, preprocessing={**PRE, "pathways": {"alpha": 4}})
    assert load_classifier(ok).net.alpha == 4
    cfg = compose_config("train", ["model=slowfast_small", "data.crop_size=32"], tmp_path / "cfg")
    with pytest.raises(ValueError, match=r"^model\.net\.alpha=4 but data\.pathways\.alpha=2"):
        build_model(cfg, _datamodule({**PRE, "pathways": {"alpha": 2}}))
    with pytest.raises(ValueError, match=r"^model\.net\.alpha=4 is a two-pathway model but data\.pathways=None"):
        build_model(cfg, _datamodule(PRE))
