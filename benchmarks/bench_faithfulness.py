"""Faithfulness curves: the cost of a deletion curve against the plain forward passes it needs.

A deletion curve with ``K`` steps scores ``K + 1`` inputs per clip; the floor is ``K + 1`` plain forward passes of
the same batch (no perturbation, no sorting). For the small C3D (``C3D(num_classes=8, width=0.125, crop_size=56)``,
clips ``(B, 3, 16, 56, 56)``) and, with ``--full``, the published-size C3D at 112, on the CPU or a GPU:

* ``deletion (freeze|mean|blur)``: :func:`motion_relevance.metrics.faithfulness.deletion_curve`, ``batch_size = B``;
* ``insertion (freeze)`` and ``random floor (freeze)``: the same with ``insertion=True`` / :func:`random_curve`;
* ``matched-budget drops``: :func:`matched_budget_drops` (4 forward passes per clip) against 4 plain passes;
* ``motion reliance``: :func:`motion_reliance` (4 passes: clean, freeze, static-removed, mean) against 4 plain passes;
* ``plain xN``: ``N`` forward passes of the batch under ``torch.no_grad()``;
* ``overhead only``: the deletion curve with a model that returns constant logits: the cost of ordering the voxels
  and building the perturbed inputs, without the network.

Reports ms per clip (median, IQR, min, max over interleaved repeats) and the ratio to the matching plain passes
(target <= 1.2 for the deletion curve). Run:
``.venv/bin/python benchmarks/bench_faithfulness.py [--full]`` → ``benchmarks/results/bench_faithfulness.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from _common import interleaved_timings, write_results

from motion_relevance.explain.selective import selective_relevance
from motion_relevance.metrics.faithfulness import deletion_curve, matched_budget_drops, motion_reliance, random_curve
from motion_relevance.models import C3D


def summary(seconds: list[float], batch: int) -> dict[str, float]:
    ms = sorted(s * 1e3 / batch for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 4 else [ms[0], statistics.median(ms), ms[-1]]
    return {"median_ms": statistics.median(ms), "iqr_ms": q[2] - q[0], "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


class NoModel(torch.nn.Module):
    """Constant logits: times the library's own work (ordering, building perturbed inputs, softmax) alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 8)


def plain(model: torch.nn.Module, clips: torch.Tensor, passes: int) -> None:
    with torch.no_grad():
        for _ in range(passes):
            model(clips)


def bench_model(
    name: str,
    model: torch.nn.Module,
    clips: torch.Tensor,
    steps: int,
    repeats: int,
    device: str,
    only: str | None = None,
) -> dict:
    """Time the cases on one model; ``only`` keeps the cases whose name starts with it (and their floors)."""
    b = clips.shape[0]
    gen = torch.Generator().manual_seed(0)
    rel = torch.randn(clips.shape, generator=gen).to(device)
    sel = selective_relevance(rel, 1.0)
    model = model.to(device).eval()
    kw = {"steps": steps, "batch_size": b}
    cases = {
        "deletion (freeze)": (lambda: deletion_curve(model, clips, rel, **kw), steps + 1),
        "deletion (mean)": (lambda: deletion_curve(model, clips, rel, reference="mean", **kw), steps + 1),
        "deletion (blur)": (lambda: deletion_curve(model, clips, rel, reference="blur", **kw), steps + 1),
        "insertion (freeze)": (lambda: deletion_curve(model, clips, rel, insertion=True, **kw), steps + 1),
        "random floor (freeze)": (lambda: random_curve(model, clips, **kw), steps + 1),
        "matched-budget drops": (lambda: matched_budget_drops(model, clips, rel, sel, batch_size=b), 4),
        "motion reliance": (lambda: motion_reliance(model, clips, batch_size=b), 4),
    }
    no_model = NoModel()
    overhead = {
        "overhead only: deletion (freeze), constant model": lambda: deletion_curve(no_model, clips, rel, **kw),
        "overhead only: deletion (blur), constant model": lambda: deletion_curve(
            no_model, clips, rel, reference="blur", **kw
        ),
    }
    if only is not None:
        cases = {k: v for k, v in cases.items() if k.startswith(only)}
    floors = sorted({passes for _, passes in cases.values()})
    timed = {case: fn for case, (fn, _) in cases.items()}
    timed.update({f"plain x{p}": (lambda p=p: plain(model, clips, p)) for p in floors})
    timed.update(overhead)
    seconds = interleaved_timings(timed, dict.fromkeys(timed, repeats), warmup=1, device=device)
    stats = {case: summary(s, b) for case, s in seconds.items()}
    rows = []
    for case, (_, passes) in cases.items():
        st = stats[case]
        st["floor"] = f"plain x{passes}"
        st["x_floor"] = st["median_ms"] / stats[f"plain x{passes}"]["median_ms"]
    for case, st in stats.items():
        ratio = f"{st['x_floor']:.2f}" if "x_floor" in st else ""
        rows.append(
            f"| {name} | {b} | {steps} | {case} | {st['median_ms']:.1f} | {st['iqr_ms']:.1f} | {st['min_ms']:.1f} "
            f"| {st['max_ms']:.1f} | {st.get('floor', '')} | {ratio} |"
        )
    return {"model": name, "batch": b, "steps": steps, "shape": list(clips.shape), "stats": stats, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--full", action="store_true", help="also the published-size C3D at 112: deletion (freeze) only (slow on CPU)"
    )
    parser.add_argument("--full-batch", type=int, default=1)
    parser.add_argument("--full-steps", type=int, default=None, help="steps for the full C3D (default: --steps)")
    parser.add_argument("--full-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    results = []
    small = C3D(num_classes=8, width=0.125, crop_size=56)
    clips = torch.randn(args.batch, 3, 16, 56, 56).to(args.device)
    results.append(bench_model("C3D x0.125 @56", small, clips, args.steps, args.repeats, args.device))
    if args.full:
        full = C3D(num_classes=101)
        clips = torch.randn(args.full_batch, 3, 16, 112, 112).to(args.device)
        results.append(
            bench_model(
                "C3D @112",
                full,
                clips,
                args.full_steps or args.steps,
                args.full_repeats,
                args.device,
                only="deletion (freeze)",
            )
        )
    header = "| model | B | K | case | median ms/clip | IQR | min | max | floor | x floor |\n" + "|---" * 10 + "|"
    load_end = os.getloadavg()[0]
    verdicts = []
    for r in results:
        st = r["stats"]["deletion (freeze)"]
        verdicts.append(
            f"- {r['model']}, B={r['batch']}, K={r['steps']}: deletion curve {st['median_ms']:.1f} ms/clip = "
            f"{st['x_floor']:.2f}x {r['steps'] + 1} plain forward passes (target <= 1.2: "
            f"{'met' if st['x_floor'] <= 1.2 else 'MISSED'})"
        )
    markdown = (
        "# Faithfulness curves vs the plain forward passes they need\n\n"
        f"Device {args.device}, {args.threads} torch thread(s), K steps as listed, `batch_size = B`. "
        "`x floor` = median time / median time of the same number of plain forward passes of the batch (`plain xN`). "
        "Cases are timed in interleaved rounds (one call each per round, shuffled), so drifts of a shared machine "
        f"hit all of them alike. 1-minute load average {load_start:.1f} at the start, {load_end:.1f} at the end "
        f"({os.cpu_count()} CPUs).\n\n"
        f"{header}\n" + "\n".join(row for r in results for row in r["rows"]) + "\n\n" + "\n".join(verdicts) + "\n"
    )
    print(markdown)
    for r in results:
        r.pop("rows")
    json_path, _ = write_results(
        "bench_faithfulness", {"device": args.device, "runs": results, "load_average": [load_start, load_end]}, markdown
    )
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
