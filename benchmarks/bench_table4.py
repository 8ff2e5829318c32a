"""The paper's Table 4 on this machine: explanation time per clip for full C3D, original and with selective relevance.

Full ``C3D(num_classes=101)`` on clips ``(1, 3, 16, 112, 112)``; methods DTD, Grad-CAM, Guided Backprop and
Guided Grad-CAM (our Captum wrappers, target = predicted class). For every method:

* batch 1: ``--clips`` distinct random clips (after ``--warmup`` other clips, not timed); per clip the explanation
  time and the selective step (``selective_relevance(R, 4.0)``) are timed separately (docs/method.md, "Metrics": device
  synchronised before each clock read, no data loading); mean, std, median over clips;
* "with selective" = explanation + selective step of the same clip; the ratio column is with / original;
* batch 8: ``--b8-batches`` batches of 8 distinct clips (after ``--b8-warmup`` untimed batches): clips/s of
  explanation + selective, and the speed-up of batch 8 over batch 1 per clip.

The paper's figures (GTX 1080 Ti) are printed beside ours when ``PAPER_TABLE4`` holds them; this repository
do not quote them, so that column shows "–" until someone fills it in from the paper.

Run: ``.venv/bin/python benchmarks/bench_table4.py [--device cuda] [--clips 30]``
→ ``benchmarks/results/bench_table4.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from motion_relevance.explain import DeepTaylor, GradCAM, GuidedBackprop, GuidedGradCAM  # noqa: E402
from motion_relevance.explain.selective import selective_relevance  # noqa: E402
from motion_relevance.models import C3D  # noqa: E402

SIGMA = 4.0
#: The paper's Table 4 (ms per clip, batch 1, GTX 1080 Ti): {method: {"original": ms, "selective": ms}}.
#: Left empty: the repository quotes no figures of the paper, and we do not guess them.
PAPER_TABLE4: dict[str, dict[str, float]] = {}

METHODS: dict[str, Callable[[], Any]] = {
    "dtd": lambda: DeepTaylor(lower=-2.0, upper=2.0),
    "gradcam": lambda: GradCAM(layer="conv5b"),
    "gbp": lambda: GuidedBackprop(),
    "guided_gradcam": lambda: GuidedGradCAM(layer="conv5b"),
}


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so the clock reads real time (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_clips(n: int, batch: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """``n`` distinct random clips ``(batch, 3, 16, 112, 112)`` in the zB bounds [-2, 2]."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 3, 16, 112, 112, generator=gen) * 4 - 2).to(device) for _ in range(n)]


def stats(xs: list[float]) -> dict[str, float]:
    """Mean, std (n-1), median, min, max and count of ``xs``."""
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def timed_explain(explainer: Any, model: torch.nn.Module, clips: torch.Tensor, device: torch.device) -> tuple:
    """(explanation seconds, selective-step seconds) for one call on ``clips``."""
    sync(device)
    t0 = time.perf_counter()
    relevance = explainer(model, clips)
    sync(device)
    t1 = time.perf_counter()
    selective_relevance(relevance, SIGMA)
    sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def bench_method(name: str, model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict:
    """Batch-1 per-clip statistics and batch-8 throughput of one method."""
    explainer = METHODS[name]()
    for clip in make_clips(args.warmup, 1, 999, device):
        timed_explain(explainer, model, clip, device)
    orig, sel, total = [], [], []
    for clip in make_clips(args.clips, 1, 0, device):
        e, s = timed_explain(explainer, model, clip, device)
        orig.append(e * 1e3)
        sel.append(s * 1e3)
        total.append((e + s) * 1e3)
    row: dict[str, Any] = {
        "method": name,
        "original_ms": stats(orig),
        "selective_step_ms": stats(sel),
        "with_selective_ms": stats(total),
    }
    row["selective_ratio"] = row["with_selective_ms"]["mean"] / row["original_ms"]["mean"]
    if args.b8_batches > 0 and name in args.b8_methods.split(","):
        for clips in make_clips(args.b8_warmup, 8, 998, device):
            timed_explain(explainer, model, clips, device)
        secs = [sum(timed_explain(explainer, model, c, device)) for c in make_clips(args.b8_batches, 8, 1, device)]
        per_clip = [s * 1e3 / 8 for s in secs]
        row["b8"] = {
            "batches": len(secs),
            "clips_per_s": 8 * len(secs) / sum(secs),
            "ms_per_clip": stats(per_clip),
            "speedup_vs_b1": row["with_selective_ms"]["mean"] / statistics.fmean(per_clip),
        }
    paper = PAPER_TABLE4.get(name)
    if paper:
        row["paper_ms"] = paper
        row["ours_over_paper"] = {
            k: row[f"{'original' if k == 'original' else 'with_selective'}_ms"]["mean"] / v
            for k, v in paper.items()
            if v
        }
    return row


def _f(x: float | None, spec: str = ".2f") -> str:
    """Format a number, or "–" when absent."""
    return "–" if x is None else format(x, spec)


def to_markdown(rows: list[dict], meta: dict) -> str:
    """Table 4 as markdown: ours beside the paper's figure, with ratios."""
    lines = [
        f"# Table 4 on this machine: full C3D(101), 16x112x112, device {meta['device']} ({meta['device_name']})",
        "",
        f"Batch 1: mean ± std over {meta['clips']} distinct random clips (ms/clip; {meta['warmup']} warm-up clips "
        "excluded); target = predicted class; selective = `selective_relevance(R, 4.0)`; device synchronised "
        "around every timing. Batch 8: explanation + selective, distinct clips.",
        "",
        "| method | original ms | + selective ms | selective step ms | with/original | paper original | "
        "paper selective | ours/paper | B=8 clips/s | B=8 ms/clip | B=8 speed-up vs B=1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, w, s = r["original_ms"], r["with_selective_ms"], r["selective_step_ms"]
        paper = r.get("paper_ms", {})
        ratio = r.get("ours_over_paper", {})
        b8 = r.get("b8")
        lines.append(
            f"| {r['method']} | {o['mean']:.1f} ± {o['std']:.1f} | {w['mean']:.1f} ± {w['std']:.1f} | "
            f"{s['mean']:.3f} ± {s['std']:.3f} | {r['selective_ratio']:.4f} | "
            f"{_f(paper.get('original'), '.1f')} | {_f(paper.get('selective'), '.1f')} | "
            f"{_f(ratio.get('original'))} | "
            + (
                f"{b8['clips_per_s']:.2f} | {b8['ms_per_clip']['mean']:.1f} | {b8['speedup_vs_b1']:.2f} |"
                if b8
                else "– | – | – |"
            )
        )
    if not PAPER_TABLE4:
        lines += ["", "Paper column: not quoted here; fill `PAPER_TABLE4` to compare."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, time every method, write results/bench_table4.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--clips", type=int, default=30, help="timed batch-1 clips per method (>= 30 for Table 4)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batch-1 clips per method")
    ap.add_argument("--b8-batches", type=int, default=2, help="timed batches of 8 per method (0 = skip)")
    ap.add_argument("--b8-warmup", type=int, default=1, help="untimed batches of 8 per method")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--b8-methods", default=",".join(METHODS), help="methods that get the batch-8 measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = C3D(num_classes=101).to(device)
    rows = []
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        rows.append(bench_method(name, model, args, device))
        r = rows[-1]
        print(
            f"{name}: {r['original_ms']['mean']:.1f} ± {r['original_ms']['std']:.1f} ms/clip, "
            f"+selective {r['with_selective_ms']['mean']:.1f} ms ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    meta = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "clips": args.clips,
        "warmup": args.warmup,
        "threads": args.threads,
        "sigma": SIGMA,
        "paper_quoted": bool(PAPER_TABLE4),
    }
    markdown = to_markdown(rows, meta)
    print(markdown)
    json_path, _ = write_results("bench_table4", {"meta": meta, "rows": rows}, markdown)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
