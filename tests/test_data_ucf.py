"""UCF-101 split handling on the team's real partial tree ucf101_mini (``SHARED_DATA``, read-only: caches in tmp)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from motion_relevance.data import VideoIndex, VideoItem, load_split, read_class_ind, split_by_group
from motion_relevance.datamodules import VideoDataModule
from tests.conftest import SHARED_DATA

MINI = SHARED_DATA / "ucf101_mini"
pytestmark = pytest.mark.skipif(not MINI.is_dir(), reason="ucf101_mini not available")


def test_class_ind_crlf_and_zero_based_labels() -> None:
    names = read_class_ind(MINI / "ucfTrainTestlist" / "classInd.txt")
    assert len(names) == 101 and names.index("Basketball") == 7 and names.index("SoccerJuggling") == 83
    assert all("\r" not in n for n in names)


def test_partial_tree_refused_then_allowed() -> None:
    with pytest.raises(FileNotFoundError, match=r"9535 of 9537 videos .*v_ApplyEyeMakeup_g08_c01.avi"):
        load_split(MINI, 1, "train")
    _, train, missing = load_split(MINI, 1, "train", allow_missing=True)
    _, test, missing_t = load_split(MINI, 1, "test", allow_missing=True)
    found = sorted(it.path for it in train + test)
    assert found == [
        "UCF-101/Basketball/v_Basketball_g01_c01.avi",
        "UCF-101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi",
        "UCF-101/SoccerJuggling/v_SoccerJuggling_g24_c01.avi",
    ]
    assert len(missing) == 9535 and len(missing_t) == 3782
    assert {it.label for it in train} == {83} and [it.label for it in test] == [7]  # test label from folder


def test_datamodule_clips_and_counts(tmp_path: Path) -> None:
    dm = VideoDataModule(MINI, allow_missing=True, cache_dir=tmp_path, num_workers=0, batch_size=8, val_fraction=0.5)
    assert dm.num_classes == 101 and dm.class_names[7] == "Basketball"
    dm.setup()
    assert dm.num_missing == 9535 + 3782
    assert len(dm.datasets["test"]) == 8  # Basketball: 141 frames -> 8 non-overlapping 16-frame clips
    batch = next(iter(dm.test_dataloader()))
    assert batch["clip"].shape == (8, 3, 16, 112, 112) and batch["label"].tolist() == [7] * 8
    assert batch["start"].tolist() == list(range(0, 128, 16)) and batch["skipped"] == []
    assert "mask" not in batch
    train_groups = {it.group for it in dm.datasets["train"].items}
    val_groups = {it.group for it in dm.datasets["val"].items}
    assert train_groups and val_groups and not train_groups & val_groups
    train = next(iter(dm.train_dataloader()))
    assert train["clip"].shape == (1, 3, 16, 112, 112) and train["label"].tolist() == [83]


def test_uniform_sampling_and_port_normalisation(tmp_path: Path) -> None:
    dm = VideoDataModule(MINI, allow_missing=True, cache_dir=tmp_path, num_workers=0, test_sampling="uniform",
                         clips_per_video=3, channel_order="BGR", scale=1.0, mean=(90.25, 97.66, 101.41), std=1.0)
    dm.setup("test")
    assert [dm.datasets["test"].samples[i][1] for i in range(3)] == [0, 62, 125]
    assert dm.transform_config()["channel_order"] == "BGR"


def test_index_cached_and_rebuilt_on_change(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(MINI / "UCF-101", root / "UCF-101")
    rels = [str(p.relative_to(root)) for p in sorted(root.glob("UCF-101/*/*.avi"))]
    first = VideoIndex.build(root, rels, tmp_path / "cache", num_threads=2, progress=False)
    assert first.num_probed == 3 and first[rels[0]].num_frames == 141
    assert first[rels[0]].fps == pytest.approx(29.97, abs=0.01)
    assert VideoIndex.build(root, rels, tmp_path / "cache").num_probed == 0
    (root / rels[1]).write_bytes((root / rels[1]).read_bytes()[:2000])  # truncate one file
    third = VideoIndex.build(root, rels, tmp_path / "cache")
    assert third.num_probed == 1 and third.bad == [rels[1]]
    assert {r: third[r].num_frames for r in (rels[0], rels[2])} == {r: first[r].num_frames for r in (rels[0], rels[2])}


def test_val_split_by_group_is_deterministic() -> None:
    items = [VideoItem(f"UCF-101/A/v_A_g{g:02d}_c{c:02d}.avi", 0, f"g{g:02d}") for g in range(8, 26) for c in (1, 2)]
    train, val = split_by_group(items, 0.1, seed=0)
    assert {i.group for i in train}.isdisjoint({i.group for i in val}) and len({i.group for i in val}) == 2
    assert (train, val) == split_by_group(items, 0.1, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_group(items, 0.95)


def test_fast_dev_run_trains_on_the_real_partial_tree(tmp_path: Path) -> None:
    """One training/validation/test step of the real UCF-101 path on the partial tree, missing videos counted."""
    from motion_relevance.train import train
    from tests.conftest import compose_config

    cfg = compose_config(
        "train",
        [
            "data=ucf101", f"data.root={MINI}", "data.allow_missing=true", f"paths.cache_dir={tmp_path}/cache",
            "data.num_workers=0", "data.batch_size=2", "data.val_fraction=0.5", "logger=csv", "callbacks=none",
            "trainer.fast_dev_run=true",
        ],
        tmp_path,
    )
    metrics, objects = train(cfg)
    assert objects["model"].net.num_classes == 101
    assert metrics["data/missing_videos"] == 9535 + 3782
    assert "train/loss" in metrics and "test/acc" in metrics
