"""Every config group composes, and every object in it instantiates."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_config


def resolve(cfg) -> dict:
    """Resolve every interpolation outside Hydra's own node (which needs a running job)."""
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items() if k != "hydra"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("root", ["train", "explain"])
def test_root_configs_compose_and_resolve(root: str, tmp_path: Path) -> None:
    overrides = ["ckpt_path=x.ckpt"] if root == "explain" else []
    cfg = compose_config(root, overrides, tmp_path)
    resolve(cfg)
    assert cfg.data._target_ and cfg.trainer._target_


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_presets_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"trainer={option}"], tmp_path)
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    if node.get("accelerator") in ("gpu", "auto") and option != "cpu":
        node["accelerator"] = "cpu"  # this machine has no GPU: check the rest of the preset
        node["precision"] = "32-true"
    trainer = hydra.utils.instantiate(node, logger=False, enable_progress_bar=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert trainer.inference_mode is False if hasattr(trainer, "inference_mode") else True


@pytest.mark.parametrize("option", _options("logger"))
def test_logger_presets_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"logger={option}"], tmp_path)
    loggers = [hydra.utils.instantiate(node) for node in (cfg.get("logger") or {}).values()]
    expected = {"wandb": 2, "csv": 1, "none": 0}[option]
    assert len(loggers) == expected


@pytest.mark.parametrize("option", _options("callbacks"))
def test_callback_presets_instantiate(option: str, tmp_path: Path) -> None:
    if option == "explain":
        cfg = compose_config("explain", ["ckpt_path=x.ckpt"], tmp_path)
    else:
        cfg = compose_config("train", [f"callbacks={option}"], tmp_path)
    for node in (cfg.get("callbacks") or {}).values():
        hydra.utils.instantiate(node)


@pytest.mark.parametrize("option", _options("model"))
def test_model_presets_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={option}", "model.net.num_classes=5"], tmp_path)
    model = hydra.utils.instantiate(cfg.model)
    assert model.net.num_classes == 5


@pytest.mark.parametrize("option", _options("data"))
def test_data_presets_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"data={option}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=False)
    assert datamodule.transform_config()["clip_len"] == cfg.data.clip_len


@pytest.mark.parametrize("option", _options("explainer"))
def test_explainers_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_config("explain", ["ckpt_path=x.ckpt", f"+explainer@explainers.extra={option}"], tmp_path)
    explainer = hydra.utils.instantiate(cfg.explainers.extra)
    assert callable(explainer)


@pytest.mark.parametrize("option", ["farneback", "dis"])
def test_flow_presets_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_config("explain", ["ckpt_path=x.ckpt", f"flow={option}"], tmp_path)
    assert hydra.utils.instantiate(cfg.flow).method == option


@pytest.mark.parametrize("option", _options("debug"))
def test_debug_presets_compose(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"debug={option}"], tmp_path)
    assert cfg.task_name == "debug"


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiments_compose(option: str, tmp_path: Path) -> None:
    root = "explain" if option.startswith("explain") else "train"
    overrides = [f"experiment={option}"] + (["ckpt_path=x.ckpt"] if root == "explain" else [])
    cfg = compose_config(root, overrides, tmp_path)
    resolve(cfg)
