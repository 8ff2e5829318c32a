"""What the user sees while ``mr-live`` runs: the overlay video (written on a worker thread), the optional
on-screen display (with the probe that refuses ``display=true`` early where it cannot work) and the progress bar.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from motion_relevance.viz.overlay import iter_overlay_frames
from motion_relevance.viz.video_writer import VideoWriter

__all__ = ["OverlaySink", "check_display", "progress_bar"]


class OverlaySink:
    """Writes the overlay video (and shows it with ``cv2.imshow`` when ``display``).

    With ``background=True`` (and no display) compositing and encoding run on a worker thread fed through a
    queue of at most ``queue_windows`` windows, so they overlap with the next window's explanation (OpenCV and
    numpy release the GIL); when the worker falls behind, :meth:`write` waits (the video never loses frames).
    """

    def __init__(self, path: Path | None, fps: float, labels: tuple[str, str], *, min_height: int, alpha: float,
                 mode: str, display: bool, window_title: str, background: bool = True,
                 queue_windows: int = 4) -> None:
        self.labels = labels
        self.min_height, self.alpha, self.mode = int(min_height), float(alpha), mode
        self.writer = VideoWriter(path, fps) if path is not None else None
        self.display = display
        self.title = window_title
        self.stopped = False  # the user closed the display window
        self.frames = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[Any, ...] | None] | None = None
        self._thread: threading.Thread | None = None
        if background and not display and self.writer is not None:
            self._queue = queue.Queue(maxsize=max(1, int(queue_windows)))
            self._thread = threading.Thread(target=self._work, name="mr-live-overlay", daemon=True)
            self._thread.start()

    def write(self, frames: np.ndarray, maps: tuple[Any, Any], captions: list[str]) -> None:
        """Composite uint8 frames ``(T, h, w, 3)`` with the two maps (``(C, T, h, w)`` or ``(T, h, w)``), each
        normalised over these ``T`` frames; ``captions``: one per frame."""
        if (self.writer is None and not self.display) or len(frames) == 0:
            return
        if self._error is not None:
            raise RuntimeError(f"writing the overlay video failed: {self._error}") from self._error
        if self._queue is not None:
            self._queue.put((frames, maps, captions))
        else:
            self._render(frames, maps, captions)

    def _render(self, frames: np.ndarray, maps: tuple[Any, Any], captions: list[str]) -> None:
        composed = iter_overlay_frames(
            frames, dict(zip(self.labels, maps)), captions, mode=self.mode, alpha=self.alpha,
            min_height=self.min_height, show_frame_number=False,
        )
        for image in composed:
            if self.writer is not None:
                self.writer.write(image)
            self.frames += 1
            if self.display:
                self._show(image)

    def _work(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._render(*item)
                except BaseException as err:  # reported by the next write() / close()
                    self._error = err

    def _show(self, image: np.ndarray) -> None:
        cv2.imshow(self.title, np.ascontiguousarray(image[..., ::-1]))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stopped = True

    def close(self) -> None:
        """Finish the queued frames and the file (idempotent); re-raises a worker failure."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self.writer is not None:
            self.writer.close()
        if self.display:
            cv2.destroyAllWindows()
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing the overlay video failed: {err}") from err


def check_display() -> None:
    """``display=true`` needs an OpenCV build with a GUI and a display; fail before any work otherwise."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise RuntimeError("display=true but there is no display ($DISPLAY is not set); run with display=false "
                           "and watch overlay.mp4 in the run folder")
    try:
        cv2.namedWindow("mr-live-probe")
        cv2.destroyWindow("mr-live-probe")
    except cv2.error as err:
        raise RuntimeError(
            "display=true needs OpenCV with GUI support, but this OpenCV has none (opencv-python-headless); "
            "install opencv-python instead, or run with display=false and watch overlay.mp4 in the run folder"
        ) from err


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int | None, description: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar over windows (indeterminate for cameras); yields ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
