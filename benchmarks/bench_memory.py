"""Peak memory of explaining ONE full-C3D clip with each method, against the forward pass alone (the floor).

Each measurement runs in a fresh subprocess (``--child METHOD``) so that no allocator cache or earlier peak
leaks between methods. The child imports everything, builds ``C3D(num_classes=101)`` and the clip
``(1, 3, 16, 112, 112)`` (and, for ``selective``, a relevance tensor of the same shape), then:

* CPU: resets the resident-set high-water mark (writes ``5`` to ``/proc/self/clear_refs``), runs the method once
  and reports ``VmHWM - VmRSS(before)`` from ``/proc/self/status`` (fallback where the reset is unavailable:
  ``ru_maxrss`` from ``resource.getrusage`` minus the RSS before, an upper bound);
* CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated - memory_allocated(before)``.

Methods: ``forward`` (inference, no grad: the floor), ``forward_backward`` (one gradient pass, what Grad-CAM and
GBP need at least), ``dtd``, ``gradcam``, ``gbp``, ``guided_gradcam``, ``selective`` (the selective step alone,
sigma 4, on a relevance tensor). Run: ``.venv/bin/python benchmarks/bench_memory.py [--device cuda]``
→ ``benchmarks/results/bench_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from typing import Any

from _common import reset_peak_rss, status_kib, write_results

METHODS = ("forward", "forward_backward", "dtd", "gradcam", "gbp", "guided_gradcam", "selective")
MiB = 2**20


def child(method: str, device_name: str, threads: int) -> dict[str, Any]:
    """Measure one method in this (fresh) process; return the numbers in bytes."""
    import torch

    from motion_relevance.explain import DeepTaylor, GradCAM, GuidedBackprop, GuidedGradCAM
    from motion_relevance.explain.selective import selective_relevance
    from motion_relevance.models import C3D

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = C3D(num_classes=101).to(device)
    clip = (torch.rand(1, 3, 16, 112, 112) * 4 - 2).to(device)
    relevance = torch.randn(1, 3, 16, 112, 112).to(device)
    explainers = {
        "dtd": lambda: DeepTaylor(lower=-2.0, upper=2.0),
        "gradcam": lambda: GradCAM(layer="conv5b"),
        "gbp": lambda: GuidedBackprop(),
        "guided_gradcam": lambda: GuidedGradCAM(layer="conv5b"),
    }

    def run() -> None:
        if method == "forward":
            with torch.no_grad():
                model.eval()(clip)
        elif method == "forward_backward":
            x = clip.clone().requires_grad_(True)
            model.eval()(x)[0, 0].backward()
        elif method == "selective":
            selective_relevance(relevance, 4.0)
        else:
            explainers[method]()(model, clip)

    params = sum(p.numel() * p.element_size() for p in model.parameters())
    out: dict[str, Any] = {"method": method, "device": device_name, "params_bytes": params}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        out.update(peak_increase_bytes=torch.cuda.max_memory_allocated() - before, how="cuda max_memory_allocated")
        return out
    rss_before = (status_kib("VmRSS") or 0) * 1024
    if reset_peak_rss():
        run()
        out.update(peak_increase_bytes=(status_kib("VmHWM") or 0) * 1024 - rss_before, how="VmHWM after clear_refs")
    else:
        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out.update(peak_increase_bytes=peak - rss_before, how="ru_maxrss - RSS before (upper bound)")
    out["rss_before_bytes"] = rss_before
    return out


def measure(method: str, device: str, threads: int, timeout: float) -> dict[str, Any]:
    """Run ``child`` for ``method`` in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--child", method, "--device", device, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{method} child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def to_markdown(rows: list[dict], meta: dict) -> str:
    """Peak increase per method beside the forward-only floor, with the ratio."""
    floor = next((r["peak_mib"] for r in rows if r["method"] == "forward"), None)
    lines = [
        f"# Peak memory of explaining one full-C3D clip (1x3x16x112x112), device {meta['device']}",
        "",
        f"Peak increase over the state after building model + input, fresh process per method, median of "
        f"{meta['repeats']} run(s); measured by {meta['how']}. Model parameters: {meta['params_mib']:.0f} MiB. "
        "Floor = the forward pass alone (no grad).",
        "",
        "| method | peak increase MiB | forward-only floor MiB | x floor |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['peak_mib'] / floor:.1f}" if floor else "–"
        floor_txt = "–" if floor is None else f"{floor:.1f}"
        lines.append(f"| {r['method']} | {r['peak_mib']:.1f} | {floor_txt} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parent: one subprocess per method and repeat; write results/bench_memory.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per method (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.device, args.threads)))
        return
    rows = []
    for method in args.methods.split(","):
        runs = [measure(method, args.device, args.threads, args.timeout) for _ in range(args.repeats)]
        peaks = [r["peak_increase_bytes"] / MiB for r in runs]
        row = {**runs[0], "peak_mib": statistics.median(peaks), "peak_mib_runs": peaks}
        rows.append(row)
        print(f"{method}: {row['peak_mib']:.1f} MiB ({row['how']})", flush=True)
    meta = {
        "device": args.device,
        "repeats": args.repeats,
        "how": ", ".join(sorted({r["how"] for r in rows})),
        "params_mib": rows[0]["params_bytes"] / MiB,
        "threads": args.threads,
    }
    floor = next((r["peak_mib"] for r in rows if r["method"] == "forward"), None)
    for r in rows:
        r["x_floor"] = r["peak_mib"] / floor if floor else None
    markdown = to_markdown(rows, meta)
    print(markdown)
    json_path, _ = write_results("bench_memory", {"meta": meta, "rows": rows}, markdown)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
