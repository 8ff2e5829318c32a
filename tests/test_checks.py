"""The bottom-layer checks: each refusal names the key and the value; paths stay inside their root."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from motion_relevance import checks


def test_int_float_positive_choice() -> None:
    assert checks.check_int("k", 3, 1, 5) == 3
    assert checks.check_int("k", 4.0) == 4
    for bad in (True, "3", 2.5):
        with pytest.raises(ValueError, match="k="):
            checks.check_int("k", bad)
    with pytest.raises(ValueError, match=r"k=9 out of range: allowed \[1, 5\]"):
        checks.check_int("k", 9, 1, 5)
    assert checks.check_float("f", 0.5, 0, 1) == 0.5
    for bad in (math.nan, math.inf, True, None):
        with pytest.raises(ValueError, match="f="):
            checks.check_float("f", bad)
    assert checks.check_positive("p", 2, integer=True) == 2
    assert checks.check_positive("p", None, allow_none=True) is None
    for bad in (0, -1, True, 1.5, math.inf):
        with pytest.raises(ValueError, match="p must be a positive integer"):
            checks.check_positive("p", bad, integer=True)
    assert checks.check_choice("c", "a", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match=r"c='z': allowed values are \['a', 'b'\]"):
        checks.check_choice("c", "z", ["a", "b"])


def test_pairs_and_unique() -> None:
    assert checks.check_pair("s", 4) == (4, 4)
    assert checks.check_pair("s", [3, 5]) == (3, 5)
    assert checks.check_size("s", None) is None
    for bad in ([1, 2, 3], "ab", [0, 3], [1.5, 2], True):
        with pytest.raises(ValueError, match="s="):
            checks.check_pair("s", bad)
    assert checks.check_unique("selective.sigma", [2, 4]) == [2, 4]
    with pytest.raises(ValueError, match=r"selective.sigma: 2.0 appears more than once"):
        checks.check_unique("selective.sigma", [2, 4, 2.0])
    with pytest.raises(ValueError, match="randomization.layers: 'fc8'"):
        checks.check_unique("randomization.layers", ["fc8", "fc8"])


def test_clip_checks() -> None:
    x = torch.zeros(2, 3, 4, 5, 5)
    assert checks.check_clips("clips", x) is x
    with pytest.raises(ValueError, match=r"clips must have shape \(B, C, T, H, W\).*\(3, 4, 5, 5\)"):
        checks.check_clips("clips", x[0])
    with pytest.raises(TypeError, match="got ndarray"):
        checks.check_clips("clips", np.zeros((2, 3, 4, 5, 5)))
    with pytest.raises(TypeError, match="floating-point"):
        checks.check_clips("clips", x.long())
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        checks.check_clips("clips", bad, finite=True)
    with pytest.raises(ValueError, match=r"relevance must have the shape of clips \(2, 3, 4, 5, 5\)"):
        checks.check_same_shape("relevance", x[:1], "clips", x)


def test_resolve_targets() -> None:
    assert checks.resolve_targets("target", None, 3) is None
    assert checks.resolve_targets("target", 2, 3).tolist() == [2, 2, 2]
    assert checks.resolve_targets("target", [0, 1, 2], 3, num_classes=3).tolist() == [0, 1, 2]
    assert checks.resolve_targets("target", torch.tensor(1), 2).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"target: class indices must lie in \[0, 3\)"):
        checks.resolve_targets("target", [0, 3], 2, num_classes=3)
    with pytest.raises(ValueError, match="target must hold 3 integer"):
        checks.resolve_targets("target", [0, 1], 3)
    with pytest.raises(ValueError, match="target must hold 2 integer"):
        checks.resolve_targets("target", [0.5, 1.0], 2)
    with pytest.raises(ValueError, match="target=True"):
        checks.resolve_targets("target", True, 2)


@pytest.mark.parametrize(("raw", "norm"), [
    ("a/b.avi", "a/b.avi"), ("./a/b.avi", "a/b.avi"), ("a/./b.avi", "a/b.avi"), ("a/../a/b.avi", "a/b.avi"),
    ("a//b.avi", "a/b.avi"), ("a\\b.avi", "a/b.avi"), (" a/b.avi ", "a/b.avi"),
])
def test_normalize_relpath_one_spelling(raw: str, norm: str) -> None:
    assert checks.normalize_relpath(raw) == norm


@pytest.mark.parametrize("raw", ["/etc/passwd", "../x.avi", "a/../../x.avi", "C:/x.avi", "", ".", "a/.."])
def test_normalize_relpath_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match=r"list.txt:7: .*root /data"):
        checks.normalize_relpath(raw, root="/data", source="list.txt", line=7)


def test_resolve_inside_follows_links(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.txt").write_text("x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "important.txt").write_text("keep")
    os.symlink(outside, root / "link")
    assert checks.resolve_inside(root, "sub/f.txt") == (root / "sub" / "f.txt").resolve()
    with pytest.raises(ValueError, match="outside the data root"):
        checks.resolve_inside(root, "link/important.txt")
    with pytest.raises(ValueError, match="leaves the data root"):
        checks.resolve_inside(root, "../elsewhere/important.txt")
    assert (outside / "important.txt").read_text() == "keep"
    # two spellings and a link of one file share an identity; a missing file has none
    os.symlink(root / "sub" / "f.txt", root / "alias.txt")
    assert checks.file_identity(root / "sub/./f.txt") == checks.file_identity(root / "alias.txt") is not None
    assert checks.file_identity(root / "missing") is None


def test_to_plain() -> None:
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "c": [1, 2]})
    assert checks.to_plain(cfg) == {"a": 1, "b": 1, "c": [1, 2]}
    assert checks.to_plain({"t": torch.tensor(2.5), "v": torch.tensor([1.0, 2.0]), "n": np.float32(1.5),
                            "nan": math.nan, "tup": (1, np.int64(2))}) == {
        "t": 2.5, "v": [1.0, 2.0], "n": 1.5, "nan": None, "tup": [1, 2]}


def test_to_plain_keep_tensors() -> None:
    base = torch.zeros(1, 3, 2, 4, 4)
    cfg = OmegaConf.create({"n_steps": 4, "sizes": [1, 2]})
    out = checks.to_plain({"cfg": cfg, "baselines": base, "pair": (base, 1)}, keep_tensors=True)
    assert out["cfg"] == {"n_steps": 4, "sizes": [1, 2]} and type(out["cfg"]["sizes"]) is list
    assert out["baselines"] is base and out["pair"][0] is base and out["pair"][1] == 1


def test_range_pair() -> None:
    assert checks.check_range_pair("speed", 1.5, 0.0, 50.0) == (1.5, 1.5)
    assert checks.check_range_pair("speed", [1, 2.5], 0.0, 50.0) == (1.0, 2.5)
    frames = checks.check_range_pair("num_frames", (8, 16), 1, 100, integer=True)
    assert frames == (8, 16) and all(type(v) is int for v in frames)
    with pytest.raises(ValueError, match=r"speed=\[3, 2\]: min must be <= max"):
        checks.check_range_pair("speed", [3, 2], 0.0, 50.0)
    with pytest.raises(ValueError, match=r"speed=60 out of range: allowed \[0.0, 50.0\]"):
        checks.check_range_pair("speed", [1, 60], 0.0, 50.0)
    with pytest.raises(ValueError, match=r"num_frames=2.5: expected an integer"):
        checks.check_range_pair("num_frames", [2.5, 4], 1, 100, integer=True)
    for bad in ([1, 2, 3], "ab", None, [1, math.nan], True):
        with pytest.raises(ValueError, match="k="):
            checks.check_range_pair("k", bad)
