"""Optical flow for motion masks: Farnebäck (authors' parameters) vs DIS on real 16x112x112 clips.

See docs/method.md, "Optical flow".

Measures, on clips decoded with decord, resized to 128x171 and centre-cropped to 112 (C3D input):
1. flow time per clip (median, IQR, min, max) for each method;
2. whether motion-selection precision (docs/method.md, "Metrics") agrees when computed with each method's
   moving mask, for three stand-in explanations (no trained explainer is needed): the signed frame difference
   (a "motion" map), the grey intensity (a "static appearance" map) and a fixed random map
   (chance); plus the IoU of the two masks;
3. the flow cache: cold (compute + write) vs warm (read + threshold) cost per clip, and entry size.

Run: ``.venv/bin/python benchmarks/bench_flow.py`` → ``benchmarks/results/bench_flow.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import decord
import numpy as np
import torch
from _common import shared_data, write_results

from motion_relevance.metrics import FlowEstimator, agreement, compute_flow, motion_precision, moving_mask

DATA = shared_data()
VIDEOS = [
    DATA / "videos/arm_wrestling.mp4",
    DATA / "videos/flipping_a_pancake.mkv",
    DATA / "ucf101_mini/UCF-101/Basketball/v_Basketball_g01_c01.avi",
    DATA / "ucf101_mini/UCF-101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi",
    DATA / "ucf101_mini/UCF-101/SoccerJuggling/v_SoccerJuggling_g24_c01.avi",
]
METHODS = {
    "farneback": ("farneback", {}),
    "dis_fast": ("dis", {"preset": "fast"}),
    "dis_medium": ("dis", {"preset": "medium"}),
}


def load_clips(clips_per_video: int, clip_len: int = 16) -> list[tuple[str, np.ndarray]]:
    """(key, uint8 RGB (16, 112, 112, 3)) clips at evenly spaced starts: resize 128x171, centre crop 112."""
    out = []
    for path in VIDEOS:
        vr = decord.VideoReader(str(path), num_threads=1)
        n = len(vr)
        for start in np.linspace(0, n - clip_len, clips_per_video).astype(int):
            frames = vr.get_batch(list(range(start, start + clip_len))).asnumpy()
            frames = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_AREA) for f in frames])
            y, x = (128 - 112) // 2, (171 - 112) // 2
            out.append((f"{path.name}|{start}|centre", np.ascontiguousarray(frames[:, y : y + 112, x : x + 112])))
    return out


def explanations(frames: np.ndarray) -> dict[str, torch.Tensor]:
    """Stand-in explanations (1, 1, T, H, W): signed frame difference, grey intensity, fixed random."""
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)
    diff = np.zeros_like(grey)
    diff[:-1] = np.abs(grey[1:] - grey[:-1])
    diff -= diff.mean(axis=(1, 2), keepdims=True)  # above-average change is positive relevance
    static = grey - grey.mean(axis=(1, 2), keepdims=True)  # bright regions: appearance, not motion
    rand = np.random.default_rng(0).standard_normal(grey.shape).astype(np.float32)
    return {
        k: torch.from_numpy(v)[None, None] for k, v in {"frame_diff": diff, "static": static, "random": rand}.items()
    }


def summary(xs: list[float]) -> dict[str, float]:
    q = np.percentile(xs, [25, 50, 75])
    return {
        "median": float(q[1]),
        "iqr": float(q[2] - q[0]),
        "min": float(min(xs)),
        "max": float(max(xs)),
        "n": len(xs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips-per-video", type=int, default=3)
    args = ap.parse_args()
    clips = load_clips(args.clips_per_video)

    # 1. timing (one warm-up call per method first)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    flows: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for name, (method, params) in METHODS.items():
        compute_flow(clips[0][1], method, **params)
        for _, frames in clips:
            t0 = time.perf_counter()
            flows[name].append(compute_flow(frames, method, **params))
            times[name].append((time.perf_counter() - t0) * 1e3)

    # 2. agreement of precision between methods
    prec: dict[str, dict[str, list[float]]] = {}
    mask_iou: dict[str, list[float]] = {m: [] for m in METHODS if m != "farneback"}
    moving_frac: dict[str, list[float]] = {m: [] for m in METHODS}
    for i, (_, frames) in enumerate(clips):
        masks = {m: moving_mask(flows[m][i]) for m in METHODS}
        for m, (mv, _) in masks.items():
            moving_frac[m].append(float(mv[:-1].mean()))
        ref = torch.from_numpy(masks["farneback"][0])[None, None].float()
        for m in mask_iou:
            mask_iou[m].append(agreement(ref, torch.from_numpy(masks[m][0])[None, None].float())[0].item())
        for ex_name, rel in explanations(frames).items():
            for m, (mv, valid) in masks.items():
                p, _ = motion_precision(rel, torch.from_numpy(mv)[None], torch.from_numpy(valid)[None])
                prec.setdefault(ex_name, {}).setdefault(m, []).append(p.item())
    precision_summary = {}
    for ex_name, per_method in prec.items():
        fb = np.array(per_method["farneback"])
        precision_summary[ex_name] = {
            m: {
                "mean": float(np.mean(v)),
                "std": float(np.std(v, ddof=1)),
                "mean_abs_diff_vs_farneback": float(np.mean(np.abs(np.array(v) - fb))),
                "pearson_vs_farneback": float(np.corrcoef(v, fb)[0, 1]) if m != "farneback" else 1.0,
            }
            for m, v in per_method.items()
        }

    # 3. cache cold vs warm (Farnebäck), per clip
    cache: dict[str, list[float]] = {"no_cache": [], "cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        est_none, est = FlowEstimator(), FlowEstimator(cache_dir=tmp)
        for key, frames in clips:
            batch = frames[None]
            for label in ("no_cache", "cold", "warm"):
                t0 = time.perf_counter()
                if label == "no_cache":
                    est_none(batch)
                else:
                    est(batch, [key])  # first call misses (compute + write), second hits (read)
                cache[label].append((time.perf_counter() - t0) * 1e3)
        entry_kb = statistics.mean(p.stat().st_size for p in Path(tmp).glob("*.npz")) / 1024
        info = est.cache_info()

    results = {
        "clips": len(clips),
        "clip_shape": list(clips[0][1].shape),
        "cv2_threads": cv2.getNumThreads(),
        "flow_ms_per_clip": {m: summary(v) for m, v in times.items()},
        "moving_fraction": {m: float(np.mean(v)) for m, v in moving_frac.items()},
        "mask_iou_vs_farneback": {m: {"mean": float(np.mean(v)), "min": float(np.min(v))} for m, v in mask_iou.items()},
        "precision": precision_summary,
        "cache_ms_per_clip": {k: summary(v) for k, v in cache.items()},
        "cache_entry_kb": entry_kb,
        "cache_counters": info,
    }
    write_results("bench_flow", results, to_markdown(results))
    print(to_markdown(results))


def to_markdown(r: dict) -> str:
    lines = [
        "# Optical flow: Farnebäck vs DIS (bench_flow.py)",
        "",
        f"{r['clips']} real clips of shape {r['clip_shape']} (5 videos, decord, resize 128x171, centre crop 112); "
        f"OpenCV threads {r['cv2_threads']}. Machine: see bench_flow.json.",
        "",
        "## Flow time per clip (ms)",
        "| method | median | IQR | min | max |",
        "|---|---|---|---|---|",
    ]
    for m, s in r["flow_ms_per_clip"].items():
        lines.append(f"| {m} | {s['median']:.1f} | {s['iqr']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    lines += ["", "## Moving mask (std threshold)", "| method | moving fraction | mask IoU vs Farnebäck (mean / min) |"]
    lines.append("|---|---|---|")
    for m, frac in r["moving_fraction"].items():
        iou = r["mask_iou_vs_farneback"].get(m)
        iou_txt = "—" if iou is None else f"{iou['mean']:.3f} / {iou['min']:.3f}"
        lines.append(f"| {m} | {frac:.3f} | {iou_txt} |")
    lines += [
        "",
        "## Motion-selection precision with each flow (mean ± std over clips)",
        "Stand-in explanations: frame_diff = |grey[t+1]-grey[t]| minus its frame mean; static = grey minus its frame "
        "mean; random = fixed N(0,1).",
        "",
        "| explanation | method | precision | mean abs diff vs Farnebäck | Pearson r vs Farnebäck |",
        "|---|---|---|---|---|",
    ]
    for ex, per in r["precision"].items():
        for m, s in per.items():
            lines.append(
                f"| {ex} | {m} | {s['mean']:.3f} ± {s['std']:.3f} | {s['mean_abs_diff_vs_farneback']:.3f} | "
                f"{s['pearson_vs_farneback']:.3f} |"
            )
    lines += [
        "",
        "## Flow cache (Farnebäck, per clip, ms)",
        "| path | median | IQR | min | max |",
        "|---|---|---|---|---|",
    ]
    for k, s in r["cache_ms_per_clip"].items():
        lines.append(f"| {k} | {s['median']:.2f} | {s['iqr']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    lines += [
        "",
        f"Cache entry: {r['cache_entry_kb']:.0f} KiB per clip (float16 magnitudes, npz compressed); "
        f"counters {r['cache_counters']}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
