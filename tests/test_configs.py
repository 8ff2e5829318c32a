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
    # explanation runs need gradients in validation and test (Lightning's loops carry the flag)
    assert trainer.validate_loop.inference_mode is False and trainer.test_loop.inference_mode is False


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


# model=hf needs model.path (a save_pretrained folder): tests/test_hf_models.py builds it from one.
@pytest.mark.parametrize("option", [o for o in _options("model") if o != "hf"])
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


@pytest.mark.parametrize("option", _options("flow"))
def test_flow_presets_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_config("explain", ["ckpt_path=x.ckpt", f"flow={option}"], tmp_path)
    if option == "none":
        assert cfg.flow is None  # no flow precision: the callbacks get null, not an empty mapping
    else:
        assert hydra.utils.instantiate(cfg.flow).method == option


@pytest.mark.parametrize("root", ["train", "explain"])
@pytest.mark.parametrize("group", ["flow", "cache", "logger", "callbacks", "selective", "trainer", "data", "model"])
def test_every_documented_option_passes_the_pre_work_checks(root: str, group: str, tmp_path: Path) -> None:
    """Each option of each group composes and passes the checks the entry points run before any work."""
    from motion_relevance.utils.validation import validate_run_config

    if root == "explain" and group == "model":
        return
    for option in _options(group):
        extra = ["ckpt_path=x.ckpt"] if root == "explain" else []
        if group == "trainer" and option in ("gpu", "ddp"):
            extra.append("trainer.accelerator=cpu")
        choose = f"+{group}={option}" if (root, group) == ("train", "cache") else f"{group}={option}"
        cfg = compose_config(root, [choose, *extra], tmp_path / option)
        validate_run_config(cfg)
        for node in (cfg.get("callbacks") or {}).values():
            if group == "callbacks" or root == "explain":
                hydra.utils.instantiate(node)


def test_config_defaults_match_the_code_constants(tmp_path: Path) -> None:
    """Values the code and the configs both state (one source each) agree."""
    from motion_relevance.data.synthetic import MOTION_SHAPES_MEAN, MOTION_SHAPES_STD
    from motion_relevance.explain.selective import DEFAULT_SIGMA

    cfg = compose_config("train", [], tmp_path)
    assert cfg.selective.sigma == DEFAULT_SIGMA
    assert tuple(cfg.data.mean) == MOTION_SHAPES_MEAN and tuple(cfg.data.std) == MOTION_SHAPES_STD


@pytest.mark.parametrize("option", _options("debug"))
def test_debug_presets_compose(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"debug={option}"], tmp_path)
    assert cfg.task_name == "debug"


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiments_compose(option: str, tmp_path: Path) -> None:
    root = "explain" if option.startswith(("explain", "study_explain")) else "train"
    overrides = [f"experiment={option}"] + (["ckpt_path=x.ckpt"] if root == "explain" else [])
    if option.startswith("study_explain"):  # the study's sweeps set the model of each job
        overrides.append("study.model=c3d_small")
    cfg = compose_config(root, overrides, tmp_path)
    resolve(cfg)
