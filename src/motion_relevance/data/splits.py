"""UCF-101 split files (classInd.txt, trainlistNN.txt, testlistNN.txt) and group-wise validation splits.

Handles the official files' quirks: CRLF line endings, 1-based labels (0-based in code), test lists without
labels (label from the class folder) and the ``HandstandPushups`` folder holding ``v_HandStandPushups_*`` files
(paths are resolved case-insensitively when the exact path does not exist).

Listed paths are compared as the files they name: ``Basketball/./v.avi``, ``Basketball//v.avi`` and a link to the
same file are one video for the duplicate and train/test-overlap checks. Reading through a symlink placed in the
data root (a class folder on another disk) is allowed.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..checks import check_choice, check_float, check_int, file_identity, normalize_relpath

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


def _normalized(rel: str, where: str, video_dir: Path) -> str:
    """``rel`` in one spelling (``./``, ``//``, ``a/../a`` and backslashes folded; case kept), or ``ValueError`` naming
    ``where`` (file:line) when it is empty, absolute or leaves ``video_dir`` as written."""
    try:
        return normalize_relpath(rel, root=video_dir)
    except ValueError as err:
        raise ValueError(f"{where}: path {err}; split files list paths relative to {VIDEO_DIR}/ such as "
                         "'ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi'") from None


def read_list(path: str | Path, class_names: list[str], *, labelled: bool | None = None) -> list[ListedVideo]:
    """The videos of a train/test list, labels checked against ``classInd``; every error names file and line.

    A line is ``<path> <1-based label>`` (train lists) or ``<path>`` (test lists: the label is the class folder's);
    the path may contain spaces. ``labelled``: whether a label is required (default: for ``trainlist*`` files).
    """
    path = Path(path)
    video_dir = path.parent.parent / VIDEO_DIR
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
        rel = _normalized(rel, where, video_dir)
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


@dataclass(frozen=True)
class _Found:
    """A listed video located on disk: the line, the path found (``None`` when missing) and its identity key."""

    video: ListedVideo
    found: str | None
    key: tuple[object, ...]


def _locate(listed: list[ListedVideo], resolver: PathResolver) -> list[_Found]:
    """Resolve every listed video; the key is the file's ``(device, inode)`` when it exists (so two spellings or
    links of one file compare equal), else its normalised listed path (case kept: Linux names differ by case)."""
    out = []
    for video in listed:
        found = resolver.resolve(video.path)
        ident = file_identity(resolver.video_dir / found) if found is not None else None
        out.append(_Found(video, found, ("file", *ident) if ident is not None else ("path", video.path)))
    return out


def _duplicates(located: list[_Found]) -> dict[tuple[object, ...], list[_Found]]:
    """Videos listed more than once (same normalised path or same file) -> their entries, in list order."""
    groups: dict[tuple[object, ...], list[_Found]] = {}
    for f in located:
        groups.setdefault(f.key, []).append(f)
    return {k: fs for k, fs in groups.items() if len(fs) > 1}


def _describe(entries: list[_Found]) -> str:
    """``'A/x.avi' on lines [1, 4]`` (other spellings of the same file named)."""
    spellings = list(dict.fromkeys(f.video.path for f in entries))
    also = f" (also as {', '.join(repr(s) for s in spellings[1:])})" if len(spellings) > 1 else ""
    return f"{spellings[0]!r}{also} on lines {[f.video.line for f in entries]}"


def split_overlap(root: str | Path, split: int, class_names: list[str]) -> list[tuple[str, int, int]]:
    """Videos listed in both the train and the test list of ``split``: (test path, train line, test line).

    Compared as the files they name: normalised paths, and ``(device, inode)`` for files that exist (a link or a
    second spelling of a test video in the train list counts).
    """
    root = Path(root)
    lists = root / LIST_DIR
    resolver = PathResolver(root / VIDEO_DIR)
    train = _locate(read_list(lists / f"trainlist{split:02d}.txt", class_names, labelled=True), resolver)
    test = _locate(read_list(lists / f"testlist{split:02d}.txt", class_names, labelled=False), resolver)
    first_train: dict[tuple[object, ...], int] = {}
    for f in train:
        first_train.setdefault(f.key, f.video.line)
    return [(f.video.path, first_train[f.key], f.video.line) for f in test if f.key in first_train]


def load_split(
    root: str | Path, split: int = 1, subset: str = "train", allow_missing: bool = False,
    allow_duplicates: bool = False,
) -> tuple[list[str], list[VideoItem], list[str]]:
    """Read a UCF-layout split: ``(class_names, items present on disk, listed-but-missing paths)``.

    Raises ``FileNotFoundError`` when listed videos are missing (count and first names in the message) unless
    ``allow_missing``, which skips them with one warning; ``ValueError`` for a video listed twice (file and lines
    named) unless ``allow_duplicates`` (then it is kept twice, as listed, and counted by the caller). Two lines name one
    video when their normalised paths are equal or they name one existing file (``(device, inode)``: another
    spelling, a case variant the resolver maps to the same file, a link); repeats share the first one's path.
    """
    check_int("split", split, 1, 3)
    check_choice("subset", subset, SUBSETS)
    root = Path(root)
    lists = root / LIST_DIR
    class_names = read_class_ind(lists / "classInd.txt")
    list_file = lists / f"{subset}list{split:02d}.txt"
    listed = read_list(list_file, class_names, labelled=subset == "train")
    resolver = PathResolver(root / VIDEO_DIR)
    located = _locate(listed, resolver)
    dups = _duplicates(located)
    if dups and not allow_duplicates:
        first = ", ".join(_describe(fs) for fs in list(dups.values())[:3])
        raise ValueError(f"{list_file}: {len(dups)} videos are listed more than once ({first}); each clip would "
                         "count several times in the metrics. Remove the repeats, or set data.allow_duplicates=true "
                         "to keep them (the run then reports data/duplicate_videos)")
    items, missing = [], []
    canonical: dict[tuple[object, ...], str] = {}  # one path per file: repeats of it count in count_duplicates
    for f in located:
        if f.found is None:
            missing.append(f.video.path)
        else:
            found = canonical.setdefault(f.key, f.found)
            items.append(VideoItem(f"{VIDEO_DIR}/{found}", f.video.label, group_of(found)))
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
