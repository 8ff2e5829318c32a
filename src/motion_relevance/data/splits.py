"""UCF-101 split files (classInd.txt, trainlistNN.txt, testlistNN.txt) and group-wise validation splits.

Handles the official files' quirks: CRLF line endings, 1-based labels (0-based in code), test lists without
labels (label from the class folder) and the ``HandstandPushups`` folder holding ``v_HandStandPushups_*`` files
(paths are resolved case-insensitively when the exact path does not exist).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ._checks import check_choice, check_float, check_int

log = logging.getLogger(__name__)

VIDEO_DIR = "UCF-101"
LIST_DIR = "ucfTrainTestlist"
SUBSETS = ("train", "test")
_GROUP_RE = re.compile(r"_g(\d+)_c(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class VideoItem:
    """One listed video: ``path`` relative to the data root (as found on disk), 0-based ``label``, ``group``."""

    path: str
    label: int
    group: str


def group_of(path: str) -> str:
    """Group id ``"gNN"`` of a UCF-style file name (``v_Class_g08_c01.avi`` -> ``"g08"``); ``""`` if none."""
    m = _GROUP_RE.search(Path(path).name)
    return f"g{int(m.group(1)):02d}" if m else ""


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]


def read_class_ind(path: str | Path) -> list[str]:
    """Class names in label order from ``classInd.txt`` (1-based ``"1 ApplyEyeMakeup"`` lines)."""
    path = Path(path)
    pairs = []
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<1-based index> <ClassName>', got {line!r}")
        pairs.append((int(parts[0]), parts[1]))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
        raise ValueError(f"{path}: class indices must be 1..{len(pairs)} without gaps")
    return [name for _, name in pairs]


def read_list(path: str | Path, class_names: list[str]) -> list[tuple[str, int]]:
    """``(listed path, 0-based label)`` pairs of a train/test list; labels checked against ``classInd``."""
    path = Path(path)
    lower = {c.lower(): i for i, c in enumerate(class_names)}
    out = []
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        rel = parts[0].replace("\\", "/")
        folder = rel.split("/")[0]
        if folder.lower() not in lower:
            raise ValueError(
                f"{path.name}:{n}: class {folder!r} of {rel!r} is not in classInd.txt "
                f"({len(class_names)} classes: {', '.join(class_names[:5])}, ...)"
            )
        label = lower[folder.lower()]
        if len(parts) > 1:
            file_label = int(parts[1]) - 1
            if file_label != label:
                raise ValueError(
                    f"{path.name}:{n}: label {parts[1]} (1-based) disagrees with class folder {folder!r} "
                    f"(index {label + 1} in classInd.txt)"
                )
        out.append((rel, label))
    return out


class PathResolver:
    """Find listed files on disk, exactly or case-insensitively (``HandstandPushups`` quirk)."""

    def __init__(self, video_dir: Path) -> None:
        self.video_dir = video_dir
        self._dirs: dict[str, dict[str, str]] = {}

    def _listing(self, rel_dir: str) -> dict[str, str]:
        if rel_dir not in self._dirs:
            d = self.video_dir / rel_dir if rel_dir else self.video_dir
            self._dirs[rel_dir] = {p.name.lower(): p.name for p in d.iterdir()} if d.is_dir() else {}
        return self._dirs[rel_dir]

    def resolve(self, listed: str) -> str | None:
        """Path relative to ``video_dir`` as it exists on disk, or ``None`` when missing."""
        if (self.video_dir / listed).is_file():
            return listed
        parts, found = listed.split("/"), ""
        for part in parts:
            name = self._listing(found).get(part.lower())
            if name is None:
                return None
            found = f"{found}/{name}" if found else name
        return found if (self.video_dir / found).is_file() else None


def load_split(
    root: str | Path, split: int = 1, subset: str = "train", allow_missing: bool = False
) -> tuple[list[str], list[VideoItem], list[str]]:
    """Read a UCF-layout split: ``(class_names, items present on disk, listed-but-missing paths)``.

    Raises ``FileNotFoundError`` when listed videos are missing (count and first names in the message) unless
    ``allow_missing``, which skips them with one warning.
    """
    check_int("split", split, 1, 3)
    check_choice("subset", subset, SUBSETS)
    root = Path(root)
    lists = root / LIST_DIR
    class_names = read_class_ind(lists / "classInd.txt")
    list_file = lists / f"{subset}list{split:02d}.txt"
    listed = read_list(list_file, class_names)
    resolver = PathResolver(root / VIDEO_DIR)
    items, missing = [], []
    for rel, label in listed:
        found = resolver.resolve(rel)
        if found is None:
            missing.append(rel)
        else:
            items.append(VideoItem(f"{VIDEO_DIR}/{found}", label, group_of(found)))
    if missing:
        msg = (
            f"{len(missing)} of {len(listed)} videos listed in {list_file} are missing under {root / VIDEO_DIR} "
            f"(first: {', '.join(missing[:3])})"
        )
        if not allow_missing:
            raise FileNotFoundError(msg + "; set allow_missing=true to skip them")
        log.warning("%s; skipping them (allow_missing=true)", msg)
    return class_names, items, missing


def split_by_group(
    items: list[VideoItem], val_fraction: float, seed: int = 0
) -> tuple[list[VideoItem], list[VideoItem]]:
    """Carve a validation set out of ``items`` by whole groups (no group in both), deterministically.

    ``round(val_fraction * n_groups)`` groups (at least 1 when ``val_fraction > 0`` and there are 2+ groups)
    chosen by a seeded shuffle go to validation.
    """
    check_float("val_fraction", val_fraction, 0.0, 0.9)
    groups = sorted({it.group for it in items})
    n_val = round(val_fraction * len(groups))
    if val_fraction > 0 and len(groups) > 1:
        n_val = min(max(n_val, 1), len(groups) - 1)
    random.Random(seed).shuffle(groups)
    val_groups = set(groups[:n_val])
    return [it for it in items if it.group not in val_groups], [it for it in items if it.group in val_groups]
