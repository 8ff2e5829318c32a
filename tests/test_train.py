"""The training entry point: fast_dev_run, resume, logging, bad config, corrupt videos."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from motion_relevance.pipeline.record import write_metrics
from motion_relevance.train import train


def test_fast_dev_run_trains_and_tests(train_cfg) -> None:
    cfg = train_cfg("trainer.fast_dev_run=true")
    metrics, objects = train(cfg)
    assert "train/loss" in metrics and "test/acc" in metrics
    assert torch.isfinite(torch.as_tensor(metrics["train/loss"]))
    assert objects["model"].net.num_classes == 2


def test_checkpoints_csv_and_resume(train_cfg) -> None:
    cfg = train_cfg("trainer.max_epochs=1", "trainer.limit_val_batches=1")
    metrics, _ = train(cfg)
    run = Path(cfg.paths.output_dir)
    last = run / "checkpoints" / "last.ckpt"
    assert last.exists() and metrics["best_checkpoint"]
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0
    meta = checkpoint["motion_relevance"]
    assert meta["class_names"] == ["MoveRight", "MoveLeft"]
    assert meta["preprocessing"]["crop_size"] == [32, 32]
    assert meta["model"]["_target_"] == "motion_relevance.models.C3D"
    csv_text = (run / "csv" / "metrics.csv").read_text()
    for name in ("train/loss", "val/acc", "test/acc"):
        assert name in csv_text

    resumed = train_cfg("trainer.max_epochs=2", "trainer.limit_val_batches=1", f"ckpt_path={last}", "test=false")
    with open_dict(resumed):
        resumed.paths.output_dir = str(run.parent / "resumed")
    _, objects = train(resumed)
    trainer = objects["trainer"]
    assert trainer.current_epoch == 2  # continued from epoch 1, not restarted
    assert trainer.global_step > checkpoint["global_step"]


def test_wandb_offline_run_holds_metric_names(train_cfg, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = train_cfg(
        "logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"
    )
    from motion_relevance.utils.run import finish_wandb

    try:
        train(cfg)
    finally:
        finish_wandb()
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    # the offline run's record file (what `wandb sync` uploads) holds every logged metric name; W&B's service
    # process may still be flushing it right after finish()
    names = [n.encode() for n in ("train/loss", "val/acc", "test/acc", "trainer/global_step")]
    deadline = time.monotonic() + 30
    while True:
        records = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        if all(n in records for n in names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for name in names:
        assert name in records, name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.net.width=0", "model.net.width"),
        ("model.net.width=-0.5", "model.net.width"),
        ("model.optimizer._target_=torch.optim.Nope", "model.optimizer._target_"),
        ("model.optimizer._target_=torch.nn.Linear", "model.optimizer._target_"),
        ("data.clip_len=0", "clip_len"),
        ("model.max_failure_fraction=2", "model.max_failure_fraction"),
    ],
)
def test_bad_values_fail_before_work(train_cfg, override: str, message: str) -> None:
    cfg = train_cfg(override)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        train(cfg)
    assert not (Path(cfg.paths.data_dir) / "motion_shapes_never").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; chmod cannot make a folder unwritable")
def test_unwritable_output_dir_is_named(train_cfg, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    cfg = train_cfg()
    with open_dict(cfg):
        cfg.paths.output_dir = str(locked / "run")
    with pytest.raises(PermissionError, match="paths.output_dir"):
        train(cfg)


def test_output_dir_that_is_a_file_is_named(train_cfg, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    cfg = train_cfg()
    with open_dict(cfg):
        cfg.paths.output_dir = str(blocker / "run")
    with pytest.raises(PermissionError, match=str(blocker)):
        train(cfg)


def _corrupt_copy(cfg, tmp_path: Path, n_bad: int) -> list[str]:
    """Copy the tiny set, truncate ``n_bad`` of its training videos, point ``cfg.data`` at the copy."""
    dm = instantiate(cfg.data, _recursive_=False)
    dm.prepare_data()
    copy = tmp_path / "corrupt_copy"
    shutil.copytree(dm.root, copy)
    with open_dict(cfg):
        cfg.data._target_ = "motion_relevance.datamodules.VideoDataModule"
        cfg.data.root = str(copy)
        cfg.data.pop("generator")
        cfg.data.cache_dir = str(tmp_path / "index")
    probe = instantiate(cfg.data, _recursive_=False)
    probe.setup("fit")
    victims = [item.path for item in probe.datasets["train"].items[:n_bad]]
    for rel in victims:
        path = copy / rel
        path.write_bytes(path.read_bytes()[:300])  # the container header only: nothing decodes
    return victims


def test_corrupt_video_is_skipped_and_counted(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("trainer.max_epochs=1", "test=false", "trainer.limit_val_batches=0",
                    "model.max_failure_fraction=0.5")
    victims = _corrupt_copy(cfg, tmp_path, 1)
    metrics, _ = train(cfg)
    assert metrics["train/skipped_videos"] == 1, victims


def test_too_many_corrupt_videos_stop_the_run(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("trainer.max_epochs=1", "test=false", "trainer.limit_val_batches=0",
                    "model.max_failure_fraction=0.0")
    victims = _corrupt_copy(cfg, tmp_path, 3)
    with pytest.raises(RuntimeError, match="could not be decoded") as info:
        train(cfg)
    assert any(Path(v).name in str(info.value) for v in victims)


def test_metrics_json_is_valid_json_with_nan(tmp_path: Path) -> None:
    path = write_metrics(tmp_path, {"a": torch.tensor(1.5), "b": float("nan"), "c": "x"})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": "x"}


def test_cpu_threads_leave_a_core_per_worker(monkeypatch) -> None:
    from omegaconf import OmegaConf

    from motion_relevance.utils.run import cpu_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)), raising=False)
    cfg = OmegaConf.create({"threads": "auto", "trainer": {"accelerator": "cpu"}, "data": {"num_workers": 2}})
    assert cpu_threads(cfg) == 2
    cfg.data.num_workers = 8
    assert cpu_threads(cfg) == 1  # never below one
    cfg.trainer.accelerator = "gpu"
    assert cpu_threads(cfg) is None  # the GPU does the work
    assert cpu_threads(OmegaConf.create({"threads": 3})) == 3
    assert cpu_threads(OmegaConf.create({"threads": None})) is None
    with pytest.raises(ValueError, match="threads"):
        cpu_threads(OmegaConf.create({"threads": 0}))
