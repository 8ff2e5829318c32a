"""Video decoding to uint8 RGB frames ``(N, H, W, 3)``, with decord (default) or OpenCV.

Readers are opened lazily (never in a Dataset's ``__init__``, so DataLoader workers each open their own) and
kept in a small LRU so consecutive clips of one video reuse the open reader; ``read_all`` decodes a whole
video once so every clip of it can be sliced from memory.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_choice, check_int, check_size

log = logging.getLogger(__name__)

DECODERS = ("decord", "opencv")


@functools.lru_cache(maxsize=1)
def decord_available() -> bool:
    """Whether decord (the ``decord2`` package) imports here (it has no wheel for some platforms, e.g. Intel macs)."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_decoder(backend: str) -> str:
    """The decoder that will run: ``backend``, or OpenCV (with one warning) where decord is not installed."""
    backend = check_choice("decoder", backend, DECODERS)
    if backend == "decord" and not decord_available():
        _warn_fallback()
        return "opencv"
    return backend


@functools.lru_cache(maxsize=1)
def _warn_fallback() -> None:
    log.warning("decord is not installed on this platform (no decord2 wheel, e.g. Intel macs): decoding with "
                "OpenCV instead; set data.decoder=opencv to say so and silence this message")


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded (truncated, corrupt, unsupported)."""


@dataclass(frozen=True)
class VideoMeta:
    """Frame count, frame rate (frames/s) and native size (pixels) of a video."""

    num_frames: int
    fps: float
    height: int
    width: int


class VideoDecoder:
    """Decode frames of video files, resizing on decode.

    Args:
        backend: ``"decord"`` (default) or ``"opencv"``.
        resize: output ``(H, W)`` (int = square) or ``None`` for the native size.
        num_threads: decoder threads per reader (keep small with several DataLoader workers).
        max_readers: how many open readers to keep (LRU).
    """

    def __init__(
        self,
        backend: str = "decord",
        resize: int | Sequence[int] | None = None,
        num_threads: int = 1,
        max_readers: int = 2,
    ) -> None:
        self.backend = resolve_decoder(backend)
        self.resize = check_size("resize", resize)
        self.num_threads = check_int("num_threads", num_threads, 0, 64)
        self.max_readers = check_int("max_readers", max_readers, 1, 64)
        self._readers: OrderedDict[str, Any] = OrderedDict()
        self._pid = os.getpid()
        self._orphans: list[Any] = []
        self._opencv_paths: set[str] = set()  # files decord could not decode, read with OpenCV instead

    # -- public API ---------------------------------------------------------------------------------------
    def meta(self, path: str | Path) -> VideoMeta:
        """Frame count, fps and native size of ``path`` (opens the file; raises ``VideoDecodeError``)."""
        path = str(path)
        try:
            if self.backend == "decord" and path not in self._opencv_paths:
                import decord

                try:
                    vr = decord.VideoReader(path, num_threads=max(self.num_threads, 1))
                    h, w = vr[0].shape[:2]
                    return VideoMeta(len(vr), float(vr.get_avg_fps()), int(h), int(w))
                except Exception as exc:  # decord raises its own DECORDError / RuntimeError
                    self._fall_back(path, exc)
            import cv2

            cap = cv2.VideoCapture(path)
            if not cap.isOpened():
                raise VideoDecodeError(f"cannot open {path}")
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            ok, frame = cap.read()
            cap.release()
            if not ok or n < 1:
                raise VideoDecodeError(f"no decodable frame in {path}")
            return VideoMeta(n, fps, *frame.shape[:2])
        except VideoDecodeError:
            raise
        except Exception as exc:  # decord raises its own DECORDError / RuntimeError
            raise VideoDecodeError(f"cannot read {path}: {exc}") from exc

    def read(self, path: str | Path, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``(len(indices), H, W, 3)``."""
        path = str(path)
        idx = np.asarray(indices, dtype=np.int64)
        try:
            if self.backend == "decord" and path not in self._opencv_paths:
                try:
                    return self._read_decord(path, idx)
                except VideoDecodeError:
                    raise
                except Exception as exc:  # decord raises its own DECORDError / RuntimeError
                    self.close(path)
                    self._fall_back(path, exc)
            return self._read_opencv(path, idx)
        except VideoDecodeError:
            self.close(path)
            raise
        except Exception as exc:
            self.close(path)
            raise VideoDecodeError(f"cannot decode {path}: {exc}") from exc

    def _fall_back(self, path: str, exc: Exception) -> None:
        """Read ``path`` with OpenCV from now on (decord2 cannot decode some frame widths, e.g. 16, 32, 48, 96 px);
        one warning per file. The caller's OpenCV attempt raises ``VideoDecodeError`` if OpenCV fails too."""
        self._opencv_paths.add(path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("decord cannot decode %s (%s); reading it with OpenCV", path, first[:200])

    def read_all(self, path: str | Path, num_frames: int) -> np.ndarray:
        """All ``num_frames`` frames of a video, decoded once in order: ``(num_frames, H, W, 3)``."""
        return self.read(path, np.arange(num_frames))

    def close(self, path: str | None = None) -> None:
        """Drop the reader of ``path`` (or all readers)."""
        keys = list(self._readers) if path is None else [path]
        for key in keys:
            reader = self._readers.pop(key, None)
            if isinstance(reader, list):  # an OpenCV capture
                reader[0].release()

    def __getstate__(self) -> dict[str, Any]:  # never pickle open readers into DataLoader workers
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        state["_orphans"] = []
        return state

    # -- backends -------------------------------------------------------------------------------------------
    def _reader(self, path: str) -> Any:
        if os.getpid() != self._pid:
            # Forked into a DataLoader worker with the parent's open readers: never use them (decord readers
            # shared across fork deadlock) and never destroy them here (their destructors join threads that
            # do not exist in this process); keep them referenced and open fresh ones.
            self._orphans.extend(self._readers.values())
            self._readers = OrderedDict()
            self._pid = os.getpid()
        reader = self._readers.get(path)
        if reader is not None:
            self._readers.move_to_end(path)
            return reader
        if self.backend == "decord" and path not in self._opencv_paths:
            import decord

            reader = decord.VideoReader(path, num_threads=self.num_threads)
        else:
            import cv2

            cap = cv2.VideoCapture(path)
            if not cap.isOpened():
                raise VideoDecodeError(f"cannot open {path}")
            reader = [cap, 0]  # capture and the index of the next frame it will return
        self._readers[path] = reader
        while len(self._readers) > self.max_readers:
            self.close(next(iter(self._readers)))
        return reader

    def _read_decord(self, path: str, idx: np.ndarray) -> np.ndarray:
        vr = self._reader(path)
        uniq, inverse = np.unique(idx, return_inverse=True)
        if len(uniq) and (uniq[0] < 0 or uniq[-1] >= len(vr)):
            raise VideoDecodeError(f"frame index out of range [0, {len(vr)}) in {path}")
        frames = self._resized(vr.get_batch(uniq.tolist()).asnumpy())
        return frames if len(uniq) == len(idx) and (uniq == idx).all() else frames[inverse]

    def _resized(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` frames at ``resize`` with OpenCV's bilinear filter, the same for every decoder (decord2's
        own resize refuses some small widths and differs from decord 0.6's)."""
        if self.resize is None or frames.shape[1:3] == tuple(self.resize):
            return frames
        import cv2

        size = (self.resize[1], self.resize[0])
        return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])

    def _read_opencv(self, path: str, idx: np.ndarray) -> np.ndarray:
        import cv2

        reader = self._reader(path)
        cap = reader[0]
        uniq, inverse = np.unique(idx, return_inverse=True)
        first, last = int(uniq[0]), int(uniq[-1])
        if reader[1] != first:  # sequential access continues without a seek
            cap.set(cv2.CAP_PROP_POS_FRAMES, first)
            reader[1] = first
        wanted = set(uniq.tolist())
        out: list[np.ndarray] = []
        for i in range(first, last + 1):
            ok = cap.grab()
            if not ok:
                raise VideoDecodeError(f"frame {i} not decodable in {path}")
            reader[1] = i + 1
            if i in wanted:
                ok, frame = cap.retrieve()
                if not ok:
                    raise VideoDecodeError(f"frame {i} not decodable in {path}")
                if self.resize is not None:
                    frame = cv2.resize(frame, (self.resize[1], self.resize[0]), interpolation=cv2.INTER_LINEAR)
                out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        frames = np.stack(out)
        return frames[inverse]
