"""Explainer cost per clip (SPEC §4 overhead, Table 4): DTD, Grad-CAM, GBP, Guided Grad-CAM; selective overhead;
wrapper overhead vs a bare Captum call; frame inflation vs selective relevance.

* models: small C3D (8 classes, width 0.125, 56 px) and full C3D(101) (112 px), batch 1 and 8 (the full
  model's batch 8 runs once per explainer: minutes on a CPU);
* ``selective %``: time of ``selective_relevance(R, 4.0)`` on the explainer's output / explainer time;
* wrapper overhead: our explainer vs the bare Captum call it wraps (same target given, model already in eval);
* frame inflation (FI around DTD) vs DTD + selective, small 3-D CNN at T = 8, 16, 32 (C3D's five pools need
  T >= 16, so the FI rows use a C3D-like 3-layer net that takes any T).

Run: ``.venv/bin/python benchmarks/bench_explainers.py`` → ``benchmarks/results/bench_explainers.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
from _common import interleaved_timings, write_results
from captum.attr import LRP, GuidedGradCam, LayerAttribution, LayerGradCam
from captum.attr import GuidedBackprop as CaptumGBP
from torch import nn

from motion_relevance.explain import DeepTaylor, FrameInflation, GradCAM, GuidedBackprop, GuidedGradCAM
from motion_relevance.explain.lrp import assign_dtd_rules
from motion_relevance.explain.selective import selective_relevance
from motion_relevance.models import C3D


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


def explainers() -> dict[str, Callable[[], object]]:
    return {
        "dtd": lambda: DeepTaylor(lower=-2.0, upper=2.0),
        "gradcam": lambda: GradCAM(layer="conv5b"),
        "gbp": lambda: GuidedBackprop(),
        "guided_gradcam": lambda: GuidedGradCAM(layer="conv5b"),
    }


def bare_captum(name: str, model: nn.Module, clips: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Captum call our explainer wraps, on an eval model prepared once outside the timing where needed."""
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


def _without_captum(
    explainer: Callable, model: nn.Module, clips: torch.Tensor, target: torch.Tensor, relevance: torch.Tensor
) -> torch.Tensor:
    """The explainer's call with its Captum work replaced by the finished relevance: the wrapper's own cost
    (input and model checks, eval copy, target handling, output check)."""
    explainer._explain = lambda *args, **kwargs: relevance  # instance attribute shadows the method
    try:
        return explainer(model, clips, target)
    finally:
        del explainer._explain


def bench_models(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    results, rows = [], []
    specs = [("small C3D", dict(num_classes=8, width=0.125, crop_size=56), 56, [1, 8], args.repeats)]
    full_batches = [int(b) for b in args.full_batches.split(",") if b.strip()]  # "" = skip the full C3D
    if full_batches:
        specs.append(("full C3D(101)", dict(num_classes=101), 112, full_batches, 1))
    for label, kwargs, size, batches, repeats in specs:
        torch.manual_seed(0)
        model = C3D(**kwargs)
        for batch in batches:
            clips = torch.rand(batch, 3, 16, size, size) * 4 - 2
            for name, make in explainers().items():
                explainer = make()
                warm = 1 if (label.startswith("small") or batch == 1) else 0
                seconds = timings(lambda e=explainer, c=clips, m=model: e(m, c), repeats, warmup=warm)
                relevance = explainer(model, clips)
                sel = timings(lambda r=relevance: selective_relevance(r, 4.0), 5)
                row = {"model": label, "batch": batch, "explainer": name, **per_clip(seconds, batch)}
                row["selective_ms"] = per_clip(sel, batch)["median_ms"]
                row["selective_pct"] = 100 * row["selective_ms"] / row["median_ms"]
                if label.startswith("small") or batch == 1:
                    eval_model = C3D(**kwargs).eval()
                    eval_model.load_state_dict(model.state_dict())
                    for p in eval_model.parameters():
                        p.requires_grad_(False)
                    target = eval_model(clips).argmax(1)
                    pairs = repeats * args.overhead_factor if label.startswith("small") else max(2, repeats)
                    # timed in interleaved rounds, so drifts of a shared machine hit both alike
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
                    row["wrapper_overhead_pct"] = 100 * (row["ours_same_target_ms"] / row["bare_captum_ms"] - 1)
                    # the fastest of each: less sensitive to a shared machine's bursts than the medians
                    row["wrapper_overhead_min_pct"] = 100 * (min(ours) / min(bare) - 1)
                    row["overhead_pairs"] = len(ours)
                    # what the wrapper itself adds, without the noise of two long runs: the same call with the
                    # Captum work (``_explain``) replaced by returning the finished relevance
                    row["wrapper_fixed_ms"] = (
                        1e3
                        * statistics.median(
                            timings(
                                lambda e=explainer, c=clips, t=target, m=model, r=relevance: _without_captum(
                                    e, m, c, t, r
                                ),
                                20,
                            )
                        )
                        / batch
                    )
                    row["wrapper_fixed_pct"] = 100 * row["wrapper_fixed_ms"] / row["bare_captum_ms"]
                results.append(row)
                overhead = row.get("wrapper_overhead_pct")
                rows.append(
                    f"| {label} | {batch} | {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | "
                    f"{row['selective_ms']:.3f} | {row['selective_pct']:.2f} | "
                    + (
                        f"{row['bare_captum_ms']:.1f} | {overhead:+.1f} | {row['wrapper_overhead_min_pct']:+.1f} | "
                        f"{row['wrapper_fixed_ms']:.2f} ({row['wrapper_fixed_pct']:.1f} %) |"
                        if overhead is not None
                        else "– | – | – | – |"
                    )
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--overhead-factor", type=int, default=4, help="small model: wrapper-vs-bare pairs = repeats x this"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-batches", default="1,8", help="batch sizes for the full C3D (e.g. '1'; '' = skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_results, model_rows = bench_models(args)
    fi_results, fi_rows = bench_frame_inflation(args)
    markdown = (
        f"# Explainer cost per clip (CPU, {args.threads} torch threads)\n\n"
        "Time per clip in ms (target = predicted class). `sel %` = selective relevance time / explainer time. "
        "`bare` = the Captum call the explainer wraps (given the target, eval model prepared beforehand); "
        "`overhead` = our call with the same target vs bare, timed in interleaved rounds (medians; `min`: "
        "fastest calls); "
        "`wrapper's own cost` = our call with the Captum work replaced by its result (checks, eval copy, target, "
        "output check), in ms per clip and in % of bare: the overhead without the noise of two long runs.\n\n"
        "| model | B | explainer | median ms/clip | min | selective ms/clip | sel % | bare Captum ms/clip "
        "| overhead % | overhead % (min) | wrapper's own cost ms/clip (% of bare) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(model_rows) + "\n\n"
        "## Frame inflation (around DTD) vs DTD + selective relevance, C3D-like 3-block net, 56 px, B = 1\n\n"
        "| T | DTD + selective ms | frame inflation ms | ratio |\n|---|---|---|---|\n" + "\n".join(fi_rows) + "\n"
    )
    print(markdown)
    json_path, _ = write_results("bench_explainers", {"models": model_results, "frame_inflation": fi_results}, markdown)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
