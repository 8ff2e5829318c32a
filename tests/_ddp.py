"""Shared harness of the DDP tests: N gloo processes on disjoint clips vs one process on all of them."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: (make_data, make_metrics, run_metrics): module-level functions of the test (they travel to the workers by name).
Harness = tuple[Callable[[], dict], Callable[..., dict], Callable[[dict, dict, torch.Tensor], dict]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close(a: float, b: float) -> bool:
    """Equal to float rounding (both NaN counts as equal)."""
    return (a != a and b != b) or abs(a - b) <= 1e-9 * max(1.0, abs(b))


def _worker(rank: int, port: int, out_dir: str, world: int, clips: int, harness: Harness) -> None:
    make_data, make_metrics, run_metrics = harness
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        d = make_data()
        part = torch.arange(clips).tensor_split(world)[rank]  # e.g. 17 and 16 clips: disjoint, nothing padded
        distributed = run_metrics(make_metrics(), d, part)
        single = run_metrics(make_metrics(sync_on_compute=False), d, torch.arange(clips))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"ddp": distributed, "single": single}))
    finally:
        dist.destroy_process_group()


def run_ddp(out_dir: Path, world: int, clips: int, harness: Harness) -> list[dict[str, Any]]:
    """Each rank's ``{"ddp": metrics over its share of the clips, synced; "single": metrics over all clips}``."""
    mp.spawn(_worker, args=(free_port(), str(out_dir), world, clips, harness), nprocs=world, join=True)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]
