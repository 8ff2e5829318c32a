"""Video index: frame count, fps and size of every video under a root, cached as JSON.

Built once in parallel (thread pool; decoding releases the GIL), stored in ``cache_dir`` and reused; only files
whose size or mtime changed (or that are new) are probed again. Unreadable files are recorded with an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checks import normalize_relpath
from .video import VideoDecodeError, VideoDecoder

log = logging.getLogger(__name__)
INDEX_VERSION = 1


@dataclass(frozen=True)
class IndexEntry:
    """What the index knows about one file; ``error`` is set (and counts 0) when it could not be read."""

    num_frames: int
    fps: float
    height: int
    width: int
    size: int
    mtime_ns: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.num_frames > 0


def probe(path: Path, backend: str = "decord") -> IndexEntry:
    """Read the metadata of one video (never raises: failures become an entry with ``error``)."""
    st = path.stat()
    try:
        m = VideoDecoder(backend).meta(path)
        return IndexEntry(m.num_frames, m.fps, m.height, m.width, st.st_size, st.st_mtime_ns)
    except VideoDecodeError as exc:
        return IndexEntry(0, 0.0, 0, 0, st.st_size, st.st_mtime_ns, str(exc)[:300])


class VideoIndex:
    """Mapping ``relative path -> IndexEntry`` for the videos of one root.

    Attributes:
        num_probed: how many files the last :meth:`build` had to (re)read (0 = fully served from the cache).
        cache_path: the JSON file, or ``None`` when built without a cache.
    """

    def __init__(self, root: Path, entries: dict[str, IndexEntry], cache_path: Path | None, num_probed: int):
        self.root = root
        self.entries = entries
        self.cache_path = cache_path
        self.num_probed = num_probed

    def __getitem__(self, rel_path: str) -> IndexEntry:
        return self.entries[normalize_relpath(rel_path, root=self.root)]

    def __contains__(self, rel_path: object) -> bool:
        try:
            return normalize_relpath(str(rel_path), root=self.root) in self.entries
        except ValueError:
            return False

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def bad(self) -> list[str]:
        """Relative paths of the files that could not be read."""
        return sorted(k for k, e in self.entries.items() if not e.ok)

    @staticmethod
    def cache_file(root: str | Path, cache_dir: str | Path) -> Path:
        """Where the index of ``root`` is cached (one file per absolute root path)."""
        key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]
        return Path(cache_dir) / f"video_index_{Path(root).name}_{key}.json"

    @classmethod
    def build(
        cls,
        root: str | Path,
        rel_paths: Iterable[str],
        cache_dir: str | Path | None = None,
        num_threads: int = 4,
        progress: bool = True,
        backend: str = "decord",
    ) -> VideoIndex:
        """Index ``rel_paths`` (relative to ``root``; they must exist), reusing and updating the cache.

        Paths are normalised (``a/./b`` is ``a/b``); one that is absolute or leaves ``root`` is refused by name.
        """
        root = Path(root)
        cache_path = cls.cache_file(root, cache_dir) if cache_dir is not None else None
        cached = _load(cache_path) if cache_path is not None else {}
        entries: dict[str, IndexEntry] = {}
        todo: list[str] = []
        for rel in dict.fromkeys(normalize_relpath(r, root=root) for r in rel_paths):
            st = (root / rel).stat()
            old = cached.get(rel)
            if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
                entries[rel] = old
            else:
                todo.append(rel)
        if todo:
            entries.update(_probe_many(root, todo, num_threads, progress, backend))
            for rel in todo:
                if not entries[rel].ok:
                    log.warning("unreadable video %s: %s", rel, entries[rel].error)
            if cache_path is not None:
                _save(cache_path, root, {**cached, **entries})
        return cls(root, entries, cache_path, len(todo))


def _probe_many(
    root: Path, rels: list[str], num_threads: int, progress: bool, backend: str
) -> dict[str, IndexEntry]:
    def one(rel: str) -> tuple[str, IndexEntry]:
        return rel, probe(root / rel, backend)

    out: dict[str, IndexEntry] = {}
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        results = pool.map(one, rels)
        if progress and len(rels) > 20:
            from rich.progress import track  # deferred: only for long scans

            results = track(results, total=len(rels), description=f"indexing {len(rels)} videos", transient=True)
        for rel, entry in results:
            out[rel] = entry
    return out


def _load(path: Path) -> dict[str, IndexEntry]:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != INDEX_VERSION:
            return {}
        entries = {k: IndexEntry(**v) for k, v in data["entries"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    out = {}
    for key, entry in entries.items():  # a key not in normal form (or outside the root) is re-probed, never used
        try:
            if normalize_relpath(key) == key:
                out[key] = entry
        except ValueError:
            continue
    return out


def _save(path: Path, root: Path, entries: dict[str, IndexEntry]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        data = {
            "version": INDEX_VERSION,
            "root": str(root.resolve()),
            "entries": {k: asdict(v) for k, v in entries.items()},
        }
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the video index cache %s: %s", path, exc)
