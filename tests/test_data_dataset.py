"""VideoClipDataset / DataModules on small generated trees: padding, masks, corrupt files, quirks, configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from motion_relevance.conf import CONFIG_DIR
from motion_relevance.data import MotionShapesConfig, VideoDecoder, generate_motion_shapes, load_split
from motion_relevance.data.video import resolve_decoder
from motion_relevance.datamodules import MotionShapesDataModule, VideoDataModule

TINY = {"classes": ["right", "left", "up", "down"], "videos_per_class": 6, "num_groups": 3, "test_groups": 1,
        "frame_size": (40, 40), "num_frames": (18, 20), "object_size": (8, 10)}
CONF = CONFIG_DIR / "data"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_motion_shapes(tmp_path_factory.mktemp("ms") / "ms", MotionShapesConfig(**TINY)).root


def test_motion_shapes_datamodule_batches_with_masks(tmp_path: Path) -> None:
    dm = MotionShapesDataModule(tmp_path / "ms", generator=TINY, crop_size=32, batch_size=4, num_workers=2,
                                cache_dir=tmp_path / "cache", val_fraction=0.5)
    dm.prepare_data()
    dm.setup()
    assert dm.num_classes == 4 and dm.class_names[1] == "MoveLeft"
    assert not dm.train_transform.hflip  # direction labels are mirror-sensitive
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 4 * 2, "val": 4 * 2, "test": 4 * 2}  # groups g02 / g03 split train vs val
    groups = {k: {it.group for it in v.items} for k, v in dm.datasets.items()}
    assert groups["test"] == {"g01"} and not groups["train"] & groups["val"]
    batches = list(dm.train_dataloader())
    assert sum(len(b["label"]) for b in batches) == 8
    b = batches[0]
    assert b["clip"].shape == (4, 3, 16, 32, 32) and b["mask"].shape == (4, 16, 32, 32)
    assert b["mask"].dtype == torch.bool
    assert b["mask"].any()
    cfg = dm.transform_config()
    assert cfg == {"clip_len": 16, "stride": 1, "resize": None, "crop_size": [32, 32], "mean": [0.29] * 3,
                   "std": [0.16] * 3, "scale": 255.0, "channel_order": "RGB", "pathways": None,
                   "decoder": resolve_decoder("decord")}
    t = next(iter(dm.test_dataloader()))
    frames = dm.eval_transform.denormalize(t["clip"])
    assert frames.shape == (4, 16, 32, 32, 3)


def test_workers_after_parent_decoded(tree: Path, tmp_path: Path) -> None:
    """Readers opened in the parent must not be reused (or destroyed) in forked workers: that deadlocked."""
    dm = VideoDataModule(tree, resize=None, crop_size=32, num_workers=2, batch_size=4, cache_dir=tmp_path)
    dm.setup("test")
    ds = dm.datasets["test"]
    assert ds[0] is not None and ds[1] is not None  # opens readers in this process
    assert sum(len(b["label"]) for b in dm.test_dataloader()) == len(ds)


def test_loop_padding_on_short_generated_video(tmp_path: Path) -> None:
    root = generate_motion_shapes(tmp_path, MotionShapesConfig(**{**TINY, "num_frames": (10, 10)})).root
    dm = VideoDataModule(root, resize=None, crop_size=None, num_workers=0, cache_dir=tmp_path / "c", val_fraction=0)
    dm.setup("test")
    ds = dm.datasets["test"]
    assert len(ds) == 8  # one (padded) clip per test video (4 classes x 2 videos of group g01)
    item = ds[0]
    assert item["clip"].shape == (3, 16, 40, 40)
    np.testing.assert_array_equal(item["mask"][10:], item["mask"][:6])
    torch.testing.assert_close(item["clip"][:, 10:], item["clip"][:, :6])
    assert not torch.equal(item["mask"][0], item["mask"][9])


def test_opencv_backend_matches_decord(tree: Path) -> None:
    path = next((tree / "UCF-101").glob("*/*.avi"))
    idx = [3, 4, 5, 0, 0, 9]
    a = VideoDecoder("decord").read(path, idx)
    b = VideoDecoder("opencv").read(path, idx)
    np.testing.assert_array_equal(a, b)
    dec = VideoDecoder("opencv", resize=(20, 30))
    assert dec.read(path, [0, 1]).shape == (2, 20, 30, 3) and dec.read(path, [2, 3]).shape == (2, 20, 30, 3)


def test_corrupt_and_truncated_files_are_skipped_and_counted(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(tree, root)
    _, test_items, _ = load_split(root, 1, "test")
    trunc, garbage = root / test_items[0].path, root / test_items[1].path
    trunc.write_bytes(trunc.read_bytes()[:600])
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    dm = VideoDataModule(root, resize=None, crop_size=32, num_workers=0, batch_size=4, cache_dir=tmp_path / "c")
    dm.setup("test")
    batches = list(dm.test_dataloader())
    skipped = [p for b in batches for p in b["skipped"]]
    assert sorted(skipped) == sorted([test_items[0].path, test_items[1].path])
    assert sum(len(b["label"]) for b in batches) == len(test_items) - 2
    assert dm.datasets["test"].num_failed == 2


def test_test_list_with_unknown_class_is_refused(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "t"
    shutil.copytree(tree, root)
    lists = root / "ucfTrainTestlist"
    with (lists / "testlist01.txt").open("a") as f:
        f.write("Juggling/v_Juggling_g01_c01.avi\r\n")
    with pytest.raises(ValueError, match=r"class 'Juggling' .* is not in classInd.txt"):
        load_split(root, 1, "test")


def test_handstand_pushups_quirk(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "q"
    src = next((tree / "UCF-101").glob("*/*.avi"))
    (root / "UCF-101" / "HandstandPushups").mkdir(parents=True)
    for g in (1, 2):
        shutil.copy(src, root / "UCF-101" / "HandstandPushups" / f"v_HandStandPushups_g{g:02d}_c01.avi")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(b"1 Archery\r\n2 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_bytes(b"HandstandPushups/v_HandstandPushups_g02_c01.avi 2\r\n")
    (lists / "testlist01.txt").write_bytes(b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    _, train, _ = load_split(root, 1, "train")
    _, test, _ = load_split(root, 1, "test")
    assert train[0].path == "UCF-101/HandstandPushups/v_HandStandPushups_g02_c01.avi" and train[0].label == 1
    assert test[0].label == 1 and test[0].group == "g01"


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"clip_len": 0}, r"clip_len=0 out of range: allowed \[1, 4096\]"),
     ({"crop_size": 200}, "crop_size=.*larger than resize"),
     ({"channel_order": "RBG"}, "channel_order"),
     ({"test_sampling": "dense"}, "test_sampling"),
     ({"split": 4}, "split=4")],
)
def test_datamodule_validation_before_work(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VideoDataModule("/nonexistent/root", **kw)


def test_hydra_configs_instantiate(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    paths = OmegaConf.create({"paths": {"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}})
    for name, cls in (("motion_shapes", MotionShapesDataModule), ("ucf101", VideoDataModule)):
        cfg = OmegaConf.merge(paths, {"data": OmegaConf.load(CONF / f"{name}.yaml")})
        dm = instantiate(cfg.data)
        assert type(dm) is cls and dm.clip_len == 16
    assert dm.transform_config()["resize"] == [128, 171]
    cfg = OmegaConf.merge(paths, {"data": OmegaConf.load(CONF / "motion_shapes.yaml")})
    ms = instantiate(cfg.data)
    assert ms.num_classes == 8 and ms.generator == MotionShapesConfig()  # yaml mirrors the dataclass defaults
    assert str(ms.root) == str(tmp_path / "data" / "motion_shapes")


def test_eval_order_shuffles_videos_but_keeps_their_clips_together(tree: Path, tmp_path: Path) -> None:
    common = {"generator": TINY, "crop_size": 32, "num_workers": 0, "cache_dir": tmp_path / "cache",
              "val_fraction": 0.5, "clip_len": 8}
    listed = MotionShapesDataModule(tree, eval_order="listed", **common)
    shuffled = MotionShapesDataModule(tree, eval_order="shuffled", **common)
    for dm in (listed, shuffled):
        dm.setup("test")
    a, b = listed.datasets["test"], shuffled.datasets["test"]
    videos_a = [a.items[vi].path for vi, _ in a.samples]
    videos_b = [b.items[vi].path for vi, _ in b.samples]
    assert sorted(zip(videos_a, (s for _, s in a.samples))) == sorted(zip(videos_b, (s for _, s in b.samples)))
    assert videos_a != videos_b  # another order ...
    runs = [v for i, v in enumerate(videos_b) if i == 0 or videos_b[i - 1] != v]
    assert len(runs) == len(set(videos_b))  # ... with each video's clips consecutive (decoded once)
    labels_a = [a.items[vi].label for vi, _ in a.samples][:4]
    labels_b = [b.items[vi].label for vi, _ in b.samples][:4]
    assert len(set(labels_b)) > len(set(labels_a))  # the first clips span more classes
    again = MotionShapesDataModule(tree, eval_order="shuffled", **common)
    again.setup("test")
    assert [s for s in again.datasets["test"].samples] == [s for s in b.samples]  # seeded: same on every rank
    with pytest.raises(ValueError, match="eval_order"):
        MotionShapesDataModule(tree, eval_order="random", **common)
