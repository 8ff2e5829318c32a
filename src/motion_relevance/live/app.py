"""Live explanations: ``python -m motion_relevance.live source=<file | camera index> ckpt_path=…`` (``mr-live``).

Streams a video file (decord, decoded incrementally) or a camera (OpenCV) through a trained checkpoint, window by
window (``window`` frames, advanced by ``stride``), preprocessed exactly like the checkpoint's training data. For
every window: the predicted class and its confidence (softmax probability), the baseline explanation
(``explainer=dtd|gradcam|gbp|guided_gradcam|…``) and its selective version (``selective.sigma``), the motion share
``Σ|R_sel| / Σ|R|`` and the latency. Writes into the run folder:

* ``overlay.mp4``: input | baseline | selective side by side, heatmaps blended on the model's input frames, the
  class, confidence and motion share written on every frame; one output frame per stream frame, at the source's
  frame rate (frames of dropped windows carry no heatmap);
* ``windows.csv``: one row per window (start/end time s, status, class, confidence, motion share, latency ms,
  end-to-end latency ms);
* ``timeline.png``: confidence and motion share against time;
* ``metrics.json``: windows/s, latency, real-time factor, dropped windows, … (also logged to the loggers: W&B
  offline by default, ``logger=none`` for none).

The last line printed is ``Run folder: <path>``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from motion_relevance.data.transforms import ClipTransform
from motion_relevance.explain.selective import selective_relevance
from motion_relevance.live.source import FrameSource, open_source
from motion_relevance.live.windows import POLICIES, Pacer, SlidingWindow, Window, count_windows, iter_windows
from motion_relevance.models.checkpoint import LoadedClassifier, load_classifier
from motion_relevance.utils.instantiate import instantiate_group
from motion_relevance.utils.loggers import default_wandb_offline
from motion_relevance.utils.run import loggable_config, run_and_record, to_python
from motion_relevance.utils.validation import ensure_writable_dir

log = logging.getLogger(__name__)

CONFIG_PATH = str(Path(__file__).resolve().parents[3] / "conf")
#: Preprocessing keys a checkpoint must record for live use (resize, clip_len and stride are optional).
REQUIRED_PREPROCESSING = ("crop_size", "mean", "std", "scale", "channel_order")
CSV_COLUMNS = ("window", "start_s", "end_s", "status", "padded", "class", "confidence", "motion_share",
               "latency_ms", "e2e_latency_ms")


@dataclass
class WindowResult:
    """One row of ``windows.csv`` (times in s, latencies in ms; ``status`` explained | dropped)."""

    window: int
    start_s: float
    end_s: float
    status: str
    padded: bool
    class_name: str = ""
    confidence: float = math.nan
    motion_share: float = math.nan
    latency_ms: float = math.nan
    e2e_latency_ms: float = math.nan

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("class_name")
        return {k: ("" if isinstance(d[k], float) and math.isnan(d[k]) else d[k]) for k in CSV_COLUMNS}


# ---------------------------------------------------------------------------------------------------- the model
def check_preprocessing(loaded: LoadedClassifier) -> dict[str, Any]:
    """The checkpoint's preprocessing, refusing one that lacks the keys live windows need (named)."""
    pre = dict(loaded.preprocessing or {})
    missing = [k for k in REQUIRED_PREPROCESSING if k not in pre]
    if missing:
        raise ValueError(
            f"ckpt_path={str(loaded.path)!r} records no usable preprocessing: checkpoint['motion_relevance']"
            f"['preprocessing'] lacks {', '.join(missing)}; live explanations need "
            f"{', '.join(REQUIRED_PREPROCESSING)} (and resize, clip_len, stride if the model was trained with "
            "them). Train it with mr-train, which stores them."
        )
    return pre


def build_transform(preprocessing: Mapping[str, Any]) -> ClipTransform:
    """The evaluation transform of the training data (centre crop + normalisation) from the checkpoint."""
    return ClipTransform(
        preprocessing["crop_size"], mean=preprocessing["mean"], std=preprocessing["std"],
        scale=preprocessing["scale"], channel_order=preprocessing["channel_order"], train=False,
    )


def fill_data_node(cfg: DictConfig, preprocessing: Mapping[str, Any]) -> None:
    """Fill ``cfg.data`` (what explainer configs interpolate: ``${data.mean}`` …) from the checkpoint; values
    the user set must agree with it."""
    from motion_relevance.explain_app import _check_preprocessing

    node = cfg.get("data")
    plain = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    given = {str(k): v for k, v in dict(plain).items() if v is not None}
    _check_preprocessing(dict(preprocessing), given)
    with open_dict(cfg):
        if cfg.get("data") is None:
            cfg.data = {}
        for key, value in preprocessing.items():
            cfg.data[key] = to_python(value)


def model_clip_len(loaded: LoadedClassifier, preprocessing: Mapping[str, Any]) -> int | None:
    """Frames per clip the network takes (its config's ``clip_len``, else the data's), ``None`` if unknown."""
    for value in (loaded.net_config.get("clip_len"), preprocessing.get("clip_len")):
        if value is not None:
            return int(value)
    return None


@dataclass
class Explained:
    """What one window produced: class, confidence, maps ``(C, T, h, w)`` and the model-input frames."""

    class_index: int
    confidence: float
    relevance: torch.Tensor
    selective: torch.Tensor
    motion_share: float
    inputs: np.ndarray  # uint8 (T, h, w, 3) RGB after resize + crop


class LiveExplainer:
    """Predict + explain + selective relevance for one window.

    Args:
        net: the classifier ``(B, 3, T, H, W) -> (B, K)`` logits, in eval mode.
        transform: the checkpoint's :class:`ClipTransform` (centre crop + normalisation).
        explainer: ``explainer(model, clips, target) -> (B, C, T, H, W)``.
        sigma, padding: selective relevance (SPEC §1).
        target: ``None`` explains the predicted class, an int a fixed class.
        device: where the net runs.
        class_names: names of the classes in label order.
    """

    def __init__(self, net: torch.nn.Module, transform: ClipTransform, explainer: Callable[..., torch.Tensor],
                 sigma: float, padding: str = "replicate", target: int | None = None,
                 device: torch.device | str = "cpu", class_names: list[str] | None = None) -> None:
        self.net, self.transform, self.explainer = net, transform, explainer
        self.class_names = list(class_names or [])
        self.sigma, self.padding, self.target = float(sigma), padding, target
        self.device = torch.device(device)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def inputs(self, frames: np.ndarray) -> np.ndarray:
        """Centre-cropped uint8 frames ``(T, h, w, 3)`` of a window ``(T, H, W, 3)``."""
        return np.ascontiguousarray(self.transform.spatial(frames)[0])

    def __call__(self, frames: np.ndarray) -> Explained:
        cropped = self.inputs(frames)
        clip = self.transform.normalize(cropped).unsqueeze(0).to(self.device)  # (1, 3, T, h, w)
        with torch.no_grad():
            probs = torch.softmax(self.net(clip).float(), dim=1)[0]
        cls = int(probs.argmax()) if self.target is None else int(self.target)
        relevance = self.explainer(self.net, clip, target=cls)
        sel = selective_relevance(relevance, self.sigma, padding=self.padding)
        base_mass = float(relevance.abs().sum())
        share = float(sel.abs().sum()) / base_mass if base_mass > 0 else math.nan
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Explained(cls, float(probs[cls]), relevance[0].cpu(), sel[0].cpu(), share, cropped)


# ------------------------------------------------------------------------------------------------- outputs
class OverlaySink:
    """Writes the overlay video (and shows it with ``cv2.imshow`` when ``display``).

    With ``background=True`` (and no display) compositing and encoding run on a worker thread fed through a
    queue of at most ``queue_windows`` windows, so they overlap with the next window's explanation (OpenCV and
    numpy release the GIL); when the worker falls behind, :meth:`write` waits (the video never loses frames).
    """

    def __init__(self, path: Path | None, fps: float, labels: tuple[str, str], *, min_height: int, alpha: float,
                 mode: str, display: bool, window_title: str, background: bool = True,
                 queue_windows: int = 4) -> None:
        from motion_relevance.viz.video_writer import VideoWriter

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
        from motion_relevance.viz.overlay import iter_overlay_frames

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
        import cv2

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
            import cv2

            cv2.destroyAllWindows()
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing the overlay video failed: {err}") from err


def check_display() -> None:
    """``display=true`` needs an OpenCV build with a GUI and a display; fail before any work otherwise."""
    import cv2

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


def write_csv(path: Path, rows: list[WindowResult]) -> Path:
    """``windows.csv``: one row per window, columns :data:`CSV_COLUMNS`."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow(r.row())
    return path


def summarise(rows: list[WindowResult], *, wall_s: float, work_s: float, fps: float, stride: int,
              frames: int) -> dict[str, Any]:
    """Summary metrics of a run (keys ``live/…``; latencies in ms, rates in windows/s)."""
    done = [r for r in rows if r.status == "explained"]
    lat = [r.latency_ms for r in done]
    e2e = [r.e2e_latency_ms for r in done]
    shares = [r.motion_share for r in done if not math.isnan(r.motion_share)]
    required = fps / stride
    capacity = len(done) / work_s if work_s > 0 else math.nan
    out: dict[str, Any] = {
        "live/windows": len(rows),
        "live/windows_explained": len(done),
        "live/windows_dropped": len(rows) - len(done),
        "live/frames": frames,
        "live/source_fps": fps,
        "live/duration_s": frames / fps if fps else math.nan,
        "live/wall_s": wall_s,
        "live/windows_per_s": len(done) / wall_s if wall_s > 0 else math.nan,
        "live/capacity_windows_per_s": capacity,
        "live/required_windows_per_s": required,
        "live/real_time_factor": capacity / required if required > 0 else math.nan,
        "live/latency_ms_mean": statistics.fmean(lat) if lat else math.nan,
        "live/latency_ms_p95": float(np.percentile(lat, 95)) if lat else math.nan,
        "live/e2e_latency_ms_mean": statistics.fmean(e2e) if e2e else math.nan,
        "live/e2e_latency_ms_max": max(e2e) if e2e else math.nan,
        "live/confidence_mean": statistics.fmean(r.confidence for r in done) if done else math.nan,
        "live/motion_share_mean": statistics.fmean(shares) if shares else math.nan,
    }
    out["live/keeps_up"] = bool(out["live/real_time_factor"] >= 1.0)
    return out


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int | None, description: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar over windows (indeterminate for cameras); yields ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


# ---------------------------------------------------------------------------------------------- the loop
def _as_int_or_none(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < 0:
        raise ValueError(f"{key}={value!r} must be a non-negative integer or null")
    return int(value)


def _resize_option(value: Any) -> Any:
    return list(value) if isinstance(value, (ListConfig, list, tuple)) else value


def run(cfg: DictConfig, capture_factory: Callable[[int], Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stream ``cfg.source`` through ``cfg.ckpt_path``; returns (metrics, objects). ``capture_factory`` replaces
    ``cv2.VideoCapture`` for camera sources (tests)."""
    default_wandb_offline()
    window, stride = int(cfg.window), int(cfg.stride)
    if window < 1 or stride < 1:
        raise ValueError(f"window={cfg.window}, stride={cfg.stride}: both must be >= 1 frame")
    max_windows = _as_int_or_none(cfg.get("max_windows"), "max_windows")
    sigma = cfg.selective.sigma
    if isinstance(sigma, (ListConfig, list, tuple)):
        raise ValueError(f"selective.sigma={list(sigma)}: live explanations take one sigma, e.g. selective.sigma=4")
    if cfg.get("display"):
        check_display()
    output_dir = ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))

    loaded = load_classifier(cfg.ckpt_path, map_location=device)
    pre = check_preprocessing(loaded)
    clip_len = model_clip_len(loaded, pre)
    if clip_len is not None and clip_len != window:
        raise ValueError(f"window={window} but the checkpoint's model takes clips of {clip_len} frames; "
                         f"set window={clip_len}")
    fill_data_node(cfg, pre)
    transform = build_transform(pre)
    explainer = hydra.utils.instantiate(cfg.explainer)
    name = getattr(explainer, "name", "baseline")
    target = cfg.get("target")
    if target is not None and not 0 <= int(target) < loaded.num_classes:
        raise ValueError(f"target={target}: the model has classes 0..{loaded.num_classes - 1} (or null: predicted)")
    model = LiveExplainer(loaded.net, transform, explainer, float(sigma), cfg.selective.padding,
                          None if target is None else int(target), device, loaded.class_names)

    source: FrameSource = open_source(
        cfg.source, resize=_resize_option(cfg.resize), checkpoint_resize=pre.get("resize"),
        crop_size=transform.crop_size, fps=cfg.get("fps"), step=int(pre.get("stride") or 1),
        chunk=int(cfg.decode.chunk), num_threads=int(cfg.decode.threads), default_fps=float(cfg.default_fps),
        max_queue=int(cfg.camera.max_queue), capture_factory=capture_factory,
    )
    policy = cfg.get("policy") or ("drop" if source.live else "block")
    if policy not in POLICIES:
        source.close()
        raise ValueError(f"policy={policy!r}: use one of {', '.join(POLICIES)} (or null: block for files, drop "
                         "for cameras)")
    log.info("Live source: %s; window %d, stride %d, policy %s, explainer %s", source.describe(), window, stride,
             policy, name)

    outputs = cfg.outputs
    try:
        loggers = instantiate_group(cfg.get("logger"), "logger")
        for lg in loggers:
            lg.log_hyperparams(loggable_config(cfg))
        sink = OverlaySink(
            output_dir / outputs.video if outputs.get("video") else None, source.fps,
            (f"baseline ({name})", f"selective (sigma={float(sigma):g})"), min_height=int(outputs.min_height),
            alpha=float(outputs.alpha), mode=str(outputs.mode), display=bool(cfg.get("display")),
            window_title=f"mr-live: {source.name}", background=bool(outputs.get("background", True)),
        )
    except BaseException:
        source.close()
        raise
    sw = SlidingWindow(window, stride)
    pacer = Pacer(policy, source.fps, live=source.live, num_frames=source.num_frames,
                  arrived=source.arrived if source.live else None)
    rows: list[WindowResult] = []
    work_s = 0.0
    max_seconds = cfg.get("max_seconds")
    total = count_windows(source.num_frames, window, stride) if source.num_frames is not None else None
    if total is not None and max_windows is not None:
        total = min(total, max_windows)
    t_start = time.perf_counter()
    interrupted = False
    try:
        with source, progress_bar(bool(cfg.get("progress")), total, f"{name} on {Path(str(source.name)).name}") \
                as advance:
            if source.live:
                pacer.t0 = time.perf_counter()
            for win in iter_windows(sw, source.frames()):
                if source.live:
                    pacer.t0 = getattr(source, "t0", pacer.t0)
                t_win = time.perf_counter()
                row = _process(win, model, pacer, sw, source, sink, rows, loggers)
                cost = time.perf_counter() - t_win
                if row.status == "explained":
                    row.e2e_latency_ms = pacer.finish(win, cost) * 1e3
                    work_s += cost
                rows.append(row)
                advance()
                if (max_windows is not None and len(rows) >= max_windows) or sink.stopped or (
                        max_seconds is not None and win.end / source.fps >= float(max_seconds)):
                    break
    except KeyboardInterrupt:
        interrupted = True
        log.warning("Interrupted: writing the outputs of the %d windows so far", len(rows))
    finally:
        sink.close()
    wall_s = time.perf_counter() - t_start
    frames = sw.count
    metrics = summarise(rows, wall_s=wall_s, work_s=work_s, fps=source.fps, stride=stride, frames=frames)
    metrics.update({"live/policy": policy, "live/explainer": name, "live/source": source.name,
                    "live/checkpoint": str(loaded.path), "live/interrupted": interrupted,
                    "live/device": str(device), "live/window": window, "live/stride": stride})
    paths = _write_outputs(output_dir, outputs, rows, source, name, float(sigma))
    if sink.writer is not None and sink.frames:
        paths["video"] = sink.writer.path
        metrics["live/video_frames"] = sink.frames
    _log_summary(loggers, metrics, paths.get("timeline"))
    print(
        f"{metrics['live/windows_explained']} windows explained ({metrics['live/windows_dropped']} dropped) in "
        f"{wall_s:.1f} s: {metrics['live/windows_per_s']:.2f} windows/s (source needs "
        f"{metrics['live/required_windows_per_s']:.2f}; real-time factor {metrics['live/real_time_factor']:.2f}), "
        f"latency {metrics['live/latency_ms_mean']:.0f} ms per window, end-to-end "
        f"{metrics['live/e2e_latency_ms_mean']:.0f} ms",
        flush=True,
    )
    return metrics, {"rows": rows, "paths": paths, "source": source, "loaded": loaded, "loggers": loggers}


def _caption(t_s: float, res: WindowResult) -> str:
    if res.status != "explained":
        return f"{t_s:.2f}s  dropped (behind real time)"
    share = "n/a" if math.isnan(res.motion_share) else f"{res.motion_share:.0%}"
    return f"{t_s:.2f}s  {res.class_name} {res.confidence:.0%}  motion {share}"


def _process(win: Window, model: LiveExplainer, pacer: Pacer, sw: SlidingWindow, source: FrameSource,
             sink: OverlaySink, rows: list[WindowResult], loggers: list[Any]) -> WindowResult:
    """Explain (or drop) one window and write its new frames to the overlay."""
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
        res.confidence, res.motion_share = out.confidence, out.motion_share
        shown = slice(win.new_from, win.num_real)  # the frames no earlier window showed
        maps = (out.relevance[:, shown], out.selective[:, shown])
        frames = out.inputs[shown]
        for lg in loggers:
            lg.log_metrics({"live/confidence": res.confidence, "live/motion_share": res.motion_share,
                            "live/latency_ms": res.latency_ms, "live/class_index": out.class_index}, step=win.index)
    else:
        pacer.drop()
        frames = model.inputs(win.frames[win.new_from : win.num_real])
        zero = np.zeros(frames.shape[:3], np.float32)
        maps = (zero, zero)
    sink.write(frames, maps, [_caption(t, res) for t in times[win.new_from : win.num_real]])
    return res


def _write_outputs(output_dir: Path, outputs: DictConfig, rows: list[WindowResult], source: FrameSource,
                   name: str, sigma: float) -> dict[str, Path]:
    from motion_relevance.viz.plots import plot_timeline

    paths: dict[str, Path] = {}
    if outputs.get("csv"):
        paths["csv"] = write_csv(output_dir / outputs.csv, rows)
    done = [r for r in rows if r.status == "explained"]
    if outputs.get("timeline") and done:
        paths["timeline"] = plot_timeline(
            [(r.start_s + r.end_s) / 2 for r in done], [r.confidence for r in done], [r.motion_share for r in done],
            output_dir / outputs.timeline, labels=[r.class_name for r in done],
            title=f"{Path(str(source.name)).name}: {name}, selective sigma={sigma:g}",
        )
    return paths


def _log_summary(loggers: list[Any], metrics: Mapping[str, Any], timeline: Path | None) -> None:
    numbers = {k: float(v) for k, v in to_python(dict(metrics)).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
    for lg in loggers:
        lg.log_metrics(numbers)
        if timeline is not None and hasattr(lg, "log_image"):
            lg.log_image(key="live/timeline", images=[str(timeline)])
        lg.save()
        lg.finalize("success")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="live")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the measured windows/s."""
    metrics = run_and_record(cfg, run)
    value = metrics.get("live/windows_per_s")
    return None if value is None or not math.isfinite(value) else float(value)


__all__ = ["REQUIRED_PREPROCESSING", "LiveExplainer", "WindowResult", "build_transform", "check_preprocessing",
           "main", "run"]

