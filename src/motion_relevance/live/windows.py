"""Sliding windows over a frame stream, loop padding, and the real-time pacing policy.

Windows start at frames ``0, stride, 2*stride, …`` and hold ``window`` frames. A stream shorter than one window
gives one window; a stream that ends mid-window gives a last partial window. Both are *loop padded*: the
window's own real frames repeat (``frames[j % num_real]``), as training pads short videos
(:func:`motion_relevance.data.sampling.clip_indices`); a live stream cannot loop back to its first frame.

Keeping up (:class:`Pacer`): a window is *ready* when its last frame arrives. With ``policy="block"`` every window
is explained (results fall behind when processing is slower than the source); with ``policy="drop"`` a window is
skipped when the next one is already complete by the time the explainer is free, so the explanation always
shows the newest complete window. Files are paced by a simulated clock (frame ``i`` arrives at ``i / fps``;
processing advances the clock by its measured duration), cameras by the wall clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["POLICIES", "Pacer", "SlidingWindow", "Window", "count_windows"]

POLICIES = ("block", "drop")


@dataclass
class Window:
    """One window of the stream.

    Attributes:
        index: 0, 1, 2, … in stream order.
        start: index of its first frame in the stream.
        frames: ``uint8`` ``(window, H, W, 3)`` RGB, loop padded when ``num_real < window``.
        num_real: real (not padded) frames.
        new_from: index inside the window of the first frame no earlier window showed (what the overlay
            video adds for this window).
        ready_s: arrival time of its last real frame, seconds from the stream start.
    """

    index: int
    start: int
    frames: np.ndarray
    num_real: int
    new_from: int
    ready_s: float

    @property
    def end(self) -> int:
        """One past the last real frame."""
        return self.start + self.num_real

    @property
    def padded(self) -> bool:
        return self.num_real < len(self.frames)


def count_windows(num_frames: int, window: int, stride: int) -> int:
    """Windows :class:`SlidingWindow` emits for a stream of ``num_frames`` frames (incl. a padded last one)."""
    if num_frames <= 0:
        return 0
    if num_frames <= window:
        return 1
    full = (num_frames - window) // stride + 1
    last_start = full * stride
    return full + (1 if last_start < num_frames and (full - 1) * stride + window < num_frames else 0)


class SlidingWindow:
    """Collect frames and emit :class:`Window` objects; holds at most ``window`` frames.

    >>> sw = SlidingWindow(window=4, stride=2)
    >>> [w.start for f in range(7) if (w := sw.push(np.zeros((2, 2, 3), np.uint8), f / 25))]
    [0, 2]
    >>> sw.flush().start, sw.flush() is None
    (4, True)
    """

    def __init__(self, window: int = 16, stride: int = 8) -> None:
        if int(window) < 1 or int(stride) < 1:
            raise ValueError(f"window={window}, stride={stride}: both must be >= 1 frame")
        self.window, self.stride = int(window), int(stride)
        self._buf: deque[tuple[np.ndarray, float]] = deque(maxlen=self.window)
        self.count = 0  # frames pushed
        self._next_start = 0
        self._shown_until = 0  # frames already covered by emitted windows
        self._emitted = 0
        self._flushed = False

    def push(self, frame: np.ndarray, arrival_s: float) -> Window | None:
        """Add one frame ``(H, W, 3)``; returns the window it completes, if any."""
        self._buf.append((frame, arrival_s))
        self.count += 1
        if self.count == self._next_start + self.window:
            return self._emit(self._next_start, self.window)
        return None

    def flush(self) -> Window | None:
        """At the end of the stream: the loop-padded partial window (or the single short window), once."""
        if self._flushed:
            return None
        self._flushed = True
        start = self._next_start
        n_real = self.count - start
        if n_real <= 0 or self._shown_until >= self.count:
            return None
        return self._emit(start, n_real)

    def _emit(self, start: int, n_real: int) -> Window:
        items = list(self._buf)[len(self._buf) - n_real :]
        frames = np.stack([f for f, _ in items])
        if n_real < self.window:
            frames = frames[np.arange(self.window) % n_real]
        win = Window(
            index=self._emitted, start=start, frames=frames, num_real=n_real,
            new_from=max(0, self._shown_until - start), ready_s=float(items[-1][1]),
        )
        self._emitted += 1
        self._shown_until = start + n_real
        self._next_start += self.stride
        return win

    def next_end(self, win: Window, num_frames: int | None) -> int | None:
        """One past the last frame of the window after ``win`` (``None`` if a finite stream has none)."""
        nxt = win.start + self.stride
        if num_frames is None:
            return nxt + self.window
        if nxt >= num_frames or win.end >= num_frames:
            return None
        return min(nxt + self.window, num_frames)


class Pacer:
    """Which windows to explain, and the clock that tells how far behind the results are.

    Args:
        policy: ``"block"`` (explain every window) or ``"drop"`` (skip a window when the next is already ready).
        fps: source frame rate (frames/s).
        live: wall clock and ``arrived()`` (cameras) instead of the simulated file clock.
        num_frames: frames of a finite stream (files).
        arrived: for live sources, how many frames have arrived so far.
        clock: wall clock in seconds (``time.perf_counter``; tests pass a fake).
        t0: wall-clock time of the stream start (live sources).
    """

    def __init__(
        self,
        policy: str,
        fps: float,
        *,
        live: bool = False,
        num_frames: int | None = None,
        arrived: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        t0: float | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r}: use one of {', '.join(POLICIES)}")
        if not fps or fps <= 0:
            raise ValueError(f"fps={fps!r} must be > 0")
        if live and arrived is None:
            raise ValueError("a live source needs arrived()")
        self.policy, self.fps, self.live = policy, float(fps), bool(live)
        self.num_frames = num_frames
        self._arrived = arrived
        self._clock = clock
        self.t0 = clock() if t0 is None else t0
        self.busy_until = 0.0  # simulated clock: when the explainer is free (s from stream start)
        self.explained = 0
        self.dropped = 0

    def now(self) -> float:
        """Seconds since the stream start (simulated for files: the time the explainer becomes free)."""
        return self._clock() - self.t0 if self.live else self.busy_until

    def frames_available(self) -> int:
        """Frames that have arrived by :meth:`now`."""
        if self.live:
            assert self._arrived is not None
            return int(self._arrived())
        n = math.floor(self.busy_until * self.fps + 1e-9) + 1
        return n if self.num_frames is None else min(n, self.num_frames)

    def should_explain(self, win: Window, next_end: int | None) -> bool:
        """``block``: always; ``drop``: unless the following window (ending at ``next_end``) is ready already."""
        if self.policy == "block" or next_end is None:
            return True
        return self.frames_available() < next_end

    def start(self, win: Window) -> None:
        """The explainer takes ``win`` (the simulated clock waits for it to be ready)."""
        if not self.live:
            self.busy_until = max(self.busy_until, win.ready_s)

    def finish(self, win: Window, cost_s: float) -> float:
        """``win`` is done after ``cost_s`` seconds of work; returns its end-to-end latency in seconds (from
        the arrival of its last frame to its result)."""
        self.explained += 1
        if self.live:
            return max(0.0, self.now() - win.ready_s)
        self.busy_until = max(self.busy_until, win.ready_s) + float(cost_s)
        return self.busy_until - win.ready_s

    def drop(self) -> None:
        self.dropped += 1


def iter_windows(sw: SlidingWindow, frames: Iterator[tuple[np.ndarray, float]]) -> Iterator[Window]:
    """All windows of a frame stream, the padded last one included."""
    for frame, t in frames:
        win = sw.push(frame, t)
        if win is not None:
            yield win
    last = sw.flush()
    if last is not None:
        yield last
