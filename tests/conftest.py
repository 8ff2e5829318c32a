"""Shared fixtures: composed Hydra configs shrunk for tests, a tiny generated motion_shapes set."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from motion_relevance.conf import CONFIG_DIR
from motion_relevance.utils.compose import compose_config as _compose

ROOT = Path(__file__).resolve().parents[1]
CONF = CONFIG_DIR


def _shared_data() -> Path:
    """The team's real test clips: $MR_SHARED_DATA, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("MR_SHARED_DATA"), ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return ROOT.parent / "shared" / "data"


SHARED_DATA = _shared_data()
SHARED = SHARED_DATA.parent

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

#: Small motion_shapes set: 2 classes x 8 videos (4 groups, 1 for test), 32x32 frames.
TINY_DATA = [
    "data.generator.classes=[right,left]",
    "data.generator.videos_per_class=8",
    "data.generator.num_groups=4",
    "data.generator.test_groups=1",
    "data.generator.frame_size=[32,32]",
    "data.generator.object_size=[8,10]",
    "data.crop_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.index_threads=1",
    "data.val_fraction=0.34",
]


def compose_config(name: str, overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``motion_relevance/conf/<name>.yaml`` as Hydra would, with outputs under ``tmp_path``."""
    cfg = _compose(name, overrides, tmp_path / "run")
    with open_dict(cfg):
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the generated data sets of the whole test session (generated once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def train_cfg(tmp_path: Path, data_root: Path) -> Callable[..., DictConfig]:
    """``train_cfg(*overrides)``: the real train config on the tiny data, logging to CSV, outputs in tmp_path."""

    def make(*overrides: str) -> DictConfig:
        base = [
            f"paths.data_dir={data_root}",
            f"paths.cache_dir={data_root}/cache",
            "logger=csv",
            "callbacks=default",
            "~callbacks.progress_bar",
            *TINY_DATA,
        ]
        return compose_config("train", base + list(overrides), tmp_path)

    return make


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A tiny model trained for one epoch on the tiny data (its quality does not matter; never modify it)."""
    from motion_relevance.train import train

    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = compose_config(
        "train",
        [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", "logger=csv", "callbacks=default",
         "~callbacks.progress_bar", "trainer.max_epochs=1", "test=false", *TINY_DATA],
        tmp,
    )
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
