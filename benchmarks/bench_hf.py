"""AttnLRP on transformers' video classifiers (models/hf.py, canonization by tracing): its costs vs the alternatives.

Models are built from random transformers configs (no downloads), batch 1, inputs uniform in [-1, 1]:

* ``tiny``: VideoMAE / TimeSformer with hidden 32, 2 layers, 4 frames 16 px (the ``--quick`` run);
* ``base``: VideoMAE-B (hidden 768, 12 layers, 12 heads, tubelet 2, patch 16, 224 px, ``--videomae-frames``, default
  16) and TimeSformer-B (hidden 768, 12 layers, patch 16, 224 px, ``--timesformer-frames``, default 8).

Per model, in a fresh process (so the memory figures are its own): (a) ``canonize`` — the one-off rewrite with its
logits check on a fresh wrapper, and the first AttnLRP call's extra time over later ones (target <= 2 s); AttnLRP
through the cache vs AttnLRP on the canonized copy directly (the warm call; target 0 % added); (b) AttnLRP on the
transformers model vs one gradient (forward + backward of the target logit; target <= 2x), and, for VideoMAE, vs
AttnLRP on our own VideoMAE (models/videomae.py) with the same weights (target <= 1.1x), interleaved, median of
``--repeats``; (c) peak memory per call: ``VmHWM - VmRSS(before)`` after resetting the high-water mark via
``/proc/self/clear_refs``; (d) last, the seconds of each phase of canonization on the old code path and the new one
(``bench_canonize.phases``: recording, rewrite, the canonized copy's structure, the logits check).
Run: ``.venv/bin/python benchmarks/bench_hf.py`` → ``benchmarks/results/bench_hf.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import interleaved_timings, reset_peak_rss, status_kib, write_results
from bench_canonize import PHASE_NOTE, phase_table

MEMORY = ("forward (no grad)", "gradient", "AttnLRP first call (canonizes)", "AttnLRP (canonized)",
          "AttnLRP canonized copy", "AttnLRP ours")
TARGETS = {"canonize_s": 2.0, "cache_added_percent": 0.0, "vs_gradient": 2.0, "vs_ours": 1.1}


def _peak_mib(fn: Callable[[], object]) -> float | None:
    """Resident-set growth of one call in MiB (VmHWM after a reset minus VmRSS before), or None if unavailable."""
    if not reset_peak_rss():
        return None
    rss = status_kib("VmRSS")
    fn()
    hwm = status_kib("VmHWM")
    return None if rss is None or hwm is None else (hwm - rss) / 1024


def _config(arch: str, size: str, frames: int) -> tuple[Any, tuple[int, int, int]]:
    import transformers

    if size == "tiny":
        common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                  "num_labels": 5, "image_size": 16, "patch_size": 8, "num_frames": 4}
        px = 16
    else:
        common = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                  "num_labels": 400, "image_size": 224, "patch_size": 16, "num_frames": frames}
        px = 224
    if arch == "videomae":
        return transformers.VideoMAEConfig(tubelet_size=2, **common), (common["num_frames"], px, px)
    return transformers.TimesformerConfig(**common), (common["num_frames"], px, px)


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = [1e3 * s for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


def child(arch: str, size: str, frames: int, repeats: int, phases_only: bool = False) -> dict[str, Any]:
    """One model's figures, measured in this process (``phases_only``: the phases of canonization and one forward
    pass)."""
    import transformers

    from motion_relevance.explain import AttnLRP
    from motion_relevance.explain.canonize_trace import canonized
    from motion_relevance.models import from_transformers

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    config, shape = _config(arch, size, frames)
    cls = transformers.VideoMAEForVideoClassification if arch == "videomae" else \
        transformers.TimesformerForVideoClassification
    torch.manual_seed(0)
    hf = cls(config).eval()
    net = from_transformers(hf)
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    target = torch.tensor([1])
    explainer = AttnLRP(lower=-1.0, upper=1.0)

    def gradient(model: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            clip = x.clone().requires_grad_(True)
            model(clip)[0, 1].backward()
            return clip.grad
        return run

    out: dict[str, Any] = {"model": arch, "size": size, "clip": [1, 3, *shape],
                           "parameters": sum(p.numel() for p in hf.parameters())}
    if phases_only:
        from bench_canonize import phases

        small, small_shape = _config(arch, "tiny", 4)  # one-off imports and first calls out of the figures
        phases(from_transformers(cls(small).eval()), torch.rand(1, 3, *small_shape))
        out["phases_s"] = phases(from_transformers(hf), x)
        start = time.perf_counter()
        with torch.no_grad():
            net(x)
        out["forward_s"] = time.perf_counter() - start
        return out
    mem: dict[str, float | None] = {}
    with torch.no_grad():
        mem["forward (no grad)"] = _peak_mib(lambda: net(x))
    mem["gradient"] = _peak_mib(gradient(net))
    start = time.perf_counter()
    mem["AttnLRP first call (canonizes)"] = _peak_mib(lambda: explainer(net, x, target))
    first_s = time.perf_counter() - start
    mem["AttnLRP (canonized)"] = _peak_mib(lambda: explainer(net, x, target))
    start = time.perf_counter()
    record = canonized(from_transformers(hf), x)  # a fresh wrapper: the rewrite + its logits check (2 forwards)
    out["canonize_ms"] = 1e3 * (time.perf_counter() - start)
    out["modules_added"] = len(record.added)
    mem["AttnLRP canonized copy"] = _peak_mib(lambda: explainer(record.model, x, target))  # also its first call
    cases: dict[str, Callable[[], object]] = {
        "gradient": gradient(net),
        "AttnLRP hf (cached)": lambda: explainer(net, x, target),
        "AttnLRP canonized copy": lambda: explainer(record.model, x, target),
    }
    if arch == "videomae":
        from motion_relevance.models.videomae import VideoMAE

        c = config
        ours = VideoMAE(num_classes=c.num_labels, image_size=c.image_size, patch_size=c.patch_size,
                        num_frames=c.num_frames, tubelet_size=c.tubelet_size, hidden_size=c.hidden_size,
                        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                        intermediate_size=c.intermediate_size).eval()
        ours.load_state_dict(hf.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), net(x), rtol=1e-4, atol=1e-5)
        mem["AttnLRP ours"] = _peak_mib(lambda: explainer(ours, x, target))
        cases["AttnLRP ours"] = lambda: explainer(ours, x, target)
    # no warm-up: every case ran once above (the canonized copy included)
    timed = {k: _stats(v) for k, v in interleaved_timings(cases, dict.fromkeys(cases, repeats), warmup=0).items()}
    warm = timed["AttnLRP hf (cached)"]["median_ms"]
    out.update(
        first_call_ms=1e3 * first_s, first_call_extra_ms=1e3 * first_s - warm, timings=timed, peak_mib=mem,
        cache_added_percent=100.0 * (warm / timed["AttnLRP canonized copy"]["median_ms"] - 1.0),
        vs_gradient=warm / timed["gradient"]["median_ms"],
    )
    if "AttnLRP ours" in timed:
        out["vs_ours"] = warm / timed["AttnLRP ours"]["median_ms"]
    from bench_canonize import phases  # last: the first-call figures above are those of a fresh process

    out["phases_s"] = phases(from_transformers(hf), x)
    return out


def _run_child(arch: str, size: str, frames: int, repeats: int, timeout: float, phases_only: bool = False
               ) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", arch, size, str(frames), "--repeats", str(repeats)]
    cmd += ["--phases-only"] if phases_only else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": arch, "size": size, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"model": arch, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ok(value: float, limit: float) -> str:
    return "yes" if value <= limit else "no"


def to_markdown(rows: list[dict[str, Any]], load: tuple[float, float, float]) -> str:
    lines = ["# AttnLRP on transformers' video classifiers", "",
             f"Load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min); batch 1; medians.", "",
             "| model | clip | params | canonize | first call extra (≤ 2 s) | gradient | AttnLRP hf | "
             "AttnLRP canonized copy | cache added (0 %) | vs gradient (≤ 2×) | AttnLRP ours | vs ours (≤ 1.1×) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} {r['size']} | error: {r['error']} |")
            continue
        t = r["timings"]
        extra = r["first_call_extra_ms"] / 1e3
        ours = t.get("AttnLRP ours")
        lines.append(
            f"| {r['model']} {r['size']} | {'x'.join(map(str, r['clip'][2:]))} | {r['parameters'] / 1e6:.1f} M | "
            f"{r['canonize_ms']:.0f} ms | {extra:.2f} s ({_ok(extra, TARGETS['canonize_s'])}) | "
            f"{t['gradient']['median_ms']:.0f} ms | {t['AttnLRP hf (cached)']['median_ms']:.0f} ms | "
            f"{t['AttnLRP canonized copy']['median_ms']:.0f} ms | {r['cache_added_percent']:+.1f} % | "
            f"{r['vs_gradient']:.2f}× ({_ok(r['vs_gradient'], TARGETS['vs_gradient'])}) | "
            + (f"{ours['median_ms']:.0f} ms | {r['vs_ours']:.2f}× ({_ok(r['vs_ours'], TARGETS['vs_ours'])}) |"
               if ours else "– | – |"))
    lines += ["", "## Peak memory (MiB over the resident set before the call; VmHWM after clear_refs)", "",
              "| model | " + " | ".join(MEMORY) + " |", "|---" * (len(MEMORY) + 1) + "|"]
    for r in rows:
        if "error" in r:
            continue
        m = r["peak_mib"]
        cells = [m.get(k) for k in MEMORY]
        lines.append(f"| {r['model']} {r['size']} | " + " | ".join("–" if v is None else f"{v:.0f}" for v in cells)
                     + " |")
    lines += ["", "## Canonization per phase, seconds, old code path → new (one run each, same process)", ""]
    lines += phase_table([(f"{r['model']} {r['size']}", r["phases_s"]) for r in rows if "phases_s" in r])
    lines += ["", PHASE_NOTE]
    lines += ["", "canonize: the rewrite of a fresh wrapper incl. its logits check (two forward passes); "
              "first call extra: the first AttnLRP call minus the median later one; "
              "cache added: AttnLRP on the wrapper (canonized copy looked up) / AttnLRP on the canonized copy - 1; "
              "vs gradient: AttnLRP / (forward + backward of the target logit); "
              "vs ours: AttnLRP on the transformers model / on models/videomae.py with the same weights. "
              "A noisy shared machine moves every ratio by several percent."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed calls per case (after a warm-up)")
    parser.add_argument("--quick", action="store_true", help="tiny configs only")
    parser.add_argument("--videomae-frames", type=int, default=16, help="frames of the base VideoMAE clip")
    parser.add_argument("--timesformer-frames", type=int, default=8, help="frames of the base TimeSformer clip")
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds per model process")
    parser.add_argument("--phases-only", action="store_true",
                        help="only canonization's phases, old vs new code path, and one forward pass per model → "
                             "results/bench_hf_phases.{json,md}")
    parser.add_argument("--child", nargs=3, metavar=("ARCH", "SIZE", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, size, frames = args.child
        print(json.dumps(child(arch, size, int(frames), args.repeats, args.phases_only)))
        return
    load = os.getloadavg()
    plan = [("videomae", "tiny", 4), ("timesformer", "tiny", 4)]
    if not args.quick:
        plan += [("videomae", "base", args.videomae_frames), ("timesformer", "base", args.timesformer_frames)]
    rows = []
    for arch, size, frames in plan:
        rows.append(_run_child(arch, size, frames, args.repeats, args.timeout, args.phases_only))
        print(json.dumps(rows[-1])[:400], flush=True)
    if args.phases_only:
        lines = ["# Canonization of transformers' video classifiers per phase", "",
                 f"Load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, at the end "
                 "{:.2f} / {:.2f} / {:.2f} (1/5/15 min); batch 1; seconds, old code path → new (one run each, "
                 "same process).".format(*os.getloadavg()), ""]
        lines += phase_table([(f"{r['model']} {r['size']} {'x'.join(map(str, r['clip'][2:]))}", r["phases_s"])
                              for r in rows if "phases_s" in r])
        lines += [f"| {r['model']} {r['size']} | error: {r['error']} |" for r in rows if "error" in r]
        lines += ["", "One forward pass (no grad), seconds: " + ", ".join(
            f"{r['model']} {r['size']} {r['forward_s']:.2f}" for r in rows if "forward_s" in r) + ".", "",
            PHASE_NOTE]
        write_results("bench_hf_phases", {"rows": rows, "load_average_start": load,
                                          "load_average_end": os.getloadavg()}, "\n".join(lines))
        print("\n".join(lines))
        return
    markdown = to_markdown(rows, load)
    json_path, _ = write_results("bench_hf", {"rows": rows, "targets": TARGETS, "load_average_start": load,
                                              "load_average_end": os.getloadavg()}, markdown)
    print(markdown)
    print(json_path)


if __name__ == "__main__":
    main()
