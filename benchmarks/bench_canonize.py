"""Canonization by tracing (docs/method.md, "Canonization"): its one-off cost per model and its cost per explanation.

Two networks written as users write them — torchvision's video-ResNet style (``conv1 = [conv, BN, ReLU(inplace)]``,
one in-place ``self.relu``, ``out += identity``) — loaded with the weights of the zoo's module-written network:

* ``tiny``: r3d_18 at width 1/16, 5 classes, clips 1x3x8x32x32;
* ``full``: r3d_18 at full width (33 M parameters), 400 classes, clips 1x3x16x112x112.

Reports, per network: ``canonize`` — the rewrite of a fresh model object with the public API's logits check (two
forward passes), ``rewrite only`` — what an explainer pays once per model (median of repeats; also the first call
in the process, which loads torch.fx), against one forward pass of the same clip; and Deep Taylor ms/clip on the user's
model after its first explanation (canonized copy cached) against the zoo's module-written model with the same
weights (interleaved; target: 0 % added); and the seconds of each phase of canonization with the old code path
(every module traced, real forward passes to record calls and trace the copy's structure, a two-pass check) and the
new one (:func:`phases`). Run: ``.venv/bin/python benchmarks/bench_canonize.py`` →
``benchmarks/results/bench_canonize.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import interleaved_timings, write_results
from torch import Tensor, nn

from motion_relevance.explain import DeepTaylor
from motion_relevance.explain.canonize_trace import _canonize, canonized
from motion_relevance.models import r3d_18


class UserBlock(nn.Module):
    """torchvision's video BasicBlock as written there (keys as in the zoo's r3d_18)."""

    def __init__(self, cin: int, cout: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv3d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm3d(cout))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        out = self.conv2(self.conv1(x))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class UserR3D(nn.Module):
    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(nn.Conv3d(3, w[0], (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                                  nn.BatchNorm3d(w[0]), nn.ReLU(inplace=True))
        cin = w[0]
        for i, cout in enumerate(w):
            stride = 1 if i == 0 else 2
            ds = None
            if stride != 1 or cin != cout:
                ds = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))
            setattr(self, f"layer{i + 1}", nn.Sequential(UserBlock(cin, cout, stride, ds),
                                                         UserBlock(cout, cout, 1, None)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _pair(width: float, classes: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    zoo = r3d_18(num_classes=classes, width=width).eval()
    user = UserR3D(zoo.stem[0].out_channels, classes).eval()
    user.load_state_dict(zoo.state_dict())
    return user, zoo


#: Phases of canonization, before (every module traced, calls recorded and the canonized copy's structure traced with
#: real forward passes, the logits check with two more) and after (each module structure traced once, recording and
#: structure on the meta device, the check reusing the recording pass's logits).
PHASES = ("record calls", "rewrite", "structure of the copy", "logits check")
PATHS = {  # what each use of canonization runs: phases of the old and the new code
    "explainer's first call": (("record calls", "rewrite", "structure of the copy"),
                               ("record calls", "rewrite", "structure of the copy")),
    "canonize(model, clips)": (("record calls", "rewrite", "logits check"),
                               ("record calls (real)", "rewrite", "logits check")),
    "canonize(..., check=False)": (("record calls", "rewrite"), ("record calls", "rewrite")),
}


def phases(model: nn.Module, x: Tensor) -> dict[str, dict[str, float]]:
    """Seconds per phase of canonizing ``model`` on the first clip of ``x``, old and new code paths, one run each
    (``_canonize``'s switches and the phase functions of ``explain.canonize_trace``), and the totals of
    :data:`PATHS`."""
    from motion_relevance.explain import canonize_trace as ct
    from motion_relevance.explain._copy import eval_copy
    from motion_relevance.explain.validation import analyse_model

    def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        return value, time.perf_counter() - start

    out: dict[str, dict[str, float]] = {"old": {}, "new": {}}
    reference = None
    for mode in ("old", "new"):
        new = mode == "new"
        work = eval_copy(model)
        (calls, want), out[mode]["record calls"] = timed(ct._record_calls, work, x, on_meta=new)
        record = ct.Canonized(model=work)
        rewriter = ct._Rewriter(record, False, calls)
        rewriter.reuse = new
        _, out[mode]["rewrite"] = timed(rewriter.module, work, "")
        if new:
            _, out[mode]["structure of the copy"] = timed(ct._structure, record, x)
            # the checked path records with a real pass, whose output is the reference
            out[mode]["record calls (real)"] = out["old"]["record calls"]
            _, out[mode]["logits check"] = timed(ct._check_logits, model, work, x, reference)
        else:
            reference = want
            _, out[mode]["structure of the copy"] = timed(analyse_model, work, x)
            _, out[mode]["logits check"] = timed(ct._check_logits, model, work, x)
    for name, (old, new) in PATHS.items():
        out["old"][name] = sum(out["old"][k] for k in old)
        out["new"][name] = sum(out["new"][k] for k in new)
    return out


PHASE_NOTE = (
    "record calls: one forward pass of the first clip recording each module's call (new: on the meta device); "
    "rewrite: tracing and rewriting (new: each module structure traced once); structure of the copy: the canonized "
    "copy's structure trace (new: on meta); logits check: two forward passes (new: one, the recording pass gives the "
    "model's own logits, so the checked canonize() records with a real pass). Explainer's first call: what an "
    "explainer adds once per model (it never ran the check); canonize(model, clips): the public API with its check.")


def phase_table(rows: list[tuple[str, dict[str, dict[str, float]]]]) -> list[str]:
    """Markdown: seconds per phase and per use, old -> new."""
    cols = [*PHASES, *PATHS]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, p in rows:
        lines.append(f"| {name} | " + " | ".join(f"{p['old'][c]:.2f} → {p['new'][c]:.2f}" for c in cols) + " |")
    return lines


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = [1e3 * s for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


def run(name: str, width: float, classes: int, shape: tuple[int, ...], repeats: int, explain_repeats: int
        ) -> dict[str, object]:
    user, zoo = _pair(width, classes)
    x = torch.rand(1, *shape) * 2 - 1
    first = time.perf_counter()
    record = canonized(user, x)
    first_s = time.perf_counter() - first
    assert torch.equal(record.model(x), zoo(x)), "canonized logits differ from the module-written network"
    times, rewrite = [], []
    for _ in range(repeats):
        fresh, _ = _pair(width, classes)
        start = time.perf_counter()
        canonized(fresh, x)
        times.append(time.perf_counter() - start)
        fresh, _ = _pair(width, classes)
        start = time.perf_counter()
        _canonize(fresh, None, strict=False)  # the rewrite alone, without the logits check (2 forwards)
        rewrite.append(time.perf_counter() - start)
    with torch.no_grad():
        fwd = interleaved_timings({"forward": lambda: zoo(x)}, {"forward": repeats}, warmup=1)["forward"]
    dtd = DeepTaylor(-1.0, 1.0)
    cases = {"user (canonized, cached)": lambda: dtd(user, x), "zoo (modules)": lambda: dtd(zoo, x)}
    timed = interleaved_timings(cases, dict.fromkeys(cases, explain_repeats), warmup=1)
    per = {k: _stats(v) for k, v in timed.items()}
    added = 100.0 * (per["user (canonized, cached)"]["median_ms"] / per["zoo (modules)"]["median_ms"] - 1.0)
    fresh, _ = _pair(width, classes)
    return {
        "phases_s": phases(fresh, x),
        "network": name, "clip": list(shape), "parameters": sum(p.numel() for p in user.parameters()),
        "modules_added": len(record.added), "modules_rewritten": len(record.rewritten),
        "canonize_first_call_ms": 1e3 * first_s, "canonize": _stats(times), "rewrite_only": _stats(rewrite),
        "forward": _stats(fwd),
        "dtd": per, "dtd_added_percent": added,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="canonizations of fresh models per network")
    parser.add_argument("--explain-repeats", type=int, default=3, help="DTD calls per model and network")
    parser.add_argument("--quick", action="store_true", help="tiny network only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = [run("tiny (r3d_18 width 1/16)", 0.0625, 5, (3, 8, 32, 32), args.repeats, args.explain_repeats)]
    if not args.quick:
        rows.append(run("full r3d_18", 1.0, 400, (3, 16, 112, 112), args.repeats, args.explain_repeats))
    lines = ["# Canonization by tracing", "",
             "| network | params | modules added | canonize (median) | rewrite only | first call | forward | "
             "DTD user | DTD zoo | added |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["dtd"]
        lines.append(
            f"| {r['network']} | {r['parameters'] / 1e6:.2f} M | {r['modules_added']} | "
            f"{r['canonize']['median_ms']:.0f} ms | {r['rewrite_only']['median_ms']:.0f} ms | "
            f"{r['canonize_first_call_ms']:.0f} ms | "
            f"{r['forward']['median_ms']:.0f} ms | {d['user (canonized, cached)']['median_ms']:.0f} ms | "
            f"{d['zoo (modules)']['median_ms']:.0f} ms | {r['dtd_added_percent']:+.1f} % |")
    lines += ["", "canonize: rewrite of a fresh model object incl. the logits check on one clip (two forward passes; "
              "target <= 2 s); rewrite only: without that check; "
              "DTD: ms/clip after the first explanation, interleaved; added = user / zoo - 1 (target 0 %).", "",
              "## Phases, seconds, old code path → new (one run each, same process)", ""]
    lines += phase_table([(r["network"], r["phases_s"]) for r in rows])
    lines += ["", PHASE_NOTE]
    json_path, _ = write_results("bench_canonize", {"rows": rows}, "\n".join(lines))
    print("\n".join(lines))
    print(json_path)


if __name__ == "__main__":
    main()
