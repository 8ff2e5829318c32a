"""Frame sources for live explanations: video files through decord, cameras through OpenCV ``VideoCapture``.

A source yields ``(frame, arrival_s)`` pairs: ``frame`` is ``uint8`` RGB ``(H, W, 3)`` already resized as the
checkpoint's preprocessing asks (the centre crop and normalisation happen later, in
:class:`~motion_relevance.data.transforms.ClipTransform`); ``arrival_s`` is when the frame arrives, in seconds
from the start of the stream (a file plays at its frame rate: ``i / fps``; a camera frame is stamped with the
wall clock when it was grabbed).

Files are decoded incrementally, ``chunk`` frames at a time in order (never the whole video in memory); cameras
are read on a background thread into a bounded queue, so that frames keep arriving (and their arrival times stay
true) while a window is being explained. Every failure raises :class:`SourceError` naming the source.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from motion_relevance.data.video import resolve_decoder

__all__ = [
    "CameraSource",
    "FileSource",
    "FrameSource",
    "SourceError",
    "check_file",
    "check_resize",
    "check_source",
    "open_source",
    "parse_source",
    "resize_frame",
    "target_size",
]


class SourceError(RuntimeError):
    """A frame source cannot be opened or decoded; the message names the source."""


def check_resize(resize: Any) -> str | int | tuple[int, int] | None:
    """``resize`` as :func:`target_size` takes it: ``"auto"``, ``"native"`` (or ``None``), an int >= 1 or
    ``(H, W)``; ``ValueError`` naming ``resize`` and the allowed values otherwise."""
    rule = "allowed values are auto, native, an integer >= 1 (shorter side, pixels) or [H, W] with H, W >= 1"
    if resize is None:
        return None
    if isinstance(resize, str):
        if resize.lower() not in ("auto", "native"):
            raise ValueError(f"resize={resize!r}: {rule}")
        return resize.lower()
    if isinstance(resize, bool):
        raise ValueError(f"resize={resize!r}: {rule}")
    if isinstance(resize, int | float):
        if not (math.isfinite(resize) and float(resize).is_integer() and resize >= 1):
            raise ValueError(f"resize={resize!r}: {rule}")
        return int(resize)
    try:
        vals = list(resize)
    except TypeError:
        raise ValueError(f"resize={resize!r}: {rule}") from None
    if len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals):
        raise ValueError(f"resize={vals!r}: {rule}")
    return int(vals[0]), int(vals[1])


def target_size(
    native_hw: tuple[int, int],
    resize: str | int | Sequence[int] | None,
    checkpoint_resize: Sequence[int] | None,
    crop_size: Sequence[int] | None,
) -> tuple[int, int] | None:
    """The ``(H, W)`` frames are resized to before the centre crop (``None`` = keep the decoded size).

    Args:
        native_hw: decoded frame size ``(H, W)`` in pixels.
        resize: ``"auto"`` (the checkpoint's resize if it records one, otherwise the shorter side scaled to the
            crop), ``"native"`` (frames as decoded), an int (shorter side in pixels, aspect kept) or ``[H, W]``
            (see :func:`check_resize`).
        checkpoint_resize: the ``resize`` the checkpoint's preprocessing records (``None`` if it has none).
        crop_size: the centre crop ``(H, W)``; frames are never left smaller than it (the shorter side is
            scaled up to fit, aspect kept).
    """
    h, w = int(native_hw[0]), int(native_hw[1])
    option = check_resize(resize)
    out: tuple[int, int] | None
    if option is None or option == "native":
        out = None
    elif option == "auto":
        if checkpoint_resize:
            out = (int(checkpoint_resize[0]), int(checkpoint_resize[1]))
        else:
            out = _short_side((h, w), max(crop_size) if crop_size else min(h, w))
    elif isinstance(option, int):
        out = _short_side((h, w), option)
    else:
        assert isinstance(option, tuple)
        out = option
    size = out or (h, w)
    if crop_size and (size[0] < crop_size[0] or size[1] < crop_size[1]):
        scale = max(crop_size[0] / size[0], crop_size[1] / size[1])
        out = (max(crop_size[0], math.ceil(size[0] * scale)), max(crop_size[1], math.ceil(size[1] * scale)))
    return None if out == (h, w) else out


def _short_side(hw: tuple[int, int], side: int) -> tuple[int, int]:
    if side < 1:
        raise ValueError(f"resize={side}: the shorter side must be >= 1 pixel")
    scale = side / min(hw)
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def resize_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize one ``(H, W, 3)`` frame to ``size`` ``(H, W)`` (area when shrinking, bilinear when growing)."""
    if size is None or frame.shape[:2] == tuple(size):
        return frame
    shrink = size[0] * size[1] < frame.shape[0] * frame.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(frame, (size[1], size[0]), interpolation=interp)


class FrameSource:
    """Base class. ``fps`` (frames/s, after ``step``), ``num_frames`` (``None`` for cameras), ``live``
    (frames arrive in real time), ``native_size`` and ``size`` ``(H, W)`` (decoded / after resizing)."""

    name: str = "source"
    fps: float = 0.0
    num_frames: int | None = None
    live: bool = False
    native_size: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (0, 0)

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        """Yield ``(frame uint8 (H, W, 3) RGB, arrival time s)`` until the stream ends."""
        raise NotImplementedError

    def arrived(self) -> int:
        """Frames that have arrived so far (live sources; consumed + waiting)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder / device (idempotent)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        n = "live" if self.num_frames is None else f"{self.num_frames} frames"
        return (f"{self.name} ({n}, {self.fps:.2f} fps, {self.native_size[1]}x{self.native_size[0]} "
                f"-> {self.size[1]}x{self.size[0]})")


class FileSource(FrameSource):
    """A video file decoded by decord (by OpenCV where decord refuses a file OpenCV decodes, e.g. an animated GIF),
    ``chunk`` frames at a time, in order.

    Args:
        path: any container/codec FFmpeg (decord) reads: AVI (XVID, MJPG, FFV1), MP4 (H.264, MPEG-4), MKV, ….
        resize, checkpoint_resize, crop_size: see :func:`target_size`; decord resizes on decode, exactly as the
            training data loader does when the checkpoint records a resize.
        fps: override the file's frame rate (the simulated real-time clock runs at it); ``None`` = the file's.
        step: keep every ``step``-th frame (the checkpoint's temporal stride); ``fps`` is divided by it.
        chunk: frames decoded per decord call.
        num_threads: decoder threads.
        default_fps: used when the file reports no frame rate.
    """

    live = False

    def __init__(
        self,
        path: str | Path,
        *,
        resize: str | int | Sequence[int] | None = "auto",
        checkpoint_resize: Sequence[int] | None = None,
        crop_size: Sequence[int] | None = None,
        fps: float | None = None,
        step: int = 1,
        chunk: int = 8,
        num_threads: int = 1,
        default_fps: float = 25.0,
    ) -> None:
        self.path = check_file(path)
        self.name = str(path)
        self.step = max(1, int(step))
        self.chunk = max(1, int(chunk))
        self.num_threads = int(num_threads)
        reader = self._open(None)
        native_n = len(reader)
        if native_n < 1:
            raise SourceError(f"source={self.name!r} has zero frames")
        first = reader[0].asnumpy()
        self.native_size = (int(first.shape[0]), int(first.shape[1]))
        native_fps = float(reader.get_avg_fps() or 0.0)
        if not math.isfinite(native_fps) or native_fps <= 0:
            native_fps = float(default_fps)
        src_fps = float(fps) if fps else native_fps
        if src_fps <= 0:
            raise ValueError(f"fps={fps!r} must be > 0")
        self.fps = src_fps / self.step
        self.num_frames = math.ceil(native_n / self.step)
        self._native_n = native_n
        self.resize_to = target_size(self.native_size, resize, checkpoint_resize, crop_size)
        self.size = self.resize_to or self.native_size
        self._reader = reader if self.resize_to is None else self._open(self.resize_to)
        self._resize_after = False
        if self.resize_to is not None and tuple(self._reader[0].shape[:2]) != self.resize_to:
            self._resize_after = True  # a decoder that ignores the size: resize with OpenCV
        self._reader.seek(0)

    def _open(self, size: tuple[int, int] | None) -> Any:
        kw = {"height": size[0], "width": size[1]} if size else {}
        try:
            if resolve_decoder("decord") == "opencv":  # no decord wheel on this platform
                return _OpenCVReader(self.path)
            import decord  # deferred: optional (no wheel on some platforms)

            return decord.VideoReader(str(self.path), num_threads=self.num_threads, **kw)
        except Exception as err:  # decord raises DECORDError / RuntimeError
            fallback = _opencv_reader(self.path)  # e.g. an animated GIF: tried by decoding, never by file name
            if fallback is not None:
                return fallback
            if _zero_frames(self.path):
                raise SourceError(f"source={self.name!r} has zero frames") from err
            raise SourceError(
                f"source={self.name!r} cannot be decoded (not a video, corrupt or unsupported codec): "
                f"{str(err).splitlines()[0][:200]}"
            ) from err

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        keep = list(range(0, self._native_n, self.step))
        out_i = 0
        for lo in range(0, len(keep), self.chunk):
            idx = keep[lo : lo + self.chunk]
            try:
                batch = self._reader.get_batch(idx).asnumpy()
            except Exception as err:
                batch = self._fallback_batch(idx, err)
            for frame in batch:
                if self._resize_after:
                    frame = resize_frame(frame, self.resize_to)
                yield frame, out_i / self.fps
                out_i += 1

    def _fallback_batch(self, idx: list[int], err: Exception) -> np.ndarray:
        """Frames ``idx`` decoded by OpenCV when decord opened the file but cannot decode them (animated GIFs whose
        frames are sub-rectangles); the rest of the file is read by OpenCV too. :class:`SourceError` otherwise."""
        reader = None if isinstance(self._reader, _OpenCVReader) else _opencv_reader(self.path)
        if reader is not None:
            try:
                batch = reader.get_batch(idx).asnumpy()
            except RuntimeError:
                pass
            else:
                self._reader = reader
                self._resize_after = self.resize_to is not None  # OpenCV decodes at the native size
                return batch
        msg = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise SourceError(f"source={self.name!r}: frames {idx[0]}-{idx[-1]} cannot be decoded: {msg}") from err

    def arrived(self) -> int:  # a file has no real-time arrival; the pacer simulates it
        raise NotImplementedError("a file source is paced by a simulated clock")

    def close(self) -> None:
        self._reader = None


class _Frames:
    """A decoded frame or batch in decord's shape of API (``.asnumpy()``, ``.shape``)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape

    def asnumpy(self) -> np.ndarray:
        return self.array


class _OpenCVReader:
    """The part of decord's ``VideoReader`` a file source uses, on OpenCV (platforms without decord): frames are
    read in order (a seek only when an index goes back or skips), RGB, at the native size."""

    def __init__(self, path: Path) -> None:
        self._cv2 = cv2
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise RuntimeError(f"OpenCV cannot open {path}")
        self._n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._pos = 0

    def __len__(self) -> int:
        return self._n

    def get_avg_fps(self) -> float:
        return self._fps

    def seek(self, index: int) -> None:
        self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, int(index))
        self._pos = int(index)

    def _read(self, index: int) -> np.ndarray:
        if index != self._pos:
            self.seek(index)
        ok, frame = self._cap.read()
        if not ok:
            raise RuntimeError(f"frame {index} cannot be decoded")
        self._pos = index + 1
        return frame[:, :, ::-1].copy()

    def __getitem__(self, index: int) -> _Frames:
        return _Frames(self._read(int(index)))

    def get_batch(self, indices: list[int]) -> _Frames:
        return _Frames(np.stack([self._read(int(i)) for i in indices]))


def check_file(path: str | Path) -> Path:
    """``path`` if it is a non-empty file; :class:`SourceError` naming it otherwise (no decoder is opened)."""
    file = Path(path)
    if not file.exists():
        raise SourceError(f"source={str(path)!r}: no such file (give a video file or a camera index)")
    if not file.is_file():
        raise SourceError(f"source={str(path)!r} is not a file")
    if file.stat().st_size == 0:
        raise SourceError(f"source={str(path)!r} is an empty file (0 bytes): no frames to explain")
    return file


def _opencv_reader(path: Path) -> _OpenCVReader | None:
    """An OpenCV reader of ``path`` when OpenCV decodes its first frame and reports frames, else ``None``.

    Used where decord refuses a file OpenCV reads (animated GIFs: decord cannot measure their duration).
    """
    try:
        reader = _OpenCVReader(path)
        if len(reader) < 1:
            return None
        reader[0]
        reader.seek(0)
    except RuntimeError:
        return None
    return reader


def _zero_frames(path: Path) -> bool:
    """Whether OpenCV opens ``path`` as a video that holds no frame (decord refuses such files)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened()) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) <= 0 and not cap.read()[0]
    finally:
        cap.release()


class CameraSource(FrameSource):
    """A camera (``cv2.VideoCapture(index)``) read on a background thread.

    Args:
        index: camera index (``0`` = the first camera).
        resize, checkpoint_resize, crop_size: see :func:`target_size` (OpenCV resizes each frame).
        fps: override the camera's frame rate; ``default_fps`` when neither is known.
        step: keep every ``step``-th frame.
        max_queue: frames buffered while a window is explained (the grabber waits when full).
        capture_factory: ``cv2.VideoCapture`` (tests pass a fake).
    """

    live = True

    def __init__(
        self,
        index: int,
        *,
        resize: str | int | Sequence[int] | None = "auto",
        checkpoint_resize: Sequence[int] | None = None,
        crop_size: Sequence[int] | None = None,
        fps: float | None = None,
        step: int = 1,
        max_queue: int = 256,
        default_fps: float = 30.0,
        capture_factory: Callable[[int], Any] | None = None,
    ) -> None:
        self.index = int(index)
        self.name = f"camera {self.index}"
        factory = capture_factory or cv2.VideoCapture
        self._cap = factory(self.index)
        if self._cap is None or not self._cap.isOpened():
            self._release()
            raise SourceError(
                f"source={self.index} (camera {self.index}) cannot be opened: no such camera, busy, or no "
                "permission; list cameras with `v4l2-ctl --list-devices` or give a video file"
            )
        ok, first = self._cap.read()
        if not ok or first is None:
            self._release()
            raise SourceError(f"source={self.index} (camera {self.index}) opened but delivers no frames")
        self.native_size = (int(first.shape[0]), int(first.shape[1]))
        cam_fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        src_fps = float(fps) if fps else (cam_fps if math.isfinite(cam_fps) and cam_fps > 0 else float(default_fps))
        self.step = max(1, int(step))
        self.fps = src_fps / self.step
        self.num_frames = None
        self.resize_to = target_size(self.native_size, resize, checkpoint_resize, crop_size)
        self.size = self.resize_to or self.native_size
        self._first = first
        self._queue: queue.Queue[tuple[np.ndarray, float] | None] = queue.Queue(maxsize=max(1, int(max_queue)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumed = 0
        self._arrived = 0
        self._error: BaseException | None = None
        self.t0 = time.perf_counter()

    def _convert(self, bgr: np.ndarray) -> np.ndarray:
        return resize_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.resize_to)

    def _grab(self) -> None:
        raw_i = 0
        try:
            frame: np.ndarray | None = self._first
            while not self._stop.is_set():
                if frame is None:
                    ok, frame = self._cap.read()
                    if not ok or frame is None:
                        break
                if raw_i % self.step == 0:
                    item = (self._convert(frame), time.perf_counter() - self.t0)
                    while not self._stop.is_set():
                        try:
                            self._queue.put(item, timeout=0.1)
                            self._arrived += 1
                            break
                        except queue.Full:
                            continue
                raw_i += 1
                frame = None
        except BaseException as err:  # surface decoder errors in the consumer
            self._error = err
        finally:
            self._queue.put(None)

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._grab, name=f"grab-{self.name}", daemon=True)
        self._thread.start()
        while True:
            item = self._queue.get()
            if item is None:
                if self._error is not None:
                    raise SourceError(f"source={self.index} ({self.name}) failed: {self._error}") from self._error
                return
            self._consumed += 1
            yield item

    def arrived(self) -> int:
        return self._arrived

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while True:  # unblock a grabber waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=2.0)
            self._thread = None
        self._release()


def parse_source(source: Any) -> int | Path:
    """``0``, ``"0"`` → camera index 0; anything else → a file path."""
    if isinstance(source, bool):
        raise ValueError(f"source={source!r}: give a video file path or a camera index")
    if isinstance(source, int):
        return source
    text = str(source).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if not text:
        raise ValueError("source is empty: give a video file path or a camera index (source=0)")
    return Path(text).expanduser()


def check_source(source: Any) -> int | Path:
    """A camera index (>= 0) or an existing, non-empty video file, as :func:`parse_source` reads ``source``;
    checks what can be checked without opening a device or a decoder."""
    target = parse_source(source)
    if isinstance(target, int):
        if target < 0:
            raise SourceError(f"source={target}: camera indices start at 0")
        return target
    return check_file(target)


def open_source(source: Any, **kwargs: Any) -> FrameSource:
    """A :class:`CameraSource` for an int (or digit string), else a :class:`FileSource`.

    ``kwargs``: ``resize``, ``checkpoint_resize``, ``crop_size``, ``fps``, ``step``, ``default_fps``; files also
    take ``chunk`` and ``num_threads``, cameras ``max_queue`` and ``capture_factory``.
    """
    target = check_source(source)
    if isinstance(target, int):
        for key in ("chunk", "num_threads"):
            kwargs.pop(key, None)
        return CameraSource(target, **kwargs)
    for key in ("max_queue", "capture_factory"):
        kwargs.pop(key, None)
    return FileSource(target, **kwargs)
