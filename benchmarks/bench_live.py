"""Live explanations (mr-live): windows/s and latency, and incremental decoding vs the obvious alternatives.

1. **Frame source** (window 16, stride 8, a real clip): ms per window and the frames held in memory for
   * ``incremental`` — :class:`motion_relevance.live.source.FileSource` + :class:`SlidingWindow` (ours: each frame
     decoded once, in order; at most one window of frames held);
   * ``re-decode`` — a new decord ``VideoReader`` and ``get_batch`` of the window's 16 frames for every window
     (every frame decoded twice at stride 8, plus a file open and a seek per window);
   * ``whole video`` — decode every frame first, then slice the windows (memory grows with the video).
2. **Pipeline**: :func:`motion_relevance.live.app.run` end to end (decode, preprocess, predict, explain, selective
   relevance, overlay video, CSV) with ``policy=block`` on the clip played as a 25 fps source (``fps=25``: keeping
   up needs 25 / 8 = 3.125 windows/s), for DTD and Grad-CAM: windows/s (wall), capacity (windows / work time),
   latency per window (mean, p95), real-time factor. The small demo model (C3D width 0.125, 8 classes, crop 56;
   random weights: the cost does not depend on them) on each of ``--devices``, and the full C3D (101 classes,
   resize 128x171, crop 112) on the non-CPU ones (on the CPU too with ``--full``). The published figures:
   ``taskset -c 0,1 python bench_live.py --devices cpu,cuda`` (2 CPU cores + the GPU).

Run: ``.venv/bin/python benchmarks/bench_live.py`` → ``benchmarks/results/bench_live.{json,md}``. A quick check
that it runs, writing nothing: ``bench_live.py --repeats 1 --explainers gradcam --no-save``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from _common import write_results

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "ucf101_mini" / "UCF-101" / "Basketball" / "v_Basketball_g01_c01.avi"
SMALL = {
    "net": {"_target_": "motion_relevance.models.C3D", "num_classes": 8, "width": 0.125, "clip_len": 16,
            "crop_size": 56, "in_channels": 3, "dropout": 0.0, "init": "kaiming"},
    "pre": {"clip_len": 16, "stride": 1, "resize": None, "crop_size": [56, 56], "mean": [0.29, 0.29, 0.29],
            "std": [0.16, 0.16, 0.16], "scale": 255.0, "channel_order": "RGB"},
}
FULL = {
    "net": {"_target_": "motion_relevance.models.C3D", "num_classes": 101, "width": 1.0, "clip_len": 16,
            "crop_size": 112, "in_channels": 3, "dropout": 0.5, "init": "kaiming"},
    "pre": {"clip_len": 16, "stride": 1, "resize": [128, 171], "crop_size": [112, 112],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 255.0, "channel_order": "RGB"},
}
WINDOW, STRIDE, SOURCE_FPS = 16, 8, 25.0


def make_checkpoint(path: Path, spec: dict[str, Any]) -> Path:
    """A checkpoint in mr-train's layout with random weights."""
    import hydra

    from motion_relevance.classifier import VideoClassifier

    torch.manual_seed(0)
    net = hydra.utils.instantiate(spec["net"])
    classes = [f"class{i}" for i in range(spec["net"]["num_classes"])]
    module = VideoClassifier(net=net, net_config=spec["net"], preprocessing=spec["pre"], class_names=classes)
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def make_clip(path: Path, n: int = 150, size: tuple[int, int] = (240, 320)) -> Path:
    """A generated 320x240 MJPG clip (used when the shared UCF-101 clip is not there)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 29.97, (size[1], size[0]))
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    for i in range(n):
        frame = background.copy()
        frame[80:140, (i * 2) % 260 : (i * 2) % 260 + 60] = 250
        writer.write(frame)
    writer.release()
    return path


# ---------------------------------------------------------------------------------------------- decoding
def decode_incremental(path: Path) -> tuple[int, int]:
    from motion_relevance.live.source import FileSource
    from motion_relevance.live.windows import SlidingWindow, iter_windows

    with FileSource(path, resize="native") as src:
        wins = 0
        peak = 0
        for win in iter_windows(SlidingWindow(WINDOW, STRIDE), src.frames()):
            wins += 1
            peak = max(peak, win.frames.nbytes)
    return wins, peak


def decode_redecode(path: Path) -> tuple[int, int]:
    import decord

    from motion_relevance.live.windows import count_windows

    n = len(decord.VideoReader(str(path)))
    wins = count_windows(n, WINDOW, STRIDE)
    peak = 0
    for k in range(wins):
        vr = decord.VideoReader(str(path), num_threads=1)
        start = k * STRIDE
        idx = [start + (j % max(1, min(WINDOW, n - start))) for j in range(WINDOW)]
        frames = vr.get_batch(idx).asnumpy()
        peak = max(peak, frames.nbytes)
    return wins, peak


def decode_whole(path: Path) -> tuple[int, int]:
    import decord

    from motion_relevance.live.windows import count_windows

    vr = decord.VideoReader(str(path), num_threads=1)
    n = len(vr)
    video = vr.get_batch(list(range(n))).asnumpy()
    wins = count_windows(n, WINDOW, STRIDE)
    for k in range(wins):
        start = k * STRIDE
        _ = video[[start + (j % max(1, min(WINDOW, n - start))) for j in range(WINDOW)]]
    return wins, video.nbytes


def bench_decoding(path: Path, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in (("incremental (ours)", decode_incremental), ("re-decode per window", decode_redecode),
                     ("whole video first", decode_whole)):
        fn(path)  # warm-up (file cache)
        times, wins, peak = [], 0, 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            wins, peak = fn(path)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[name] = {"windows": wins, "total_ms_median": med * 1e3, "ms_per_window": med * 1e3 / wins,
                     "ms_per_window_min": min(times) * 1e3 / wins, "frames_held_mb": peak / 2**20, "n": repeats}
    return out


# ---------------------------------------------------------------------------------------------- pipeline
def bench_pipeline(path: Path, ckpt: Path, explainer: str, device: str, workdir: Path,
                   video: bool = True) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from motion_relevance.conf import CONFIG_DIR
    from motion_relevance.live.app import run

    GlobalHydra.instance().clear()
    out_dir = workdir / f"run_{explainer}_{device}_{int(time.time() * 1e3)}"
    overrides = [f"source={path}", f"ckpt_path={ckpt}", f"explainer={explainer}", "logger=none", "progress=false",
                 f"fps={SOURCE_FPS}", "policy=block", f"device={device}", f"paths.output_dir={out_dir}",
                 f"stride={STRIDE}", f"window={WINDOW}"]
    if not video:
        overrides.append("outputs.video=null")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="live", overrides=overrides)
    metrics, objects = run(cfg)
    rows = objects["rows"]
    lat = [r.latency_ms for r in rows[1:]] or [rows[0].latency_ms]  # the first window also traces the model
    return {
        "explainer": explainer, "device": device, "windows": metrics["live/windows"],
        "windows_per_s": metrics["live/windows_per_s"],
        "capacity_windows_per_s": metrics["live/capacity_windows_per_s"],
        "required_windows_per_s": metrics["live/required_windows_per_s"],
        "real_time_factor": metrics["live/real_time_factor"], "keeps_up_25fps": metrics["live/keeps_up"],
        "latency_ms_median": statistics.median(lat), "latency_ms_p95": float(np.percentile(lat, 95)),
        "first_window_ms": rows[0].latency_ms, "overlay_video": video,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the decoding comparison")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--explainers", default="dtd,gradcam")
    parser.add_argument("--full", action="store_true",
                        help="also the full C3D (101 classes, 112 px) on cpu (always on a non-CPU device)")
    parser.add_argument("--devices", "--device", dest="devices", default="cpu",
                        help="devices of the pipeline runs, e.g. cpu,cuda (run_all.py passes --device cuda)")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--name", default="bench_live", help="results/<name>.{json,md}")
    parser.add_argument("--no-save", action="store_true", help="print the tables only (a check that it runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = args.clip if args.clip.exists() else make_clip(work / "clip.avi")
        decoding = bench_decoding(clip, args.repeats)
        runs = []
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        specs = [("small C3D (x0.125, 56 px)", SMALL, d) for d in devices]
        full_on = [d for d in devices if d != "cpu"] or (devices if args.full else [])
        if full_on:
            specs += [("full C3D (101 classes, 112 px)", FULL, d) for d in full_on]
        for model_name, spec, device in specs:
            ckpt = make_checkpoint(work / f"{spec['net']['width']}.ckpt", spec)
            if device == "cuda" and not torch.cuda.is_available():
                print(f"skipping {model_name} on cuda: no GPU")
                continue
            for explainer in args.explainers.split(","):
                for video in (True, False):
                    res = bench_pipeline(clip, ckpt, explainer, device, work, video=video)
                    res["model"] = model_name
                    runs.append(res)
    load_after = os.getloadavg()
    gpu = f"; GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    dec_rows = "\n".join(
        f"| {name} | {r['windows']} | {r['ms_per_window']:.1f} | {r['ms_per_window_min']:.1f} | "
        f"{r['frames_held_mb']:.1f} |" for name, r in decoding.items()
    )
    run_rows = "\n".join(
        f"| {r['model']} | {r['device']} | {r['explainer']} | {'yes' if r['overlay_video'] else 'no'} | "
        f"{r['windows_per_s']:.2f} | {r['capacity_windows_per_s']:.2f} | {r['latency_ms_median']:.0f} | "
        f"{r['latency_ms_p95']:.0f} | {r['real_time_factor']:.2f} | {'yes' if r['keeps_up_25fps'] else 'no'} |"
        for r in runs
    )
    markdown = (
        "# Live explanations: windows/s, latency, and the frame source\n\n"
        f"Clip: `{clip.name}` ({decoding['incremental (ours)']['windows']} windows of {WINDOW} frames, stride "
        f"{STRIDE}); {args.threads} torch threads; load average before/after "
        f"{load_before[0]:.1f}/{load_after[0]:.1f}; {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPU cores "
        f"usable{gpu}. A load average above the usable cores means other jobs shared them: times are then upper "
        "bounds.\n\n"
        "## Frame source: decoding the windows (no model)\n\n"
        "| method | windows | ms/window (median) | ms/window (min) | frames held (MB) |\n|---|---|---|---|---|\n"
        f"{dec_rows}\n\n"
        f"## Pipeline (`policy=block`, source played at {SOURCE_FPS:g} fps: keeping up needs "
        f"{SOURCE_FPS / STRIDE:.3f} windows/s)\n\n"
        "windows/s = explained windows / wall time (decode + predict + explain + selective + overlay + CSV); "
        "capacity = windows / time spent on them; latency = predict + explain + selective per window (first "
        "window, which also traces the model, left out); real-time factor = capacity / needed.\n\n"
        "| model | device | explainer | overlay video | windows/s | capacity | latency ms (median) | p95 | "
        "real-time factor | keeps up |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"{run_rows}\n"
    )
    print(markdown)
    results = {"clip": str(clip), "window": WINDOW, "stride": STRIDE, "source_fps": SOURCE_FPS,
               "threads": args.threads, "loadavg_before": load_before, "loadavg_after": load_after,
               "decoding": decoding, "pipeline": runs}
    if not args.no_save:
        json_path, _ = write_results(args.name, results, markdown)
        print(f"wrote {json_path}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
