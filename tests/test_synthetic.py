"""motion_shapes generator: determinism, masks matching the decoded frames, caching, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from motion_relevance.data import (
    MotionShapesConfig,
    VideoDecoder,
    generate_motion_shapes,
    load_mask,
    mask_path,
    read_class_ind,
    render_video,
)

TINY = {"classes": ["right", "left", "rotate_cw", "expand"], "videos_per_class": 4, "num_groups": 2,
        "test_groups": 1, "frame_size": (32, 32), "num_frames": (10, 12), "object_size": (6, 8)}


def decode_all(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    dec = VideoDecoder()
    out = {}
    for p in sorted((root / "UCF-101").glob("*/*.avi")):
        rel = f"{p.parent.name}/{p.name}"
        n = dec.meta(p).num_frames
        out[rel] = (dec.read(p, np.arange(n)), load_mask(mask_path(root / "masks", rel)))
    return out


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a = decode_all(generate_motion_shapes(tmp_path / "a", MotionShapesConfig(**TINY, seed=3)).root)
    b = decode_all(generate_motion_shapes(tmp_path / "b", MotionShapesConfig(**TINY, seed=3)).root)
    c = decode_all(generate_motion_shapes(tmp_path / "c", MotionShapesConfig(**TINY, seed=4)).root)
    assert a.keys() == b.keys() == c.keys() and len(a) == 16
    for k in a:
        assert a[k][0].tobytes() == b[k][0].tobytes() and a[k][1].tobytes() == b[k][1].tobytes()
    assert any(a[k][0].shape != c[k][0].shape or a[k][0].tobytes() != c[k][0].tobytes() for k in a)


def test_layout_lists_and_lossless_masks(tmp_path: Path) -> None:
    cfg = MotionShapesConfig(**TINY, distractors=2, camera_pan=0.5)
    root = generate_motion_shapes(tmp_path, cfg).root
    assert read_class_ind(root / "ucfTrainTestlist" / "classInd.txt") == ["MoveRight", "MoveLeft", "RotateCW", "Expand"]
    train = (root / "ucfTrainTestlist" / "trainlist01.txt").read_text().split("\n")
    test = (root / "ucfTrainTestlist" / "testlist01.txt").read_text().split()
    assert "MoveLeft/v_MoveLeft_g02_c01.avi 2" in train and "MoveLeft/v_MoveLeft_g01_c01.avi" in test
    assert all("_g01_" in t for t in test) and len(test) == 8
    decoded = decode_all(root)
    for c in range(len(cfg.classes)):
        for v in range(cfg.videos_per_class):
            ref = render_video(cfg, c, v)
            rel = f"{cfg.class_names[c]}/v_{cfg.class_names[c]}_g{v % 2 + 1:02d}_c{v // 2 + 1:02d}.avi"
            frames, mask = decoded[rel]
            np.testing.assert_array_equal(frames, ref.frames)  # FFV1 is lossless
            np.testing.assert_array_equal(mask, ref.mask)
            assert mask.any(axis=(1, 2)).all()  # the object is visible in every frame
            # flat texture: every masked pixel has exactly the object's colour
            np.testing.assert_array_equal(frames[mask], np.broadcast_to(ref.meta["object_color"], (mask.sum(), 3)))


def test_translation_moves_in_class_direction() -> None:
    cfg = MotionShapesConfig(**TINY)
    for c, sign in ((0, 1), (1, -1)):
        m = render_video(cfg, c, 0).mask
        xs = [np.nonzero(f)[1].mean() for f in m]
        assert sign * (xs[-1] - xs[0]) > 5


def test_swap_background_keeps_motion_changes_background() -> None:
    base = MotionShapesConfig(**TINY, context_bias=1.0)
    swap = MotionShapesConfig(**TINY, context_bias=1.0, swap_background=True)
    a, b = render_video(base, 0, 1), render_video(swap, 0, 1)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.meta["background_class"] == 0 and b.meta["background_class"] == 1
    assert not np.array_equal(a.frames[~a.mask], b.frames[~b.mask])
    other = render_video(base, 1, 2)  # a class-1 video with its own (class) background
    free = ~b.mask[0] & ~other.mask[0]
    np.testing.assert_array_equal(b.frames[0][free], other.frames[0][free])


def test_cache_hit_and_regenerate_on_change(tmp_path: Path) -> None:
    cfg = MotionShapesConfig(**TINY)
    first = generate_motion_shapes(tmp_path, cfg)
    assert first.generated
    some = next((tmp_path / "UCF-101").glob("*/*.avi"))
    mtime = some.stat().st_mtime_ns
    again = generate_motion_shapes(tmp_path, MotionShapesConfig(**TINY))
    assert not again.generated and some.stat().st_mtime_ns == mtime
    changed = generate_motion_shapes(tmp_path, MotionShapesConfig(**{**TINY, "videos_per_class": 2}))
    assert changed.generated and len(list((tmp_path / "UCF-101").glob("*/*.avi"))) == 8
    assert json.loads((tmp_path / "manifest.json").read_text())["hash"] == changed_hash(TINY)


def changed_hash(d: dict) -> str:
    return MotionShapesConfig(**{**d, "videos_per_class": 2}).hash()


def test_refuses_foreign_tree_and_unwritable_dir(tmp_path: Path) -> None:
    (tmp_path / "real" / "UCF-101").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not generated"):
        generate_motion_shapes(tmp_path / "real", MotionShapesConfig(**TINY))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="a_file/sub is not writable"):
        generate_motion_shapes(blocker / "sub", MotionShapesConfig(**TINY))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("classes", ["right", "spin"], "classes='spin'"),
        ("frame_size", (8, 8), "frame_size"),
        ("context_bias", 1.5, r"context_bias=1.5 out of range: allowed \[0.0, 1.0\]"),
        ("num_frames", (20, 10), "num_frames"),
        ("test_groups", 2, r"test_groups=2 out of range: allowed \[0, 1\]"),
        ("object_texture", "wood", "object_texture"),
    ],
)
def test_config_validation_names_key(key: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MotionShapesConfig(**{**TINY, key: value})


def test_from_dict_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match="colour"):
        MotionShapesConfig.from_dict({"colour": 1})
