"""Shared helpers for benchmarks: machine description, result writing (JSON + markdown), interleaved timing."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


# MR_BENCH_RESULTS_DIR redirects every benchmark's output (run_all.py --quick, gpu_check.sh use it).
def shared_data() -> Path:
    """The team's real clips: $MR_SHARED_DATA, else ../shared/data beside the checkout."""
    root = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("MR_SHARED_DATA"), root.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return root.parent / "shared" / "data"


RESULTS_DIR = Path(os.environ.get("MR_BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, and versions of the libraries the benchmarks measure."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for mod in ("torch", "cv2", "numpy", "torchmetrics", "decord"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # a missing library is reported, not fatal
            info[mod] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    return info


def write_results(name: str, results: dict[str, Any], markdown: str | None = None) -> tuple[Path, Path | None]:
    """Write ``results/<name>.json`` (with machine info) and, if given, ``results/<name>.md``; return the paths."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "machine": machine_info(), "results": results}
    json_path = RESULTS_DIR / f"{name}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, json_path)
    md_path = None
    if markdown is not None:
        md_path = RESULTS_DIR / f"{name}.md"
        md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def interleaved_timings(
    cases: dict[str, Callable[[], object]], repeats: dict[str, int], warmup: int = 2, device: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per call of each case, timed in rounds of one call per case in a shuffled order (so no case always
    runs right after another that warmed or flushed the caches for it); a case drops out after its repeats."""

    def sync() -> None:
        if device == "cuda":
            import torch

            torch.cuda.synchronize()

    for fn in cases.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    shuffle = random.Random(0).shuffle
    for round_ in range(max(repeats.values())):
        shuffle(order)
        for name in order:
            fn = cases[name]
            if round_ >= repeats[name]:
                continue
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - start)
    return out


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or ``None`` where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark (``VmHWM``) to the current RSS; False where the kernel does not allow
    it (then no peak can be measured)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = status_kib("VmHWM"), status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024
