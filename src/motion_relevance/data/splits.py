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
from pathlib import Path, PurePosixPath

from ..checks import check_choice, check_float, check_int

log = logging.getLogger(__name__)

VIDEO_DIR = "UCF-101"
LIST_DIR = "ucfTrainTestlist"
SUBSETS = ("train", "test")
_GROUP_RE = re.compile(r"_g(\d+)_c(\d+)", re.IGNORECASE)
_LABELLED_RE = re.compile(r"^(?P<path>.*\S)\s+(?P<label>[+-]?\d+)$")


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


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a split file with their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from None
    return [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]


def read_class_ind(path: str | Path) -> list[str]:
    """Class names in label order from ``classInd.txt`` (1-based ``"1 ApplyEyeMakeup"`` lines)."""
    path = Path(path)
    pairs = []
    for n, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<1-based index> <ClassName>', got {line!r}")
        pairs.append((int(parts[0]), parts[1]))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
        raise ValueError(f"{path}: class indices must be 1..{len(pairs)} without gaps")
    names = [name for _, name in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: class names listed twice: {dup}")
    return names


@dataclass(frozen=True)
class ListedVideo:
    """One line of a train/test list: the listed path, its 0-based label and the line number."""

    path: str
    label: int
    line: int


def _check_inside(rel: str, where: str) -> None:
    """Listed paths are relative and stay inside the data root (no ``..`` component, no absolute path)."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or ".." in parts:
        raise ValueError(f"{where}: path {rel!r} leaves the data root; split files list paths relative to "
                         f"{VIDEO_DIR}/ such as 'ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi'")


def read_list(path: str | Path, class_names: list[str], *, labelled: bool | None = None) -> list[ListedVideo]:
    """The videos of a train/test list, labels checked against ``classInd``; every error names file and line.

    A line is ``<path> <1-based label>`` (train lists) or ``<path>`` (test lists: the label is the class folder's);
    the path may contain spaces. ``labelled``: whether a label is required (default: for ``trainlist*`` files).
    """
    path = Path(path)
    if labelled is None:
        labelled = path.name.lower().startswith("train")
    lower = {c.lower(): i for i, c in enumerate(class_names)}
    out = []
    for n, line in _lines(path):
        where = f"{path}:{n}"
        match = _LABELLED_RE.match(line)
        if match:
            rel, file_label = match["path"], int(match["label"]) - 1
        elif labelled:
            raise ValueError(f"{where}: expected '<path> <1-based label>', got {line!r}")
        else:
            rel, file_label = line, None
        rel = rel.replace("\\", "/")
        _check_inside(rel, where)
        folder = rel.split("/")[0]
        if folder.lower() not in lower:
            raise ValueError(
                f"{where}: class {folder!r} of {rel!r} is not in classInd.txt "
                f"({len(class_names)} classes: {', '.join(class_names[:5])}, ...)"
            )
        label = lower[folder.lower()]
        if file_label is not None and file_label != label:
            raise ValueError(
                f"{where}: label {file_label + 1} (1-based) disagrees with class folder {folder!r} "
                f"(index {label + 1} in classInd.txt)"
            )
        out.append(ListedVideo(rel, label, n))
    if not out:
        raise ValueError(f"{path}: the list is empty; it must list at least one video")
    return out


def _duplicates(listed: list[ListedVideo]) -> dict[str, list[int]]:
    """Paths listed more than once (case-insensitively) -> their line numbers."""
    lines: dict[str, list[int]] = {}
    for item in listed:
        lines.setdefault(item.path.lower(), []).append(item.line)
    return {p: ls for p, ls in lines.items() if len(ls) > 1}


def split_overlap(root: str | Path, split: int, class_names: list[str]) -> list[tuple[str, int, int]]:
    """Videos listed in both the train and the test list of ``split``: (path, train line, test line)."""
    lists = Path(root) / LIST_DIR
    train = {v.path.lower(): v for v in read_list(lists / f"trainlist{split:02d}.txt", class_names, labelled=True)}
    test = read_list(lists / f"testlist{split:02d}.txt", class_names, labelled=False)
    return [(v.path, train[v.path.lower()].line, v.line) for v in test if v.path.lower() in train]


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
    root: str | Path, split: int = 1, subset: str = "train", allow_missing: bool = False,
    allow_duplicates: bool = False,
) -> tuple[list[str], list[VideoItem], list[str]]:
    """Read a UCF-layout split: ``(class_names, items present on disk, listed-but-missing paths)``.

    Raises ``FileNotFoundError`` when listed videos are missing (count and first names in the message) unless
    ``allow_missing``, which skips them with one warning; ``ValueError`` for a video listed twice (file and lines
    named) unless ``allow_duplicates`` (then it is kept twice, as listed, and counted by the caller).
    """
    check_int("split", split, 1, 3)
    check_choice("subset", subset, SUBSETS)
    root = Path(root)
    lists = root / LIST_DIR
    class_names = read_class_ind(lists / "classInd.txt")
    list_file = lists / f"{subset}list{split:02d}.txt"
    listed = read_list(list_file, class_names, labelled=subset == "train")
    dups = _duplicates(listed)
    if dups and not allow_duplicates:
        first = ", ".join(f"{p!r} on lines {ls}" for p, ls in list(dups.items())[:3])
        raise ValueError(f"{list_file}: {len(dups)} videos are listed more than once ({first}); each clip would "
                         "count several times in the metrics. Remove the repeats, or set data.allow_duplicates=true "
                         "to keep them (the run then reports data/duplicate_videos)")
    resolver = PathResolver(root / VIDEO_DIR)
    items, missing = [], []
    for video in listed:
        found = resolver.resolve(video.path)
        if found is None:
            missing.append(video.path)
        else:
            items.append(VideoItem(f"{VIDEO_DIR}/{found}", video.label, group_of(found)))
    if missing:
        msg = (
            f"{len(missing)} of {len(listed)} videos listed in {list_file} are missing under {root / VIDEO_DIR} "
            f"(first: {', '.join(missing[:3])})"
        )
        if not allow_missing:
            raise FileNotFoundError(msg + "; set allow_missing=true to skip them")
        log.warning("%s; skipping them (allow_missing=true)", msg)
    if not items:
        raise FileNotFoundError(f"none of the {len(listed)} videos listed in {list_file} is under {root / VIDEO_DIR}")
    return class_names, items, missing


def count_duplicates(items: list[VideoItem]) -> int:
    """Extra entries of videos listed more than once (0 when every video is listed once)."""
    return len(items) - len({it.path for it in items})


def empty_classes(items: list[VideoItem], class_names: list[str]) -> list[str]:
    """Classes of ``class_names`` without any video in ``items``."""
    present = {it.label for it in items}
    return [name for i, name in enumerate(class_names) if i not in present]


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
