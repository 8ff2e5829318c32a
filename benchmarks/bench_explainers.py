"""Explainer cost per clip (Table 4): forward, Grad-CAM, Guided Backprop, DTD (the propagation engine) with Captum's
LRP as DTD's alternative, on every model (time and peak memory, DTD/GBP ratios); selective overhead and the
wrapper's overhead vs a bare Captum call (C3D); frame inflation vs selective relevance.

* models (``--models``): small and full sizes of C3D, R3D-18, MC3-18, R(2+1)D-18, SlowFast-R50, X3D (XS / S) and
  VideoMAE (AttnLRP in the DTD column); small = the ``model=<name>_small`` configs on 16x56x56 clips, full = the
  published networks on their clip sizes. Batches ``--batches`` (small) and ``--full-batches`` (full);
* time: the methods of one model and batch timed in interleaved rounds (``_common.interleaved_timings``: one call
  of each per round in shuffled order, so a shared machine's drifts hit all alike); ms per clip, medians;
* peak memory: one fresh subprocess per model and batch (``--child``) measures every method in turn: large
  allocations are mmapped (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``) and ``malloc_trim`` returns freed memory before
  each method, the resident-set high-water mark is reset (``/proc/self/clear_refs``) and the peak increase is
  ``VmHWM - VmRSS(before)``, MiB per call;
* ``Captum LRP``: ``captum.attr.LRP`` with the DTD rules of ``tests/captum_lrp.py`` (C3D only: Captum has no rules for
  BatchNorm, residual sums or gates); DTD must equal it there (``tests/test_propagation.py``);
* C3D table: ``selective %`` = ``selective_relevance(R, 4.0)`` time / explainer time; ``bare`` = the Captum call an
  explainer wraps (same target, eval model prepared beforehand), ``wrapper's own cost`` = our call with the
  attribution replaced by its result;
* frame inflation (FI around DTD) vs DTD + selective, a C3D-like 3-block net at T = 8, 16, 32.

Run: ``.venv/bin/python benchmarks/bench_explainers.py`` → ``benchmarks/results/bench_explainers.{json,md}``
(``--models c3d_small,r3d_small --full-batches '' --repeats 3`` for a quick run).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import interleaved_timings, write_results
from captum.attr import LRP, GuidedGradCam, LayerAttribution, LayerGradCam
from captum.attr import GuidedBackprop as CaptumGBP
from torch import nn

from motion_relevance.explain import DeepTaylor, FrameInflation, GradCAM, GuidedBackprop, GuidedGradCAM
from motion_relevance.explain._copy import eval_copy
from motion_relevance.explain.explainers import AttnLRP
from motion_relevance.explain.selective import selective_relevance
from motion_relevance.models import C3D

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/captum_lrp.py
from tests.captum_lrp import assign_dtd_rules  # noqa: E402

MiB = 2**20
SMALL = (16, 56)  # frames, side of the small variants' clips (motion_shapes)


def _models() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, int], str]]:
    """name -> (factory, (frames, side) of the clip, explain layer); SlowFast clips are packed [slow, fast]."""
    from motion_relevance import models as m

    small = dict(num_classes=8)
    return {
        "c3d_small": (lambda: C3D(width=0.125, crop_size=56, **small), SMALL, "conv5b"),
        "r3d_small": (lambda: m.r3d_18(width=0.125, **small), SMALL, "layer4"),
        "mc3_small": (lambda: m.mc3_18(width=0.125, **small), SMALL, "layer4"),
        "r2plus1d_small": (lambda: m.r2plus1d_18(width=0.125, **small), SMALL, "layer4"),
        "slowfast_small": (lambda: m.SlowFast(width=0.25, clip_len=16, crop_size=56, head_pool="adaptive",
                                              dropout=0.0, **small), SMALL, "blocks.4.multipathway_blocks.1"),
        "x3d_small": (lambda: m.X3D(clip_len=16, crop_size=56, head_pool="adaptive", dropout=0.0, **small), SMALL,
                      "blocks.4"),
        # motion_relevance/conf/model/videomae_tiny.yaml and videomae_base.yaml (VideoMAE-B/16, Kinetics size)
        "videomae_tiny": (lambda: m.VideoMAE(image_size=56, patch_size=8, num_frames=16, tubelet_size=4,
                                             hidden_size=96, num_hidden_layers=3, num_attention_heads=4,
                                             intermediate_size=192, layer_norm_eps=1e-6, qkv_bias=True, **small),
                          SMALL, ""),
        "c3d": (lambda: C3D(num_classes=101), (16, 112), "conv5b"),
        "r3d_18": (lambda: m.r3d_18(num_classes=400), (16, 112), "layer4"),
        "mc3_18": (lambda: m.mc3_18(num_classes=400), (16, 112), "layer4"),
        "r2plus1d_18": (lambda: m.r2plus1d_18(num_classes=400), (16, 112), "layer4"),
        "slowfast_r50": (lambda: m.slowfast_r50(num_classes=400), (32, 224), "blocks.4.multipathway_blocks.1"),
        "x3d_xs": (lambda: m.x3d_xs(num_classes=400), (4, 160), "blocks.4"),
        "x3d_s": (lambda: m.x3d_s(num_classes=400), (13, 182), "blocks.4"),
        "videomae_base": (lambda: m.VideoMAE(num_classes=400), (16, 224), ""),
    }


def _inputs(name: str, batch: int, frames: int, side: int) -> torch.Tensor | list[torch.Tensor]:
    clip = torch.rand(batch, 3, frames, side, side, generator=torch.Generator().manual_seed(0)) * 4 - 2
    if name.startswith("slowfast"):
        from motion_relevance.models.slowfast import pack_pathways

        return pack_pathways(clip, 4)
    return clip


def _methods(name: str, layer: str, model: nn.Module, x: Any) -> dict[str, Callable[[], object]]:
    """What is timed for one model: forward (no grad), Grad-CAM, GBP, DTD (AttnLRP for VideoMAE), Captum's LRP."""
    dtd = AttnLRP(lower=-2.0, upper=2.0) if name.startswith("videomae") else DeepTaylor(lower=-2.0, upper=2.0)
    eval_model = eval_copy(model)

    def forward() -> None:
        with torch.no_grad():
            eval_model(x)

    cases: dict[str, Callable[[], object]] = {"forward": forward}
    if layer:
        cases["gradcam"] = lambda: GradCAM(layer=layer)(model, x)
    cases["gbp"] = lambda: GuidedBackprop()(model, x)
    cases["dtd"] = lambda: dtd(model, x)
    if name.startswith("c3d"):
        target = eval_model(x).argmax(1)

        def captum_dtd() -> object:
            ref = eval_copy(model)
            assign_dtd_rules(ref, "conv1", torch.tensor([-2.0]), torch.tensor([2.0]))
            return LRP(ref).attribute(x.detach().clone().requires_grad_(True), target=target)

        cases["captum_dtd"] = captum_dtd
    return cases


def _batch_of(x: Any) -> int:
    return int((x if isinstance(x, torch.Tensor) else x[0]).shape[0])


# ------------------------------------------------------------------------------------------ peak memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_child(name: str, batch: int, threads: int) -> dict[str, float]:
    """Peak memory increase (MiB) of each method of one model and batch, in this fresh process."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: large buffers mmapped, freed memory leaves the RSS
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    make, (frames, side), layer = _models()[name]
    model = make()
    x = _inputs(name, batch, frames, side)
    cases = _methods(name, layer, model, x)
    for fn in cases.values():  # structure traces, lazy imports and one-off buffers before measuring
        fn()
    peaks = {}
    for method, fn in cases.items():
        runs = []
        for _ in range(2):
            libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_kib("VmRSS")
            fn()
            runs.append((_status_kib("VmHWM") - before) / 1024)
        peaks[method] = min(runs)
    return peaks


def peak_memory(name: str, batch: int, threads: int, timeout: float) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", f"{name}:{batch}", "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {name}:{batch} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- all models


def bench_all_models(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    results, rows = [], []
    specs = _models()
    names = [n for n in args.models.split(",") if n]
    for name in names:
        if name not in specs:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(specs)}")
        make, (frames, side), layer = specs[name]
        small = name.endswith(("_small", "_tiny"))
        batches = [int(b) for b in (args.batches if small else args.full_batches).split(",") if b.strip()]
        for batch in batches:
            torch.manual_seed(0)
            model = make()
            x = _inputs(name, batch, frames, side)
            cases = _methods(name, layer, model, x)
            repeats = args.repeats if small else max(1, args.full_repeats)
            seconds = interleaved_timings(cases, dict.fromkeys(cases, repeats), warmup=1)
            ms = {k: 1e3 * statistics.median(v) / batch for k, v in seconds.items()}
            mem = peak_memory(name, batch, args.threads, args.timeout) if args.memory else {}
            row = {"model": name, "batch": batch, "repeats": repeats, "ms_per_clip": ms, "peak_mib": mem,
                   "runs_s": seconds}
            row["dtd_over_gbp_time"] = ms["dtd"] / ms["gbp"]
            # per-round ratios: robust to load drifting between rounds
            row["dtd_over_gbp_time_rounds"] = statistics.median(a / b for a, b in zip(seconds["dtd"], seconds["gbp"]))
            if mem:
                row["dtd_over_gbp_memory"] = mem["dtd"] / mem["gbp"] if mem["gbp"] > 0 else None
            results.append(row)

            def cell(d: dict, k: str, fmt: str) -> str:
                return format(d[k], fmt) if k in d else "–"

            mem_ratio = row.get("dtd_over_gbp_memory")
            rows.append(
                f"| {name} | {batch} | {cell(ms, 'forward', '.1f')} | {cell(ms, 'gradcam', '.1f')} | "
                f"{cell(ms, 'gbp', '.1f')} | {cell(ms, 'dtd', '.1f')} | {cell(ms, 'captum_dtd', '.1f')} | "
                f"{row['dtd_over_gbp_time']:.2f} ({row['dtd_over_gbp_time_rounds']:.2f}) | "
                f"{cell(mem, 'forward', '.1f')} | {cell(mem, 'gradcam', '.1f')} | {cell(mem, 'gbp', '.1f')} | "
                f"{cell(mem, 'dtd', '.1f')} | {cell(mem, 'captum_dtd', '.1f')} | "
                + (f"{mem_ratio:.2f} |" if mem_ratio is not None else "– |")
            )
            print(rows[-1], flush=True)
    return results, rows


# ------------------------------------------------------------------- C3D: selective %, wrapper overhead


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def per_clip(seconds: list[float], batch: int) -> dict[str, float]:
    ms = [s * 1e3 / batch for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


def explainers() -> dict[str, Callable[[], Any]]:
    return {
        "dtd": lambda: DeepTaylor(lower=-2.0, upper=2.0),
        "gradcam": lambda: GradCAM(layer="conv5b"),
        "gbp": lambda: GuidedBackprop(),
        "guided_gradcam": lambda: GuidedGradCAM(layer="conv5b"),
    }


def bare_captum(name: str, model: nn.Module, clips: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Captum call an explainer wraps (for DTD: Captum's LRP, the alternative), eval model prepared once."""
    x = clips.detach().requires_grad_(True)
    if name == "dtd":  # Captum removes the rules after every call: set them again (microseconds)
        assign_dtd_rules(model, "conv1", torch.tensor([-2.0]), torch.tensor([2.0]))
        return LRP(model).attribute(x, target=target)
    if name == "gradcam":
        cam = LayerGradCam(model, model.conv5b).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="trilinear")
    if name == "gbp":
        return CaptumGBP(model).attribute(x, target=target)
    return GuidedGradCam(model, model.conv5b).attribute(x, target=target, interpolate_mode="trilinear")


def _without_attribution(
    explainer: Any, model: nn.Module, clips: torch.Tensor, target: torch.Tensor, relevance: torch.Tensor
) -> Any:
    """The explainer's call with its attribution replaced by the finished relevance: the wrapper's own cost
    (input and model checks, eval copy, target handling, output check)."""
    explainer._explain = lambda *args, **kwargs: (relevance,)  # instance attribute shadows the method
    try:
        return explainer(model, clips, target)
    finally:
        del explainer._explain


def bench_c3d(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    results, rows = [], []
    specs = [("small C3D", dict(num_classes=8, width=0.125, crop_size=56), 56, [1, 8], args.repeats)]
    if args.c3d_full:
        specs.append(("full C3D(101)", dict(num_classes=101), 112, [1], 1))
    for label, kwargs, size, batches, repeats in specs:
        torch.manual_seed(0)
        model = C3D(**kwargs)
        for batch in batches:
            clips = torch.rand(batch, 3, 16, size, size) * 4 - 2
            for name, make in explainers().items():
                explainer = make()
                seconds = timings(lambda e=explainer, c=clips, m=model: e(m, c), repeats)
                relevance = explainer(model, clips)
                sel = timings(lambda r=relevance: selective_relevance(r, 4.0), 5)
                row = {"model": label, "batch": batch, "explainer": name, **per_clip(seconds, batch)}
                row["selective_ms"] = per_clip(sel, batch)["median_ms"]
                row["selective_pct"] = 100 * row["selective_ms"] / row["median_ms"]
                eval_model = C3D(**kwargs).eval()
                eval_model.load_state_dict(model.state_dict())
                for p in eval_model.parameters():
                    p.requires_grad_(False)
                target = eval_model(clips).argmax(1)
                pairs = repeats * args.overhead_factor if label.startswith("small") else max(2, repeats)
                seconds_of = interleaved_timings(
                    {
                        "bare": lambda m=eval_model, c=clips, t=target, n=name: bare_captum(n, m, c, t),
                        "ours": lambda e=explainer, c=clips, t=target, m=model: e(m, c, t),
                    },
                    {"bare": pairs, "ours": pairs},
                    warmup=1,
                )
                bare, ours = seconds_of["bare"], seconds_of["ours"]
                row["bare_captum_ms"] = per_clip(bare, batch)["median_ms"]
                row["ours_same_target_ms"] = per_clip(ours, batch)["median_ms"]
                row["vs_bare_pct"] = 100 * (row["ours_same_target_ms"] / row["bare_captum_ms"] - 1)
                row["wrapper_fixed_ms"] = 1e3 * statistics.median(
                    timings(lambda e=explainer, c=clips, t=target, m=model, r=relevance: _without_attribution(
                        e, m, c, t, r), 20)
                ) / batch
                row["wrapper_fixed_pct"] = 100 * row["wrapper_fixed_ms"] / row["bare_captum_ms"]
                results.append(row)
                rows.append(
                    f"| {label} | {batch} | {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | "
                    f"{row['selective_ms']:.3f} | {row['selective_pct']:.2f} | {row['bare_captum_ms']:.1f} | "
                    f"{row['vs_bare_pct']:+.1f} | {row['wrapper_fixed_ms']:.2f} ({row['wrapper_fixed_pct']:.1f} %) |"
                )
                print(rows[-1], flush=True)
    return results, rows


class Tiny3D(nn.Sequential):
    """C3D-like net for any clip length T (multiple of 4): 3 conv blocks, fc; 56 px input."""

    def __init__(self, frames: int, classes: int = 8) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv3d(3, 8, 3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool3d((1, 2, 2)),
                conv2=nn.Conv3d(8, 16, 3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool3d(2),
                conv3=nn.Conv3d(16, 32, 3, padding=1),
                relu3=nn.ReLU(),
                pool3=nn.MaxPool3d(2),
                flatten=nn.Flatten(),
                fc=nn.Linear(32 * (frames // 4) * 7 * 7, classes),
            )
        )


def bench_frame_inflation(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    results, rows = [], []
    for frames in (8, 16, 32):
        torch.manual_seed(0)
        model = Tiny3D(frames)
        clips = torch.rand(1, 3, frames, 56, 56) * 4 - 2
        dtd = DeepTaylor(lower=-2.0, upper=2.0)
        fi = FrameInflation(dtd, chunk_size=16)
        base = per_clip(timings(lambda d=dtd, m=model, c=clips: selective_relevance(d(m, c), 4.0), args.repeats), 1)
        cost = per_clip(timings(lambda f=fi, m=model, c=clips: f(m, c), max(1, args.repeats // 2)), 1)
        row = {"T": frames, "dtd_plus_selective_ms": base["median_ms"], "frame_inflation_ms": cost["median_ms"]}
        row["ratio"] = cost["median_ms"] / base["median_ms"]
        results.append(row)
        rows.append(f"| {frames} | {base['median_ms']:.1f} | {cost['median_ms']:.1f} | {row['ratio']:.1f} |")
        print(rows[-1], flush=True)
    return results, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per small model and batch")
    parser.add_argument("--full-repeats", type=int, default=2, help="rounds per full-size model")
    parser.add_argument("--models", default=",".join(_models()), help="comma-separated model names")
    parser.add_argument("--batches", default="1,8", help="batch sizes of the small models")
    parser.add_argument("--full-batches", default="1", help="batch sizes of the full models ('' = skip them)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory children")
    parser.add_argument("--no-c3d-table", dest="c3d_table", action="store_false",
                        help="skip the C3D selective / wrapper-overhead table")
    parser.add_argument("--c3d-full", action="store_true", help="C3D table: also the full C3D (minutes)")
    parser.add_argument("--no-frame-inflation", dest="frame_inflation", action="store_false")
    parser.add_argument("--overhead-factor", type=int, default=4, help="small C3D: wrapper-vs-bare pairs per repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per memory child")
    parser.add_argument("--out", default="bench_explainers", help="name of the results files (benchmarks/results/)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, batch = args.child.rsplit(":", 1)
        print(json.dumps(_peak_child(name, int(batch), args.threads)))
        return
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    model_results, model_rows = bench_all_models(args)
    c3d_results, c3d_rows = bench_c3d(args) if args.c3d_table else ([], [])
    fi_results, fi_rows = bench_frame_inflation(args) if args.frame_inflation else ([], [])
    load_after = os.getloadavg()
    markdown = (
        f"# Explainer cost per clip (CPU, {args.threads} torch threads)\n\n"
        f"Load average before / after the run: {load[0]:.1f} / {load_after[0]:.1f} (1 min). Time in ms per clip "
        "(median over interleaved rounds, target = predicted class); peak memory = increase of the resident set "
        "during one call, MiB (fresh process per model and batch). DTD/GBP time: ratio of the medians (median of "
        "the per-round ratios in brackets). `Captum LRP`: Captum's LRP with the same DTD rules (C3D only). "
        "VideoMAE's DTD column is AttnLRP and its GBP column is one plain gradient (it has no ReLU): AttnLRP's "
        "alternative.\n\n"
        "| model | B | forward | Grad-CAM | GBP | DTD | Captum LRP | DTD/GBP time | forward MiB | Grad-CAM MiB "
        "| GBP MiB | DTD MiB | Captum LRP MiB | DTD/GBP memory |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(model_rows) + "\n"
    )
    if c3d_rows:
        markdown += (
            "\n## C3D: selective overhead and the wrapper's cost\n\n"
            "`sel %` = selective relevance time / explainer time. `bare` = the Captum call the explainer wraps "
            "(for DTD: Captum's LRP, the alternative), given the target, eval model prepared beforehand; `vs bare` = "
            "our call with the same target vs bare (interleaved rounds, medians); `wrapper's own cost` = our call "
            "with the attribution replaced by its result (checks, eval copy, target, output check), ms per clip and "
            "% of bare.\n\n"
            "| model | B | explainer | median ms/clip | min | selective ms/clip | sel % | bare ms/clip | vs bare % "
            "| wrapper's own cost ms/clip (% of bare) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(c3d_rows) + "\n"
        )
    if fi_rows:
        markdown += (
            "\n## Frame inflation (around DTD) vs DTD + selective relevance, C3D-like 3-block net, 56 px, B = 1\n\n"
            "| T | DTD + selective ms | frame inflation ms | ratio |\n|---|---|---|---|\n" + "\n".join(fi_rows) + "\n"
        )
    print(markdown)
    payload = {"models": model_results, "c3d": c3d_results, "frame_inflation": fi_results,
               "load_average": {"before": load, "after": load_after}}
    json_path, _ = write_results(args.out, payload, markdown)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
