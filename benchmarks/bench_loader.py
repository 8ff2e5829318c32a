"""Clip-loader throughput: our decord loader against OpenCV VideoCapture doing the same work.

Work per clip: decode 16 frames, resize to 128x171, centre crop 112, normalise to float (3, 16, 112, 112).
Access patterns: ``all`` = every non-overlapping clip of each video in order (evaluation); ``random`` = one
random 16-frame window per video (training epoch). Loaders run single-process and with 2 DataLoader workers.
Also times building the video index (per 100 videos). Writes results/bench_loader.{json,md}.

    .venv/bin/python benchmarks/bench_loader.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import shared_data, write_results  # noqa: E402

from motion_relevance.data import (  # noqa: E402
    ClipTransform,
    MotionShapesConfig,
    VideoClipDataset,
    VideoIndex,
    VideoItem,
    collate_skipping,
    generate_motion_shapes,
)
from motion_relevance.data.sampling import clip_indices  # noqa: E402

DATA = shared_data()
VIDEOS = [
    "ucf101_mini/UCF-101/Basketball/v_Basketball_g01_c01.avi",
    "ucf101_mini/UCF-101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi",
    "ucf101_mini/UCF-101/SoccerJuggling/v_SoccerJuggling_g24_c01.avi",
    "videos/arm_wrestling.mp4",
    "videos/flipping_a_pancake.mkv",
]
RESIZE, CROP, CLIP = (128, 171), 112, 16


class OpenCVClips(Dataset):
    """Baseline: per clip, a fresh ``cv2.VideoCapture``, seek, read, resize, crop, normalise."""

    def __init__(self, samples: list[tuple[str, int]], num_frames: dict[str, int]) -> None:
        self.samples, self.num_frames = samples, num_frames
        self.tf = ClipTransform(CROP)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rel, start = self.samples[i]
        n = self.num_frames[rel]
        if start < 0:
            start = int(torch.randint(0, max(1, n - CLIP + 1), ()))
        cap = cv2.VideoCapture(str(DATA / rel))
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        for _ in range(CLIP):
            ok, f = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(cv2.resize(f, (RESIZE[1], RESIZE[0])), cv2.COLOR_BGR2RGB))
        cap.release()
        frames += frames[: CLIP - len(frames)]
        clip, _ = self.tf(np.stack(frames))
        return {"clip": clip, "start": torch.tensor(start)}


class NaiveDecordClips(OpenCVClips):
    """Reference: a fresh decord ``VideoReader`` + ``get_batch`` per clip (what the brief measured)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        import decord

        rel, start = self.samples[i]
        n = self.num_frames[rel]
        if start < 0:
            start = int(torch.randint(0, max(1, n - CLIP + 1), ()))
        vr = decord.VideoReader(str(DATA / rel), num_threads=1, height=RESIZE[0], width=RESIZE[1])
        frames = vr.get_batch(clip_indices(start, n, CLIP).tolist()).asnumpy()
        clip, _ = self.tf(frames)
        return {"clip": clip, "start": torch.tensor(start)}


def opencv_sequential(rounds: int) -> float:
    """Strongest single-process OpenCV 'all' baseline: one sequential pass per video; returns clips/s."""
    tf = ClipTransform(CROP)
    n_clips, t0 = 0, time.perf_counter()
    for _ in range(rounds):
        for rel in VIDEOS:
            cap = cv2.VideoCapture(str(DATA / rel))
            buf = []
            while True:
                ok, f = cap.read()
                if not ok:
                    break
                buf.append(cv2.cvtColor(cv2.resize(f, (RESIZE[1], RESIZE[0])), cv2.COLOR_BGR2RGB))
                if len(buf) == CLIP:
                    tf(np.stack(buf))
                    n_clips += 1
                    buf = []
            cap.release()
    return n_clips / (time.perf_counter() - t0)


def timed(ds: Dataset, workers: int, epochs: int) -> float:
    """clips/s over ``epochs`` passes (after one warm-up pass with persistent workers)."""
    loader = DataLoader(ds, batch_size=8, num_workers=workers, persistent_workers=workers > 0,
                        collate_fn=collate_skipping)
    for _ in loader:  # warm-up: worker start, first opens
        break
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            n += len(b["clip"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="passes over the videos per measurement")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(900, exit=True)  # never hang silently
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cache = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    # index build time: real videos (probed without cache, repeated) and the generated set
    t0 = time.perf_counter()
    reps = 4
    for _ in range(reps):
        index = VideoIndex.build(DATA, VIDEOS, None, num_threads=2, progress=False)
    index_real = (time.perf_counter() - t0) / (reps * len(VIDEOS)) * 100
    ms = generate_motion_shapes(cache / "ms", MotionShapesConfig()).root
    rels = [str(p.relative_to(ms)) for p in sorted(ms.glob("UCF-101/*/*.avi"))]
    t0 = time.perf_counter()
    VideoIndex.build(ms, rels, cache / "ix", num_threads=2, progress=False)
    index_synth = (time.perf_counter() - t0) / len(rels) * 100
    frames = {rel: index[rel].num_frames for rel in VIDEOS}

    items = [VideoItem(rel, 0, "g01") for rel in VIDEOS]
    results: dict[str, Any] = {
        "videos": {rel: frames[rel] for rel in VIDEOS},
        "index_build_s_per_100_videos": {
            "real_320x240": round(index_real, 3),
            "motion_shapes_64x64": round(index_synth, 3),
        },
        "clips_per_s": {},
    }
    tf = ClipTransform(CROP)
    for pattern in ("all", "random"):
        rounds = args.rounds if pattern == "all" else 10 * args.rounds
        if pattern == "all":
            ds_ours = {d: VideoClipDataset(DATA, items, index, sampling="all", transform=tf, decoder=d, resize=RESIZE)
                       for d in ("decord", "opencv")}
            samples = [(vi, s) for vi, s in ds_ours["decord"].samples]
            base_samples = [(VIDEOS[vi], s) for vi, s in samples]
        else:
            many = items * 10
            ds_ours = {d: VideoClipDataset(DATA, many, index, sampling="random", transform=tf, decoder=d,
                                           resize=RESIZE) for d in ("decord", "opencv")}
            base_samples = [(it.path, -1) for it in many]
        epochs = max(1, rounds if pattern == "all" else args.rounds)
        row: dict[str, float] = {}
        for workers in (0, 2):
            row[f"ours_decord_w{workers}"] = timed(ds_ours["decord"], workers, epochs)
            row[f"ours_opencv_w{workers}"] = timed(ds_ours["opencv"], workers, epochs)
            row[f"opencv_per_clip_w{workers}"] = timed(OpenCVClips(base_samples, frames), workers, epochs)
            row[f"naive_decord_w{workers}"] = timed(NaiveDecordClips(base_samples, frames), workers, epochs)
        if pattern == "all":
            row["opencv_sequential_w0"] = opencv_sequential(epochs)
        results["clips_per_s"][pattern] = {k: round(v, 1) for k, v in row.items()}
        print(pattern, results["clips_per_s"][pattern], flush=True)
    print("index s/100 videos", results["index_build_s_per_100_videos"])

    md = ["# Clip loader throughput (clips/s; decode + resize 128x171 + crop 112 + normalise, 16 frames)", "",
          f"Videos: {', '.join(f'{Path(r).name} ({n} fr)' for r, n in frames.items())}.", "",
          "| loader | all, 1 proc | all, 2 workers | random, 1 proc | random, 2 workers |", "|---|---|---|---|---|"]
    cp = results["clips_per_s"]
    for name in ("ours_decord", "ours_opencv", "opencv_per_clip", "naive_decord"):
        md.append(f"| {name} | {cp['all'][name + '_w0']} | {cp['all'][name + '_w2']} | "
                  f"{cp['random'][name + '_w0']} | {cp['random'][name + '_w2']} |")
    md.append(f"| opencv_sequential (one pass per video) | {cp['all']['opencv_sequential_w0']} | | | |")
    ix = results["index_build_s_per_100_videos"]
    md += ["", f"Index build: {ix['real_320x240']} s per 100 real 320x240 videos, {ix['motion_shapes_64x64']} s per "
           "100 generated 64x64 videos (2 threads, no cache; cached rebuilds only stat the files).",
           "", "ours_* = VideoClipDataset (reader LRU, whole video decoded once when it has several clips); "
           "opencv_per_clip = fresh VideoCapture + seek per clip; "
           "naive_decord = fresh VideoReader + get_batch per clip."]
    j, m = write_results("bench_loader", results, "\n".join(md))
    print("wrote", j, m)


if __name__ == "__main__":
    main()
