"""Data paths are compared as the files they name; the generator deletes nothing through a link; GIFs play live."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from motion_relevance.data import VideoIndex, load_split
from motion_relevance.data.splits import LIST_DIR, VIDEO_DIR, count_duplicates, read_class_ind, split_overlap
from motion_relevance.data.synthetic import LOCK, MANIFEST, PARTIAL, MotionShapesConfig, generate_motion_shapes
from tests.conftest import SHARED_DATA

MINI = SHARED_DATA / "ucf101_mini"
needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason="ucf101_mini not available")
CLIP = "Basketball/v_Basketball_g01_c01.avi"  # the one test video of split 1 on disk (label 8, 1-based)
SMALL = {"classes": ["right", "left"], "videos_per_class": 2, "num_groups": 2, "test_groups": 1,
         "frame_size": [32, 32], "object_size": [6, 8], "num_frames": [4, 4]}


# ------------------------------------------------------------------------------------------------ split files
def _mini(tmp_path: Path, *, train_extra: str = "", test_extra: str = "", crlf: bool = False) -> Path:
    """A writable copy of the real partial tree with lines appended to split 1's lists."""
    root = tmp_path / "ucf"
    shutil.copytree(MINI, root)
    for name, extra in (("trainlist01.txt", train_extra), ("testlist01.txt", test_extra)):
        if extra:
            path = root / LIST_DIR / name
            path.chmod(0o644)
            end = "\r\n" if crlf else "\n"
            text = path.read_text().rstrip("\r\n") + end + extra + end
            path.write_bytes(text.encode())
    return root


@needs_mini
def test_a_dot_spelling_in_the_test_list_is_a_duplicate_and_counted(tmp_path: Path) -> None:
    from motion_relevance.datamodules import VideoDataModule

    root = _mini(tmp_path, test_extra="Basketball/./v_Basketball_g01_c01.avi")
    with pytest.raises(ValueError, match=r"testlist01.txt: 1 videos are listed more than once .*lines \[270, 3784\]"):
        load_split(root, 1, "test", allow_missing=True)
    _, items, _ = load_split(root, 1, "test", allow_missing=True, allow_duplicates=True)
    assert [it.path for it in items] == [f"{VIDEO_DIR}/{CLIP}"] * 2 and count_duplicates(items) == 1
    dm = VideoDataModule(root, allow_missing=True, allow_duplicates=True, cache_dir=tmp_path / "c", num_workers=0)
    dm.setup("test")
    assert dm.data_counts["duplicate_videos"] == 1


@needs_mini
@pytest.mark.parametrize("spelling", [
    "Basketball/./v_Basketball_g01_c01.avi",
    "Basketball//v_Basketball_g01_c01.avi",
    "Basketball/../Basketball/v_Basketball_g01_c01.avi",
    "Basketball\\v_Basketball_g01_c01.avi",
    "./Basketball/v_Basketball_g01_c01.avi",
    "basketball/V_BASKETBALL_G01_C01.AVI",  # the resolver maps it to the one file on disk: same (device, inode)
])
def test_another_spelling_of_a_test_video_in_the_train_list_is_an_overlap(tmp_path: Path, spelling: str) -> None:
    from motion_relevance.datamodules import VideoDataModule

    root = _mini(tmp_path, train_extra=f"{spelling} 8 ", crlf=True)  # trailing space and CRLF, as the real files
    names = read_class_ind(root / LIST_DIR / "classInd.txt")
    overlap = split_overlap(root, 1, names)
    assert [(p, b) for p, _, b in overlap] == [(CLIP, 270)] and overlap[0][1] == 9538
    dm = VideoDataModule(root, allow_missing=True, cache_dir=tmp_path / "c", num_workers=0)
    with pytest.raises(ValueError, match=r"listed in both trainlist01.txt and testlist01.txt .*line 9538"):
        dm._check_lists()
    dm = VideoDataModule(root, allow_missing=True, allow_overlap=True, cache_dir=tmp_path / "c", num_workers=0)
    dm._check_lists()
    assert dm.data_counts["overlap_videos"] == 1


@needs_mini
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_link_to_a_test_video_is_the_same_video(tmp_path: Path, kind: str) -> None:
    root = _mini(tmp_path, train_extra="Basketball/v_Basketball_g30_c01.avi 8",
                 test_extra="Basketball/v_Basketball_g31_c01.avi")
    folder = root / VIDEO_DIR / "Basketball"
    link = os.symlink if kind == "symlink" else os.link
    link("v_Basketball_g01_c01.avi" if kind == "symlink" else folder / "v_Basketball_g01_c01.avi",
         folder / "v_Basketball_g30_c01.avi")
    (folder / "v_Basketball_g31_c01.avi").symlink_to("v_Basketball_g30_c01.avi")
    names = read_class_ind(root / LIST_DIR / "classInd.txt")
    assert [(p, a) for p, a, _ in split_overlap(root, 1, names)] == [(CLIP, 9538),
                                                                      ("Basketball/v_Basketball_g31_c01.avi", 9538)]
    with pytest.raises(ValueError, match=r"'Basketball/v_Basketball_g01_c01.avi' \(also as "
                                         r"'Basketball/v_Basketball_g31_c01.avi'\) on lines \[270, 3784\]"):
        load_split(root, 1, "test", allow_missing=True)


@needs_mini
def test_a_class_folder_or_file_linked_from_another_disk_is_read(tmp_path: Path) -> None:
    root = _mini(tmp_path)
    other = tmp_path / "other_disk" / "SoccerJuggling"
    shutil.move(root / VIDEO_DIR / "SoccerJuggling", other)
    (root / VIDEO_DIR / "SoccerJuggling").symlink_to(other, target_is_directory=True)
    _, items, _ = load_split(root, 1, "train", allow_missing=True)
    assert sorted(it.path for it in items) == [f"{VIDEO_DIR}/SoccerJuggling/v_SoccerJuggling_g23_c01.avi",
                                              f"{VIDEO_DIR}/SoccerJuggling/v_SoccerJuggling_g24_c01.avi"]
    outside_clip = tmp_path / "other_disk" / "b.avi"
    shutil.move(root / VIDEO_DIR / CLIP, outside_clip)
    (root / VIDEO_DIR / CLIP).symlink_to(outside_clip)  # a file linked from outside the root: read, never deleted
    _, test, _ = load_split(root, 1, "test", allow_missing=True)
    assert [it.path for it in test] == [f"{VIDEO_DIR}/{CLIP}"]
    index = VideoIndex.build(root, [it.path for it in items + test], progress=False)
    assert index.bad == [] and index[test[0].path].num_frames == 141
    assert all(index[it.path].num_frames > 0 for it in items)


def _tree(tmp_path: Path, train: list[str], test: list[str], files: list[str]) -> Path:
    root = tmp_path / "tree"
    (root / LIST_DIR).mkdir(parents=True)
    (root / LIST_DIR / "classInd.txt").write_text("1 A\n2 B\n")
    (root / LIST_DIR / "trainlist01.txt").write_text("".join(f"{line}\n" for line in train))
    (root / LIST_DIR / "testlist01.txt").write_text("".join(f"{line}\n" for line in test))
    for rel in files:
        (root / VIDEO_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / VIDEO_DIR / rel).write_bytes(rel.encode())
    return root


def test_names_that_differ_only_by_case_are_two_videos_on_linux(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["A/v_A_g01_c01.avi 1", "A/V_A_G01_C01.avi 1"], ["A/v_A_g02_c01.avi"],
                 ["A/v_A_g01_c01.avi", "A/V_A_G01_C01.avi", "A/v_A_g02_c01.avi"])
    if len(list((root / VIDEO_DIR / "A").iterdir())) != 3:
        pytest.skip("case-insensitive file system: the two names are one file")
    _, items, _ = load_split(root, 1, "train")
    assert [it.path for it in items] == ["UCF-101/A/v_A_g01_c01.avi", "UCF-101/A/V_A_G01_C01.avi"]
    assert count_duplicates(items) == 0


def test_missing_videos_are_compared_by_their_normalised_path(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["A/v_A_g01_c01.avi 1", "A/gone.avi 1", "A/./gone.avi 1"], ["A/v_A_g02_c01.avi"],
                 ["A/v_A_g01_c01.avi", "A/v_A_g02_c01.avi"])
    with pytest.raises(ValueError, match=r"trainlist01.txt: 1 videos are listed more than once \('A/gone.avi' on "
                                         r"lines \[2, 3\]\)"):
        load_split(root, 1, "train", allow_missing=True)


@pytest.mark.parametrize(("line", "match"), [
    ("/etc/A/v.avi 1", r"trainlist01.txt:2: path '/etc/A/v.avi' is an absolute path; give a path relative to "
                       r"the data root .*UCF-101"),
    ("A/../../x.avi 1", r"trainlist01.txt:2: path 'A/../../x.avi' leaves the data root .*UCF-101"),
    ("C:\\A\\v.avi 1", r"trainlist01.txt:2: path .* is an absolute path"),
    ("./ 1", r"trainlist01.txt:2: path .* leaves the data root"),
])
def test_a_list_line_outside_the_root_is_refused_naming_file_and_line(tmp_path: Path, line: str,
                                                                     match: str) -> None:
    root = _tree(tmp_path, ["A/v_A_g01_c01.avi 1", line], ["A/v_A_g02_c01.avi"],
                 ["A/v_A_g01_c01.avi", "A/v_A_g02_c01.avi"])
    with pytest.raises(ValueError, match=match):
        load_split(root, 1, "train")


# ------------------------------------------------------------------------------------------------ video index
@needs_mini
def test_index_keys_are_normalised_and_a_crafted_cache_key_is_not_used(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "A").mkdir(parents=True)
    shutil.copy(MINI / VIDEO_DIR / CLIP, root / "A" / "v.avi")
    index = VideoIndex.build(root, ["A/./v.avi", "A//v.avi"], cache_dir=tmp_path / "c", progress=False)
    assert list(index.entries) == ["A/v.avi"] and index["A/./v.avi"].num_frames == 141 and "A\\v.avi" in index
    assert "../A/v.avi" not in index
    with pytest.raises(ValueError, match="leaves the data root"):
        VideoIndex.build(root, ["../r/A/v.avi"], progress=False)
    with pytest.raises(ValueError, match="is an absolute path"):
        VideoIndex.build(root, [str(root / "A" / "v.avi")], progress=False)
    cache = VideoIndex.cache_file(root, tmp_path / "c")
    data = json.loads(cache.read_text())
    data["entries"]["A/x/../v.avi"] = data["entries"]["A/v.avi"]
    cache.write_text(json.dumps(data))
    again = VideoIndex.build(root, ["A/v.avi"], cache_dir=tmp_path / "c", progress=False)
    assert again.num_probed == 0  # the normal key is served; the crafted one is dropped on load
    from motion_relevance.data.index import _load

    assert list(_load(cache)) == ["A/v.avi"]


# ------------------------------------------------------------------------------------------------ generator
def _manifest(root: Path, files: object, name: str = MANIFEST) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(json.dumps({"generator": "motion_shapes", "version": 1, "hash": "old", "files": files}))
    return path


def _outside(tmp_path: Path) -> Path:
    keep = tmp_path / "elsewhere" / "important.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("keep")
    return keep


def test_a_manifest_never_deletes_through_a_symlink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keep = _outside(tmp_path)
    root = tmp_path / "root"
    manifest = _manifest(root, {"link/important.txt": None, "link": None})
    (root / "link").symlink_to(keep.parent, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="motion_relevance.data.synthetic"):
        out = generate_motion_shapes(root, MotionShapesConfig(**SMALL))
    assert keep.read_text() == "keep" and (root / "link").is_symlink()
    assert out.generated and out.not_deleted == 2
    assert f"{manifest}: entry 'link/important.txt' is not deleted: its path goes through the symlink 'link'" \
        in caplog.text
    assert f"{manifest}: entry 'link' is not deleted: it is a symlink" in caplog.text


def test_a_stamped_link_to_an_outside_file_is_not_deleted(tmp_path: Path) -> None:
    keep = _outside(tmp_path)
    root = tmp_path / "root"
    st = keep.stat()
    _manifest(root, {"UCF-101/MoveRight/v_MoveRight_g01_c01.avi": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}})
    (root / "UCF-101" / "MoveRight").mkdir(parents=True)
    (root / "UCF-101/MoveRight/v_MoveRight_g01_c01.avi").symlink_to(keep)  # stat() through it matches the stamp
    with pytest.raises(FileExistsError, match=r"v_MoveRight_g01_c01.avi is in the way and was not deleted"):
        generate_motion_shapes(root, MotionShapesConfig(**SMALL))  # and never written through
    assert keep.read_text() == "keep"


def test_a_manifest_entry_without_a_stamp_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "root"
    _manifest(root, {"UCF-101/MoveRight/v_MoveRight_g01_c01.avi": None})
    mine = root / "UCF-101/MoveRight/v_MoveRight_g01_c01.avi"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with caplog.at_level(logging.WARNING, logger="motion_relevance.data.synthetic"), \
            pytest.raises(FileExistsError, match="in the way and was not deleted .*1 bookkeeping entries kept"):
        generate_motion_shapes(root, MotionShapesConfig(**SMALL))
    assert mine.read_text() == "mine" and "has no size/mtime stamp" in caplog.text


@pytest.mark.parametrize(("files", "match"), [
    (["UCF-101/a.avi"], r"manifest.json: 'files' is list, expected a mapping of path -> stamp"),
    ({"UCF-101/a.avi": "yes"}, r"manifest.json: entry 'UCF-101/a.avi' has the stamp 'yes'"),
    ({"UCF-101/a.avi": {"size": 1}}, r"manifest.json: entry 'UCF-101/a.avi' has the stamp \{'size': 1\}"),
    ({"UCF-101/a.avi": {"size": True, "mtime_ns": 1}}, r"manifest.json: entry .* has the stamp"),
    ({"../elsewhere/important.txt": None}, r"manifest.json: '../elsewhere/important.txt' leaves the data root"),
    ({"/abs/important.txt": None}, r"manifest.json: '/abs/important.txt' is an absolute path"),
])
def test_a_malformed_manifest_is_refused_naming_the_file(tmp_path: Path, files: object, match: str) -> None:
    keep = _outside(tmp_path)
    root = tmp_path / "root"
    _manifest(root, files)
    with pytest.raises(ValueError, match=match):
        generate_motion_shapes(root, MotionShapesConfig(**SMALL))
    assert keep.read_text() == "keep" and sorted(p.name for p in root.iterdir()) == sorted([LOCK, MANIFEST])


def test_an_interrupted_marker_deletes_only_files_written_after_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old = root / "UCF-101/MoveLeft/v_MoveLeft_g01_c01.avi"
    old.parent.mkdir(parents=True)
    old.write_text("older than the marker")
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    _manifest(root, {"UCF-101/MoveLeft/v_MoveLeft_g01_c01.avi": None, "UCF-101/MoveLeft/new.avi": None}, PARTIAL)
    new = root / "UCF-101/MoveLeft/new.avi"
    new.write_text("written after the marker")
    with pytest.raises(FileExistsError, match="v_MoveLeft_g01_c01.avi is in the way"):
        generate_motion_shapes(root, MotionShapesConfig(**SMALL))
    assert old.exists() and not new.exists()


def test_a_linked_data_root_is_regenerated_inside_itself(tmp_path: Path) -> None:
    real = tmp_path / "big_disk" / "motion_shapes"
    real.mkdir(parents=True)
    root = tmp_path / "data"
    root.symlink_to(real, target_is_directory=True)
    generate_motion_shapes(root, MotionShapesConfig(**SMALL))
    out = generate_motion_shapes(root, MotionShapesConfig(**{**SMALL, "seed": 1, "videos_per_class": 4}))
    assert out.generated and out.not_deleted == 0 and len(list((real / VIDEO_DIR).rglob("*.avi"))) == 8


# ------------------------------------------------------------------------------------------------ live GIF
class _DecordOpensButCannotDecode:
    """decord's reader as it behaves on some GIFs: opens, reports frames, fails on ``get_batch``."""

    def __init__(self, path: str, **kwargs: object) -> None:
        from motion_relevance.live.source import _Frames

        self._first = _Frames(np.zeros((24, 32, 3), np.uint8))

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> object:
        return self._first

    def get_avg_fps(self) -> float:
        return 25.0

    def seek(self, index: int) -> None:
        pass

    def get_batch(self, indices: list[int]) -> object:
        raise RuntimeError("Check failed: from_size == to_size")


def _refuse(path: str, **kwargs: object) -> None:
    raise RuntimeError("Failed to measure duration/frame-count due to broken metadata.")


@pytest.mark.parametrize("decord_does", ["its own thing", "refuse to open", "open but not decode"])
def test_an_animated_gif_plays_as_a_file_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                decord_does: str) -> None:
    import decord
    from PIL import Image

    from motion_relevance.live.source import FileSource

    if decord_does != "its own thing":
        fake = _refuse if decord_does == "refuse to open" else _DecordOpensButCannotDecode
        monkeypatch.setattr(decord, "VideoReader", fake)
    frames = np.zeros((6, 24, 32, 3), np.uint8)
    for i in range(6):
        frames[i, 4:12, 2 + 4 * i : 10 + 4 * i] = 255  # a white square moving right on black: exact in a palette
    gif = tmp_path / "clip.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=40, loop=0)
    source = FileSource(gif, resize=None)
    assert source.num_frames == 6 and source.fps == pytest.approx(25.0) and source.native_size == (24, 32)
    np.testing.assert_array_equal(np.stack([f for f, _ in source.frames()]), frames)
    small = FileSource(gif, resize=(12, 16))
    assert [f.shape for f, _ in small.frames()] == [(12, 16, 3)] * 6


def test_a_file_neither_decoder_reads_is_still_not_a_video(tmp_path: Path) -> None:
    from motion_relevance.live.source import FileSource, SourceError

    fake = tmp_path / "clip.gif"
    fake.write_bytes(b"GIF89a" + b"not really" * 40)
    with pytest.raises(SourceError, match=r"clip.gif' (has zero frames|cannot be decoded)"):
        FileSource(fake, resize=None)


def test_the_datamodule_counts_entries_it_did_not_delete(tmp_path: Path) -> None:
    from motion_relevance.datamodules import MotionShapesDataModule

    keep = _outside(tmp_path)
    root = tmp_path / "root"
    _manifest(root, {"link/important.txt": None, "link": None})
    (root / "link").symlink_to(keep.parent, target_is_directory=True)
    dm = MotionShapesDataModule(root, generator=SMALL, crop_size=32, batch_size=2, num_workers=0)
    dm.prepare_data()
    assert dm.data_counts["not_deleted"] == 2 and keep.read_text() == "keep"
