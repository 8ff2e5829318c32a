"""Selective relevance (SPEC §1): our separable implementation vs the authors' conv3d formulation vs the floor.

For relevance ``R`` of shape ``(B, 3, 16, 112, 112)`` float32, B = 1 and 8, on the CPU with 1 and 2 torch threads:

* ``selective``: :func:`motion_relevance.explain.selective_relevance` (sigma 4, replicate and zeros padding);
* ``authors``: the authors' formulation: ``F.conv3d`` of ``R`` with the 3x3x3 Sobel kernel on all 3 input channels
  (zero padding), ``|.|``, per-clip unbiased std, threshold, ``R * mask``;
* ``floor``: one elementwise pass ``R * 1.0`` (reads and writes ``R`` once: no selective step can be cheaper).

Reports ms per clip (median, IQR, min, max over repeats), the speed-up over the authors' formulation and the
ratio to the floor, and checks that both give the same mask. Run:
``.venv/bin/python benchmarks/bench_selective.py`` → ``benchmarks/results/bench_selective.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import write_results

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


def timings(fn: Callable[[], object], repeats: int, warmup: int = 2, device: str = "cpu") -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` calls; CUDA is synchronised before each clock read."""

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


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
    thread_list = [int(t) for t in args.threads.split(",")]
    if args.device == "cuda":
        thread_list = thread_list[:1]

    rows, results = [], []
    for threads in thread_list:
        torch.set_num_threads(threads)
        for batch in (1, 8):
            gen = torch.Generator().manual_seed(batch)
            relevance = torch.randn(batch, 3, 16, 112, 112, generator=gen).to(args.device)
            same_mask = bool(
                torch.equal(
                    (selective_relevance(relevance, 4.0, padding="zeros") != 0),
                    (authors_selective(relevance, 4.0) != 0),
                )
            )
            agree = float(
                ((selective_relevance(relevance, 4.0, padding="zeros") != 0) == (authors_selective(relevance) != 0))
                .float()
                .mean()
            )
            cases = {
                "selective (replicate)": (lambda r=relevance: selective_relevance(r, 4.0), args.repeats),
                "selective (zeros)": (lambda r=relevance: selective_relevance(r, 4.0, padding="zeros"), args.repeats),
                "authors conv3d": (lambda r=relevance: authors_selective(r, 4.0), args.authors_repeats),
                "floor R*1.0": (lambda r=relevance: r * 1.0, args.repeats),
            }
            stats = {name: summary(timings(fn, n, device=args.device), batch) for name, (fn, n) in cases.items()}
            floor = stats["floor R*1.0"]["median_ms"]
            authors = stats["authors conv3d"]["median_ms"]
            for name, st in stats.items():
                st["x_floor"] = st["median_ms"] / floor
                st["speedup_vs_authors"] = authors / st["median_ms"]
                rows.append(
                    f"| {threads} | {batch} | {name} | {st['median_ms']:.3f} | {st['iqr_ms']:.3f} | {st['min_ms']:.3f} "
                    f"| {st['max_ms']:.3f} | {st['x_floor']:.1f} | {st['speedup_vs_authors']:.0f} |"
                )
            results.append(
                {"threads": threads, "batch": batch, "device": args.device, "stats": stats,
                 "same_mask_as_authors": same_mask, "agree": agree}
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
    markdown = (
        "# Selective relevance: separable slices vs the authors' conv3d formulation\n\n"
        f"Relevance (B, 3, 16, 112, 112) float32, sigma = 4, device {args.device}. "
        "`x floor` = time / time of `R * 1.0`.\n\n"
        f"{header}\n" + "\n".join(rows) + f"\n\n{checks}\n"
    )
    print(markdown)
    json_path, _ = write_results("bench_selective", {"rows": results}, markdown)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
