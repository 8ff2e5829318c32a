"""The run folder's record: ``metrics.json`` first (atomic), then the tables, figures, videos and per-clip values.

Whoever runs the explanation pipeline (``mr-explain``, ``mr-train callbacks=explain``, a script) writes one run
folder the same way, through a :class:`RunRecord`:

- ``metrics.json`` is written before anything else, atomically (a temporary file, synced, then renamed), and
  merged with the one this run wrote before (validation epochs, then the test stage, then the entry point's
  final numbers);
- every other file goes through :meth:`RunRecord.guard`: a writer that fails (a figure, a video, a table) is
  reported with one warning naming the writer and the file, the others still run, and the failures are recorded
  in ``metrics.json`` under ``failed_writers`` (a list of ``{writer, file, error}``);
- a full disk (``ENOSPC``, or a quota: ``EDQUOT``) stops the writing with :class:`RunFolderFull`, whose one-line
  message names the file and whether ``metrics.json`` holds the numbers; the entry points print that line
  instead of a traceback.

Plain code: no Lightning or Hydra.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from motion_relevance.checks import to_plain

log = logging.getLogger(__name__)

__all__ = ["FAILED_KEY", "FULL_ERRNOS", "METRICS_FILE", "RunFolderFull", "RunRecord", "clip_file", "is_full",
           "read_metrics_file", "write_metrics"]

METRICS_FILE = "metrics.json"
#: ``metrics.json`` key listing the writers that failed: ``[{"writer", "file", "error"}, ...]`` (absent if none).
FAILED_KEY = "failed_writers"
#: Error numbers of a full disk (or an exhausted quota): no later file can be written either.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

T = TypeVar("T")


class RunFolderFull(RuntimeError):
    """The run folder's disk is full: the run ends with this (one-line) message, not a traceback."""


def is_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) is full."""
    return isinstance(err, OSError) and err.errno in FULL_ERRNOS


def full_message(path: str | os.PathLike[str], writer: str, metrics_written: bool) -> str:
    """The one line a full disk ends the run with: the file, the writer, what is safe, the fix."""
    state = "metrics.json holds the numbers" if metrics_written else "metrics.json could not be written"
    return (f"no space left on device writing the {writer} {path}; {state}; free space on that disk or set "
            "paths.log_dir to a folder on another disk, and run again")


def read_metrics_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metrics of ``path``; ``{}`` if it does not exist, or (with a warning) if it is not a JSON mapping."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s); it is replaced by this run's metrics", path, err)
        return {}
    if not isinstance(data, dict):
        log.warning("%s holds a %s, not a mapping; it is replaced by this run's metrics", path, type(data).__name__)
        return {}
    return data


def write_metrics(folder: str | os.PathLike[str], metrics: Mapping[str, Any], *, merge: bool = False,
                  name: str = METRICS_FILE) -> Path:
    """Write ``metrics`` as JSON into ``folder`` atomically: a crash or a full disk never leaves half a file.

    ``merge``: keep the keys of the file already there that ``metrics`` does not set. Values become plain JSON
    (tensors to numbers, NaN to ``null``). A full disk raises :class:`RunFolderFull`.
    """
    path = Path(folder) / name
    data = {**(read_metrics_file(path) if merge else {}), **to_plain(dict(metrics))}
    text = json.dumps(to_plain(data), indent=2, sort_keys=True)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_full(err):
            raise RunFolderFull(full_message(path, "metrics", metrics_written=False)) from None
        raise
    return path


def clip_file(stage: str, world_size: int = 1, rank: int = 0) -> str:
    """Name of a stage's per-clip values: ``per_clip.csv`` (test), ``per_clip_val.csv``; ``…_rank<r>.csv`` for
    each process of a multi-process run (each writes its own clips)."""
    stem = "per_clip" if stage == "test" else f"per_clip_{stage}"
    return f"{stem}.csv" if world_size <= 1 else f"{stem}_rank{rank}.csv"


class RunRecord:
    """Writes one run folder: ``metrics.json`` first, every other file through :meth:`guard` (see the module).

    Args:
        folder: the run folder.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.metrics_written = False
        self.failed: list[dict[str, str]] = []

    def write_metrics(self, metrics: Mapping[str, Any], *, merge: bool = True) -> Path | None:
        """``metrics.json`` (merged with this run's earlier record); a failure other than a full disk is reported
        like any writer's."""
        path = self.guard("metrics", self.folder / METRICS_FILE, lambda: write_metrics(self.folder, metrics,
                                                                                        merge=merge))
        self.metrics_written = self.metrics_written or path is not None
        return path

    def guard(self, writer: str, path: str | os.PathLike[str], write: Callable[[], T]) -> T | None:
        """``write()`` (which writes ``path``); a failure is reported (one warning naming ``writer`` and the file)
        and recorded, and ``None`` returned so that the other writers still run. A full disk raises
        :class:`RunFolderFull`: every later writer would fail too."""
        try:
            return write()
        except RunFolderFull:
            raise
        except Exception as err:  # noqa: BLE001 - one writer's failure must not lose the others' files
            file = str(getattr(err, "filename", None) or path)
            if is_full(err):
                raise RunFolderFull(full_message(file, writer, self.metrics_written)) from None
            log.warning("Could not write the %s %s (%s: %s); the other outputs are written", writer, file,
                        type(err).__name__, err)
            self.failed.append({"writer": writer, "file": file, "error": f"{type(err).__name__}: {err}"})
            return None

    def close(self) -> None:
        """Record the failed writers in ``metrics.json`` (``failed_writers``, added to the run's earlier ones)."""
        if not self.failed:
            return
        path = self.folder / METRICS_FILE
        earlier = read_metrics_file(path).get(FAILED_KEY) or []
        try:
            write_metrics(self.folder, {FAILED_KEY: [*earlier, *self.failed]}, merge=True)
        except (OSError, RunFolderFull) as err:
            log.error("Could not record the failed writers in %s: %s", path, err)
