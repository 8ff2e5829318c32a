"""The live loop: windows of a frame source, each explained or dropped (:class:`~motion_relevance.live.windows.
Pacer`), its new frames written to the overlay, until the stream ends, a limit is reached, the user closes the
display or presses Ctrl-C."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from motion_relevance.live.model import LiveExplainer
from motion_relevance.live.record import WindowResult, caption, log_window
from motion_relevance.live.sink import OverlaySink, progress_bar
from motion_relevance.live.source import FrameSource
from motion_relevance.live.windows import Pacer, SlidingWindow, Window, count_windows, iter_windows

log = logging.getLogger(__name__)

__all__ = ["Played", "play", "process_window"]


@dataclass
class Played:
    """What :func:`play` did: one row per window, seconds spent on explained windows and in all, frames read."""

    rows: list[WindowResult] = field(default_factory=list)
    work_s: float = 0.0
    wall_s: float = 0.0
    frames: int = 0
    interrupted: bool = False


def process_window(win: Window, model: LiveExplainer, pacer: Pacer, sw: SlidingWindow, source: FrameSource,
                   sink: OverlaySink, loggers: list[Any]) -> WindowResult:
    """Explain (or drop) one window, log it and write its new frames to the overlay."""
    fps = source.fps
    res = WindowResult(win.index, win.start / fps, win.end / fps, "dropped", win.padded)
    times = [(win.start + j) / fps for j in range(len(win.frames))]
    if pacer.should_explain(win, sw.next_end(win, source.num_frames)):
        pacer.start(win)
        t0 = time.perf_counter()
        out = model(win.frames)
        res.latency_ms = (time.perf_counter() - t0) * 1e3
        res.status = "explained"
        res.class_name = model.class_name(out.class_index)
        res.confidence, res.selectivity_mass = out.confidence, out.selectivity_mass
        shown = slice(win.new_from, win.num_real)  # the frames no earlier window showed
        maps = (out.relevance[:, shown], out.selective[:, shown])
        frames = out.inputs[shown]
        log_window(loggers, res, out.class_index)
    else:
        pacer.drop()
        frames = model.inputs(win.frames[win.new_from : win.num_real])
        zero = np.zeros(frames.shape[:3], np.float32)
        maps = (zero, zero)
    sink.write(frames, maps, [caption(t, res) for t in times[win.new_from : win.num_real]])
    return res


def play(source: FrameSource, model: LiveExplainer, sink: OverlaySink, loggers: list[Any], *, window: int,
         stride: int, policy: str, max_windows: int | None = None, max_seconds: float | None = None,
         progress: bool = False, description: str = "") -> Played:
    """Run the windows of ``source`` through ``model`` with ``policy`` (block | drop); closes ``source`` and
    ``sink``. Ctrl-C ends the loop and keeps the windows so far (``interrupted``)."""
    sw = SlidingWindow(window, stride)
    pacer = Pacer(policy, source.fps, live=source.live, num_frames=source.num_frames,
                  arrived=source.arrived if source.live else None)
    played = Played()
    rows = played.rows
    total = count_windows(source.num_frames, window, stride) if source.num_frames is not None else None
    if total is not None and max_windows is not None:
        total = min(total, max_windows)
    t_start = time.perf_counter()
    try:
        with source, progress_bar(progress, total, description) as advance:
            if source.live:
                pacer.t0 = time.perf_counter()
            for win in iter_windows(sw, source.frames()):
                if source.live:
                    pacer.t0 = getattr(source, "t0", pacer.t0)
                t_win = time.perf_counter()
                row = process_window(win, model, pacer, sw, source, sink, loggers)
                cost = time.perf_counter() - t_win
                if row.status == "explained":
                    row.e2e_latency_ms = pacer.finish(win, cost) * 1e3
                    played.work_s += cost
                rows.append(row)
                advance()
                if (max_windows is not None and len(rows) >= max_windows) or sink.stopped or (
                        max_seconds is not None and win.end / source.fps >= float(max_seconds)):
                    break
    except KeyboardInterrupt:
        played.interrupted = True
        log.warning("Interrupted: writing the outputs of the %d windows so far", len(rows))
    finally:
        sink.close()
    played.wall_s = time.perf_counter() - t_start
    played.frames = sw.count
    return played
