"""Training throughput (clips/s) and the share of step time spent waiting for data, small and full C3D.

A plain training loop (``next(batch)``, forward, cross-entropy, backward, SGD step) timed in two parts per step:
the data wait (``next`` on the DataLoader iterator) and the compute (the rest, device synchronised). For each
model the loader runs with the default workers (2) and with the alternative ``num_workers=0`` (loading in the
training process); the compute-only rate (clips / compute time) is the floor no loader can beat.

* small: ``C3D(8, width=0.125)`` on the default ``motion_shapes`` set (``data/motion_shapes.yaml``: 64x64 frames,
  random 56 px crop, batch 16, masks loaded), generated once into ``$TMPDIR/motion_relevance_bench``;
* full: ``C3D(101)`` on 112 px clips: real videos from ``shared_data()`` (decord, resize 128x171, random crop
  112) when present, else ``motion_shapes`` generated at 128x171 (``--full-data shapes``); batch 8 on CPU.

Target: data wait under 10 % of step time with the default workers. Warm-up steps (worker start-up, first
allocations) are excluded. Run: ``.venv/bin/python benchmarks/bench_training.py [--device cuda]``
→ ``benchmarks/results/bench_training.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import shared_data, write_results  # noqa: E402

from motion_relevance.models import C3D  # noqa: E402

# The data stack (decord, OpenCV, Lightning) is imported where needed, so that ``--only full --full-data tensor``
# runs where only torch is installed (a bare GPU machine).

DATA = shared_data()
REAL_VIDEOS = [
    "ucf101_mini/UCF-101/Basketball/v_Basketball_g01_c01.avi",
    "ucf101_mini/UCF-101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi",
    "ucf101_mini/UCF-101/SoccerJuggling/v_SoccerJuggling_g24_c01.avi",
    "videos/arm_wrestling.mp4",
    "videos/flipping_a_pancake.mkv",
]
CACHE = Path(tempfile.gettempdir()) / "motion_relevance_bench"
TARGET_WAIT = 0.10


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader: Iterable) -> Iterator:
    """Batches from ``loader`` epoch after epoch (epoch starts count as data wait, as in training)."""
    while True:
        yield from loader


class RandomClips(Dataset):
    """Synthetic tensors: ``n`` random clips ``(3, 16, 112, 112)`` made on the fly (no decoding)."""

    def __init__(self, n: int = 64, classes: int = 101) -> None:
        self.n, self.classes = n, classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(i)
        return {
            "clip": torch.randn(3, 16, 112, 112, generator=gen),
            "label": torch.randint(0, self.classes, (), generator=gen),
        }


def shapes_loader(root: str, workers: int, batch: int, **options: Any) -> tuple[DataLoader, int]:
    """A motion_shapes training loader (``data/motion_shapes.yaml`` defaults plus ``options``), its classes."""
    from motion_relevance.datamodules import MotionShapesDataModule

    dm = MotionShapesDataModule(
        CACHE / root,
        batch_size=batch,
        num_workers=workers,
        persistent_workers=True,
        masks=True,
        cache_dir=CACHE / "index",
        index_threads=2,
        **options,
    )
    dm.setup("fit")
    return dm.train_dataloader(), dm.num_classes


def small_loader(workers: int, batch: int) -> tuple[DataLoader, int]:
    """The default motion_shapes training loader with ``workers``; 8 classes."""
    return shapes_loader("motion_shapes", workers, batch)


def full_loader(workers: int, batch: int, data: str) -> tuple[DataLoader, int]:
    """112 px training clips: real videos (resize 128x171, random crop 112), motion_shapes at 128x171 or tensors."""
    if data == "tensor":
        return DataLoader(
            RandomClips(), batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0
        ), 101
    from motion_relevance.data import (
        ClipTransform,
        MotionShapesConfig,
        VideoClipDataset,
        VideoIndex,
        VideoItem,
        collate_skipping,
    )
    if data == "shapes":
        gen = MotionShapesConfig(frame_size=(128, 171), videos_per_class=16, num_groups=8, test_groups=2)
        loader, _ = shapes_loader("motion_shapes_128x171", workers, batch, generator=gen, crop_size=112)
        return loader, 101  # the full C3D keeps its 101 outputs (throughput only)
    index = VideoIndex.build(DATA, REAL_VIDEOS, None, num_threads=2, progress=False)
    items = [VideoItem(rel, i, "g01") for i, rel in enumerate(REAL_VIDEOS)] * 8  # 40 random windows per epoch
    ds = VideoClipDataset(
        DATA,
        items,
        index,
        sampling="random",
        transform=ClipTransform(112, train=True),
        resize=(128, 171),
    )
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=functools.partial(collate_skipping, dataset=ds),
    )
    return loader, 101


def train_steps(model: nn.Module, loader: DataLoader, steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    """Run ``warmup + steps`` SGD steps; per timed step the data wait and the compute time (seconds)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    batches = forever(loader)
    waits, computes, clips = [], [], 0
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        x, y = batch["clip"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
            clips += len(y)
    total = sum(waits) + sum(computes)
    return {
        "steps": steps,
        "clips": clips,
        "clips_per_s": clips / total,
        "compute_only_clips_per_s": clips / sum(computes),
        "data_wait_share": sum(waits) / total,
        "wait_ms_median": statistics.median(waits) * 1e3,
        "wait_ms_max": max(waits) * 1e3,
        "step_ms_median": statistics.median(w + c for w, c in zip(waits, computes, strict=True)) * 1e3,
    }


def bench(
    label: str,
    make_model: Any,
    make_loader: Any,
    workers_list: list[int],
    args: argparse.Namespace,
    steps: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """One model with each worker count: a fresh model (same seed) and loader per run."""
    rows = []
    for workers in workers_list:
        loader, classes = make_loader(workers)
        torch.manual_seed(0)
        model = make_model(classes).to(device)
        t0 = time.perf_counter()
        r = train_steps(model, loader, steps, args.warmup, device)
        r.update({"model": label, "num_workers": workers, "batch": loader.batch_size})
        rows.append(r)
        print(
            f"{label} workers={workers}: {r['clips_per_s']:.1f} clips/s, data wait {100 * r['data_wait_share']:.1f} %"
            f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        del loader  # ends persistent workers before the next configuration
    return rows


def to_markdown(rows: list[dict], meta: dict) -> str:
    """Rows with the default workers beside the num_workers=0 alternative and the ratios."""
    lines = [
        f"# Training throughput, device {meta['device']} ({meta['torch_threads']} torch threads)",
        "",
        "Plain loop: next(batch) | forward, CE loss, backward, SGD step (synchronised). `wait %` = data wait / step "
        f"time (target < {100 * TARGET_WAIT:.0f} % with the default 2 workers); `compute-only` = clips / compute "
        "time (the floor: no data loading). Warm-up steps excluded.",
        "",
        "| model | data | B | steps | clips/s (2 workers) | wait % (2 workers) | clips/s (0 workers) | wait % "
        "(0 workers) | 2 vs 0 workers | compute-only clips/s | 2 workers / compute-only | target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        by_w = {r["num_workers"]: r for r in rows if r["model"] == model}
        d, z = by_w.get(2), by_w.get(0)
        ref = d or z
        assert ref is not None
        cells = [model, meta["data"][model], str(ref["batch"]), str(ref["steps"])]
        for r in (d, z):
            cells += [f"{r['clips_per_s']:.1f}", f"{100 * r['data_wait_share']:.1f}"] if r else ["–", "–"]
        cells.append(f"{d['clips_per_s'] / z['clips_per_s']:.2f}x" if d and z else "–")
        floor = max(r["compute_only_clips_per_s"] for r in by_w.values())
        cells += [f"{floor:.1f}", f"{d['clips_per_s'] / floor:.2f}" if d else "–"]
        cells.append(("yes" if d["data_wait_share"] < TARGET_WAIT else "no") if d else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, measure the small and full C3D, write results/bench_training.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--only", choices=("small", "full"), default=None)
    ap.add_argument("--small-steps", type=int, default=30)
    ap.add_argument("--small-batch", type=int, default=16, help="16 = motion_relevance/conf/data/motion_shapes.yaml")
    ap.add_argument("--full-steps", type=int, default=4)
    ap.add_argument("--full-batch", type=int, default=8)
    ap.add_argument(
        "--full-data",
        choices=("auto", "real", "shapes", "tensor"),
        default="auto",
        help="auto = real videos when $MR_SHARED_DATA or ../shared/data exists, else motion_shapes at 128x171; "
        "tensor = random tensors made in the workers (no decoding)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per run (worker start-up)")
    ap.add_argument("--workers", default="2,0", help="worker counts to compare (2 = the default)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",")]
    full_data = args.full_data
    if full_data == "auto":
        full_data = "real" if all((DATA / v).exists() for v in REAL_VIDEOS) else "shapes"
    rows: list[dict] = []
    if args.only in (None, "small"):
        rows += bench(
            "small C3D (x0.125, 56 px)",
            lambda k: C3D(num_classes=k, width=0.125, crop_size=56),
            lambda w: small_loader(w, args.small_batch),
            workers,
            args,
            args.small_steps,
            device,
        )
    if args.only in (None, "full"):
        rows += bench(
            "full C3D(101), 112 px",
            lambda k: C3D(num_classes=k),
            lambda w: full_loader(w, args.full_batch, full_data),
            workers,
            args,
            args.full_steps,
            device,
        )
    meta = {
        "device": args.device if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})",
        "torch_threads": args.threads,
        "target_wait_share": TARGET_WAIT,
        "data": {
            "small C3D (x0.125, 56 px)": "motion_shapes 64x64",
            "full C3D(101), 112 px": {
                "real": "real videos 128x171",
                "shapes": "motion_shapes 128x171",
                "tensor": "random tensors",
            }[full_data],
        },
    }
    markdown = to_markdown(rows, meta)
    print(markdown)
    json_path, _ = write_results("bench_training", {"meta": meta, "rows": rows}, markdown)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
