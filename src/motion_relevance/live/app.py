"""Live explanations: ``python -m motion_relevance.live source=<file | camera index> ckpt_path=…`` (``mr-live``).

Streams a video file (decord, decoded incrementally) or a camera (OpenCV) through a trained checkpoint, window by
window (``window`` frames, advanced by ``stride``), preprocessed exactly like the checkpoint's training data. Every
window goes through the project's :class:`~motion_relevance.pipeline.ExplanationPipeline` (as a batch of
mr-explain: same target rule, checks and metric suite): the predicted class (or ``target``) and its confidence
(softmax probability), the baseline explanation (``explainer=dtd|gradcam|gbp|guided_gradcam|…``) and its selective
version (``selective.sigma``), the suite's ``selectivity_mass`` ``Σ R_sel⁺ / Σ R⁺`` (the positive relevance mass
selective relevance keeps) and the latency. The pipeline's checks that need the model (a Grad-CAM layer on another
pathway than the full-rate one) run at start-up, before the first window. Writes into the run folder:

* ``overlay.mp4``: input | baseline | selective side by side, heatmaps blended on the model's input frames, the
  class, confidence and kept mass written on every frame; one output frame per stream frame, at the
  source's frame rate (frames of dropped windows carry no heatmap);
* ``windows.csv``: one row per window (start/end time s, status, class, confidence, selectivity_mass, latency ms,
  end-to-end latency ms);
* ``timeline.png``: confidence and selectivity_mass against time;
* ``metrics.json``: windows/s, latency, real-time factor, dropped windows, … and the suite's means over the windows
  (``live/selectivity_mass/<explainer>`` …) (also logged to the loggers: W&B offline by default, ``logger=none``
  for none).

The last line printed is ``Run folder: <path>``. The pieces: :mod:`~motion_relevance.live.config` (schema and
checks before work), :mod:`~motion_relevance.live.model` (checkpoint needs, predict + explain),
:mod:`~motion_relevance.live.source`, :mod:`~motion_relevance.live.windows`, :mod:`~motion_relevance.live.loop`,
:mod:`~motion_relevance.live.sink` (overlay video, display, progress) and :mod:`~motion_relevance.live.record`
(CSV, metrics, timeline).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from motion_relevance.conf import CONFIG_DIR
from motion_relevance.live.config import (
    LiveSettings,
    OutputsConfig,
    build_explainer,
    check_config,
    fill_data_node,
    resolve_device,
)
from motion_relevance.live.loop import play
from motion_relevance.live.model import LiveExplainer, build_transform, live_preprocessing
from motion_relevance.live.record import WindowResult, log_summary, summarise, write_csv, write_timeline
from motion_relevance.live.sink import OverlaySink, check_display
from motion_relevance.live.source import FrameSource, open_source
from motion_relevance.models.checkpoint import load_classifier
from motion_relevance.utils.instantiate import instantiate_group
from motion_relevance.utils.loggers import default_wandb_offline
from motion_relevance.utils.run import cpu_threads, loggable_config, run_and_record
from motion_relevance.utils.validation import ensure_writable_dir

log = logging.getLogger(__name__)

__all__ = ["main", "run"]


def run(cfg: DictConfig, capture_factory: Callable[[int], Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stream ``cfg.source`` through ``cfg.ckpt_path``; returns (metrics, objects). ``capture_factory`` replaces
    ``cv2.VideoCapture`` for camera sources (tests)."""
    default_wandb_offline()
    s = check_config(cfg)  # every value, before the checkpoint is read or the source opened
    if s.display:
        check_display()
    output_dir = ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    device = resolve_device(s.device)
    threads = cpu_threads(cfg)
    if threads is not None:
        torch.set_num_threads(threads)

    loaded = load_classifier(s.ckpt_path, map_location=device)
    pre = live_preprocessing(loaded, window=s.window, target=s.target)
    fill_data_node(cfg, pre)
    transform = build_transform(pre)
    explainer = build_explainer(cfg.explainer)
    name = getattr(explainer, "name", "baseline")
    sigma = float(s.selective.sigma)
    model = LiveExplainer(loaded.net, transform, explainer, sigma, s.selective.padding, s.target, device,
                          loaded.class_names, name=name)
    if transform.crop_size is not None:  # the pipeline's checks before work, on a probe window
        model.check(s.window)
    source = open_source(
        s.source, resize=s.resize, checkpoint_resize=pre.get("resize"), crop_size=transform.crop_size, fps=s.fps,
        step=int(pre.get("stride") or 1), chunk=s.decode.chunk, num_threads=s.decode.threads,
        default_fps=s.default_fps, max_queue=s.camera.max_queue, capture_factory=capture_factory,
    )
    policy = s.policy or ("drop" if source.live else "block")
    log.info("Live source: %s; window %d, stride %d, policy %s, explainer %s", source.describe(), s.window,
             s.stride, policy, name)
    try:
        if transform.crop_size is None:
            model.check(s.window, source.size)
        loggers = instantiate_group(cfg.get("logger"), "logger")
        for lg in loggers:
            lg.log_hyperparams(loggable_config(cfg))
        sink = _open_sink(s, output_dir, source, name, sigma)
    except BaseException:
        source.close()
        raise
    played = play(source, model, sink, loggers, window=s.window, stride=s.stride, policy=policy,
                  max_windows=s.max_windows, max_seconds=s.max_seconds, progress=s.progress,
                  description=f"{name} on {Path(str(source.name)).name}")
    metrics = summarise(played.rows, wall_s=played.wall_s, work_s=played.work_s, fps=source.fps, stride=s.stride,
                        frames=played.frames)
    metrics.update({"live/policy": policy, "live/explainer": name, "live/source": source.name,
                    "live/checkpoint": str(loaded.path), "live/interrupted": played.interrupted,
                    "live/device": str(device), "live/window": s.window, "live/stride": s.stride})
    metrics.update(model.results())  # the suite's means over the explained windows (live/selectivity_mass/<name> …)
    paths = _write_outputs(output_dir, s.outputs, played.rows, source, name, sigma)
    if sink.writer is not None and sink.frames:
        paths["video"] = sink.writer.path
        metrics["live/video_frames"] = sink.frames
    log_summary(loggers, metrics, paths.get("timeline"))
    print(
        f"{metrics['live/windows_explained']} windows explained ({metrics['live/windows_dropped']} dropped) in "
        f"{played.wall_s:.1f} s: {metrics['live/windows_per_s']:.2f} windows/s (source needs "
        f"{metrics['live/required_windows_per_s']:.2f}; real-time factor {metrics['live/real_time_factor']:.2f}), "
        f"latency {metrics['live/latency_ms_mean']:.0f} ms per window, end-to-end "
        f"{metrics['live/e2e_latency_ms_mean']:.0f} ms",
        flush=True,
    )
    return metrics, {"rows": played.rows, "paths": paths, "source": source, "loaded": loaded, "loggers": loggers}


def _open_sink(s: LiveSettings, output_dir: Path, source: FrameSource, name: str, sigma: float) -> OverlaySink:
    out = s.outputs
    return OverlaySink(
        output_dir / out.video if out.video else None, source.fps,
        (f"baseline ({name})", f"selective (sigma={sigma:g})"), min_height=out.min_height, alpha=out.alpha,
        mode=out.mode, display=s.display, window_title=f"mr-live: {source.name}", background=out.background,
    )


def _write_outputs(output_dir: Path, out: OutputsConfig, rows: list[WindowResult], source: FrameSource,
                   name: str, sigma: float) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    if out.csv:
        paths["csv"] = write_csv(output_dir / out.csv, rows)
    if out.timeline:
        title = f"{Path(str(source.name)).name}: {name}, selective sigma={sigma:g}"
        timeline = write_timeline(output_dir / out.timeline, rows, title)
        if timeline is not None:
            paths["timeline"] = timeline
    return paths


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="live")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the measured windows/s."""
    metrics = run_and_record(cfg, run, page=False)
    value = metrics.get("live/windows_per_s")
    return None if value is None or not math.isfinite(value) else float(value)
