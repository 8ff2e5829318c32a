"""Selective relevance (docs/method.md, "Selective relevance"): ours vs the authors' conv3d formulation vs the floor.

For relevance ``R`` of shape ``(B, 3, 16, 112, 112)`` float32, B = 1 and 8, on the CPU with 1 and 2 torch threads
(or on CUDA with ``--device cuda``):

* ``selective``: :func:`motion_relevance.explain.selective_relevance` (sigma 4, replicate and zeros padding): tensor
  ops on CPU, one single-channel ``conv3d`` on CUDA;
* ``authors``: the authors' formulation: ``F.conv3d`` of ``R`` with the 3x3x3 Sobel kernel on all 3 input channels
  (zero padding), ``|.|``, per-clip unbiased std, threshold, ``R * mask``;
* ``floor``: one elementwise pass ``R * 1.0`` (reads and writes ``R`` once: no selective step can be cheaper).

All cases are timed in the same run, interleaved. Reports ms per clip (median, IQR, min, max over repeats), the
speed-up over the authors' formulation, the ratio to the floor, whether the masks agree, the machine's load average
before and after, and the first call in the process. Run:
``.venv/bin/python benchmarks/bench_selective.py`` → ``benchmarks/results/bench_selective.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from _common import interleaved_timings, write_results

from motion_relevance.explain.selective import selective_relevance

_B = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
SOBEL_T = torch.stack([_B, torch.zeros(3, 3), -_B])  # (3, 3, 3), index 0 = t-1


def authors_selective(relevance: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """The authors' formulation: 3-input-channel conv3d with the Sobel kernel, |.|, threshold, mask."""
    channels = relevance.shape[1]
    kernel = SOBEL_T.to(relevance).expand(1, channels, 3, 3, 3)
    g = F.conv3d(relevance, kernel, padding=1).abs()
    std = g.flatten(1).std(1).view(-1, 1, 1, 1, 1)
    return relevance * (g > sigma * std)


#: Targets on 2 CPU threads for one (1, 3, 16, 112, 112) clip at B = 1 and 8: ms per clip, speed-up over the authors.
TARGET_MS, TARGET_SPEEDUP = 1.5, 20


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def _ratio(x: float) -> str:
    """A speed-up with two significant digits below 10 (0.53 must not print as 1)."""
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def summary(seconds: list[float], batch: int) -> dict[str, float]:
    ms = sorted(s * 1e3 / batch for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 4 else [ms[0], statistics.median(ms), ms[-1]]
    return {"median_ms": statistics.median(ms), "iqr_ms": q[2] - q[0], "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--authors-repeats", type=int, default=8)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: threads list is ignored")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    load_before = os.getloadavg()
    first = torch.randn(1, 3, 16, 112, 112, device=args.device)
    start = time.perf_counter()
    selective_relevance(first, 4.0)  # the first call in this process
    first_call_ms = (time.perf_counter() - start) * 1e3
    thread_list = [int(t) for t in args.threads.split(",")]
    if args.device == "cuda":
        thread_list = thread_list[:1]

    rows, results = [], []
    for threads in thread_list:
        torch.set_num_threads(threads)
        for batch in (1, 8):
            gen = torch.Generator().manual_seed(batch)
            relevance = torch.randn(batch, 3, 16, 112, 112, generator=gen).to(args.device)
            ours = selective_relevance(relevance, 4.0, padding="zeros") != 0
            theirs = authors_selective(relevance, 4.0) != 0
            same_mask = bool(torch.equal(ours, theirs))
            agree = float((ours == theirs).float().mean())
            cases = {
                "selective (replicate)": (lambda r=relevance: selective_relevance(r, 4.0), args.repeats),
                "selective (zeros)": (lambda r=relevance: selective_relevance(r, 4.0, padding="zeros"), args.repeats),
                "authors conv3d": (lambda r=relevance: authors_selective(r, 4.0), args.authors_repeats),
                "floor R*1.0": (lambda r=relevance: r * 1.0, args.repeats),
            }
            seconds = interleaved_timings(
                {name: fn for name, (fn, _) in cases.items()},
                {name: n for name, (_, n) in cases.items()},
                device=args.device,
            )
            stats = {name: summary(seconds[name], batch) for name in cases}
            floor = stats["floor R*1.0"]["median_ms"]
            authors = stats["authors conv3d"]["median_ms"]
            for name, st in stats.items():
                st["x_floor"] = st["median_ms"] / floor
                st["speedup_vs_authors"] = authors / st["median_ms"]
                rows.append(
                    f"| {threads} | {batch} | {name} | {st['median_ms']:.3f} | {st['iqr_ms']:.3f} | {st['min_ms']:.3f} "
                    f"| {st['max_ms']:.3f} | {st['x_floor']:.1f} | {_ratio(st['speedup_vs_authors'])} |"
                )
            results.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "device": args.device,
                    "stats": stats,
                    "same_mask_as_authors": same_mask,
                    "agree": agree,
                }
            )
    header = (
        "| threads | B | method | median ms/clip | IQR | min | max | x floor | speed-up vs authors |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    checks = "\n".join(
        f"- threads={r['threads']} B={r['batch']}: zero-padding mask identical to the authors' formulation: "
        f"{r['same_mask_as_authors']} (voxel agreement {r['agree']:.6f})"
        for r in results
    )
    verdicts = []
    for r in results:
        if r["threads"] != 2 or r["device"] != "cpu":
            continue
        st, ceiling = r["stats"]["selective (replicate)"], r["stats"]["floor R*1.0"]["speedup_vs_authors"]
        verdicts.append(
            f"- 2 threads, B={r['batch']}: {st['median_ms']:.3f} ms/clip (target <= {TARGET_MS}: "
            f"{'met' if st['median_ms'] <= TARGET_MS else 'MISSED'}), {st['speedup_vs_authors']:.0f}x the authors' "
            f"formulation (target >= {TARGET_SPEEDUP}x: "
            f"{'met' if st['speedup_vs_authors'] >= TARGET_SPEEDUP else 'MISSED'}; the floor itself "
            f"is {ceiling:.0f}x, the most any implementation can reach here)"
        )
    implementation = "tensor ops" if args.device == "cpu" else "conv3d (accelerator path)"
    load_after = os.getloadavg()
    load = f"load average (1, 5, 15 min) before {_load(load_before)}, after {_load(load_after)}"
    markdown = (
        "# Selective relevance: ours vs the authors' conv3d formulation\n\n"
        f"Relevance (B, 3, 16, 112, 112) float32, sigma = 4, device {args.device}; `selective` runs the "
        f"{implementation}. `x floor` = time / time of `R * 1.0`. Cases are timed in interleaved rounds "
        "(one call each per round, shuffled), so drifts of a shared machine hit all of them alike.\n\n"
        f"{header}\n" + "\n".join(rows) + f"\n\n{checks}\n"
        f"- first call in a fresh process: {first_call_ms:.1f} ms\n"
        f"- {load} on {os.cpu_count()} CPUs (other work on the machine slows every case alike)\n"
        + ("\nTargets (2 CPU threads, `selective (replicate)`):\n" + "\n".join(verdicts) + "\n" if verdicts else "")
    )
    print(markdown)
    json_path, _ = write_results(
        "bench_selective",
        {
            "rows": results,
            "first_call_ms": first_call_ms,
            "implementation": implementation,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        markdown,
    )
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
