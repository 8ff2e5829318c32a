"""Incremental video writing: ``.mp4`` / ``.avi`` through OpenCV, ``.gif`` through Pillow.

Frames are ``uint8`` ``(H, W, 3)`` RGB (``(H, W)`` grey is accepted), written one at a time; every frame must
have the size of the first. MP4 uses H.264 (``avc1``) when this OpenCV build can encode it (probed once per
process, silently) and MPEG-4 Part 2 (``mp4v``) otherwise; AVI uses Motion-JPEG (``MJPG``). MP4/AVI frames are
streamed to disk (nothing is held in memory); GIF frames are collected and written on :meth:`VideoWriter.close`
(GIF is meant for short clips; Pillow merges identical consecutive frames into one longer frame).

The OpenCV encoders need even frame sizes (odd ones are silently cropped by FFmpeg), so an odd height or width
is padded by one replicated edge row/column for ``.mp4``/``.avi``; ``frame_size`` reports the size on disk.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

__all__ = ["SUPPORTED_EXTENSIONS", "VideoWriter", "VideoWriterError"]

SUPPORTED_EXTENSIONS = (".mp4", ".avi", ".gif")


class VideoWriterError(OSError):
    """The video file cannot be created or the encoder cannot be opened."""


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C-level stderr (FFmpeg/OpenCV probe noise) for the duration of the block."""
    try:
        fd = os.dup(2)
    except OSError:  # no fd 2 (unusual embedding) → nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


@lru_cache(maxsize=1)
def avc1_available() -> bool:
    """Whether this OpenCV build can write H.264 (``avc1``) MP4 files (probed once, in a temp folder)."""
    with tempfile.TemporaryDirectory() as d, _quiet_stderr():
        p = os.path.join(d, "probe.mp4")
        try:
            w = cv2.VideoWriter(p, cv2.VideoWriter_fourcc(*"avc1"), 8.0, (64, 64))
            ok = w.isOpened()
            if ok:
                w.write(np.zeros((64, 64, 3), np.uint8))
            w.release()
        except cv2.error:
            return False
        return ok and os.path.exists(p) and os.path.getsize(p) > 0


class VideoWriter:
    """Write a video frame by frame; use as a context manager.

    ``path``: ``.mp4``, ``.avi`` or ``.gif`` (parent folders are created). ``fps``: frames per second (> 0).
    ``codec``: a FourCC for ``.mp4``/``.avi`` to override the default (``avc1`` if available else ``mp4v`` for MP4,
    ``MJPG`` for AVI); not allowed for GIF. ``frames_written`` counts the frames accepted so far; ``frame_size``
    is ``(height, width)`` on disk once the first frame arrived. Raises :class:`VideoWriterError` (naming the path)
    when the file or encoder cannot be opened and ``ValueError`` for unsupported extensions or bad frames.

    >>> with VideoWriter("out.mp4", fps=8) as vw:  # doctest: +SKIP
    ...     for frame in frames:  # uint8 (H, W, 3) RGB
    ...         vw.write(frame)
    """

    def __init__(self, path: str | Path, fps: float, *, codec: str | None = None) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in SUPPORTED_EXTENSIONS:
            raise ValueError(f"unsupported video extension {self.path.suffix!r} for {self.path}; "
                             f"use one of {', '.join(SUPPORTED_EXTENSIONS)}")
        if not fps or fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if codec is not None and (self.suffix == ".gif" or len(codec) != 4):
            raise ValueError(f"codec must be a 4-character FourCC for .mp4/.avi, got {codec!r} for {self.path}")
        self.fps = float(fps)
        self.codec = codec
        self.frames_written = 0
        self.frame_size: tuple[int, int] | None = None  # (height, width) on disk
        self._input_size: tuple[int, int] | None = None  # (height, width) of the frames given
        self._cv: Any = None
        self._gif: list[Any] = []
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VideoWriterError(f"cannot create the folder for video {self.path}: {e}") from e
        if not os.access(self.path.parent, os.W_OK):
            raise VideoWriterError(f"cannot write video {self.path}: folder {self.path.parent} is not writable")
        if self.path.is_dir():
            raise VideoWriterError(f"cannot write video {self.path}: it is a directory")

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------------
    def _fourcc(self) -> str:
        if self.codec is not None:
            return self.codec
        if self.suffix == ".avi":
            return "MJPG"
        return "avc1" if avc1_available() else "mp4v"

    def _open_cv(self, height: int, width: int) -> None:
        fourcc = self._fourcc()
        with _quiet_stderr():
            w = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, (width, height))
        if not w.isOpened():
            w.release()
            raise VideoWriterError(
                f"cannot open a video writer for {self.path} (codec {fourcc!r}, {width}x{height} at {self.fps} fps)"
            )
        self._cv = w

    def write(self, frame: Any) -> None:
        """Append one frame: ``uint8`` ``(H, W, 3)`` RGB or ``(H, W)`` grey (numpy or torch)."""
        if self._closed:
            raise ValueError(f"video writer for {self.path} is closed")
        if hasattr(frame, "detach"):
            frame = frame.detach().cpu().numpy()
        f = np.asarray(frame)
        if f.ndim == 2:
            f = np.repeat(f[..., None], 3, axis=2)
        if f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame must be (H, W, 3) RGB or (H, W) grey, got shape {f.shape} ({self.path})")
        if f.dtype != np.uint8:
            raise ValueError(f"frame must be uint8, got {f.dtype} ({self.path})")
        h, w = f.shape[:2]
        if self._input_size is None:
            self._input_size = (h, w)
        elif self._input_size != (h, w):
            raise ValueError(
                f"frame {self.frames_written} has size {h}x{w} (HxW) but the video {self.path} was started at "
                f"{self._input_size[0]}x{self._input_size[1]}; all frames must have the same size"
            )
        if self.suffix == ".gif":
            from PIL import Image  # deferred: Pillow, only for GIF output

            self._gif.append(Image.fromarray(np.ascontiguousarray(f)))
            self.frame_size = (h, w)
        else:
            if h % 2 or w % 2:
                f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            if self._cv is None:
                self._open_cv(f.shape[0], f.shape[1])
                self.frame_size = (f.shape[0], f.shape[1])
            self._cv.write(np.ascontiguousarray(f[..., ::-1]))  # RGB → BGR
        self.frames_written += 1

    def write_all(self, frames: Any) -> None:
        """Write every frame of an iterable (or a ``(T, H, W, 3)`` array)."""
        for f in frames:
            self.write(f)

    def close(self) -> None:
        """Finish the file (idempotent). A writer closed without frames leaves no file and warns."""
        if self._closed:
            return
        self._closed = True
        if self._cv is not None:
            self._cv.release()
            self._cv = None
        if self.suffix == ".gif" and self._gif:
            first, rest = self._gif[0], self._gif[1:]
            try:
                first.save(self.path, save_all=True, append_images=rest, duration=max(1, round(1000.0 / self.fps)),
                           loop=0, optimize=False, disposal=1)
            except OSError as e:
                raise VideoWriterError(f"cannot write GIF {self.path}: {e}") from e
            finally:
                self._gif = []
        if self.frames_written == 0:
            warnings.warn(f"no frames were written; {self.path} was not created", RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        return f"VideoWriter({str(self.path)!r}, fps={self.fps}, frames_written={self.frames_written})"
