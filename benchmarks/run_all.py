"""Run every ``benchmarks/bench_*.py`` (each in its own subprocess) and write the machine summary.

``make bench`` = ``.venv/bin/python benchmarks/run_all.py``: the benchmarks are discovered by glob, run one after
the other with the arguments in ``PLAN`` (sized so that the whole run takes about 31 minutes on 2 CPU cores;
a benchmark missing from ``PLAN`` runs with its defaults, or ``--quick`` in a smoke run when it accepts it), each
under its own timeout. Their ``results/<name>.json`` files are collected into ``results/<machine>.json`` and a
markdown summary ``results/<machine>.md`` with one section per item of the benchmarks issue (our figure, the
alternative's figure and the ratio), the run log and the machine block; ``results/README.md`` indexes the
machine summaries. A failing benchmark is reported in the summary (with the tail of its stderr), the others
still run, and the exit status is non-zero at the end.

Usage::

    .venv/bin/python benchmarks/run_all.py                 # full run → benchmarks/results/
    .venv/bin/python benchmarks/run_all.py --quick         # smoke run (minutes) → benchmarks/results/quick/
    .venv/bin/python benchmarks/run_all.py --only bench_table4,bench_memory
    .venv/bin/python benchmarks/run_all.py --device cuda   # benchmarks that take --device run on the GPU
    .venv/bin/python benchmarks/run_all.py --collect-only --out DIR   # summarise existing DIR/bench_*.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

#: Per benchmark: arguments of the full and the quick run, timeout (s) of the full run, estimated full-run
#: seconds on 2 quiet CPU cores, and whether it takes ``--device``. The estimates add up to ~31 minutes (``--list``
#: prints the sum).
PLAN: dict[str, dict[str, Any]] = {
    "bench_table4": {
        "full": ["--clips", "30", "--warmup", "2", "--b8-batches", "2", "--b8-warmup", "0"],
        "quick": [
            "--clips",
            "2",
            "--warmup",
            "1",
            "--b8-batches",
            "1",
            "--b8-warmup",
            "0",
            "--methods",
            "dtd,gradcam,gbp,guided_gradcam",
            "--b8-methods",
            "gradcam",
        ],
        "timeout": 600,
        "est_s": 270,
        "device": True,
    },
    "bench_explainers": {  # full C3D batch 8 is measured by bench_table4: only batch 1 here
        "full": ["--repeats", "3", "--full-batches", "1"],
        "quick": ["--repeats", "1", "--full-batches", ""],
        "timeout": 600,
        "est_s": 200,
        "device": False,
    },
    "bench_hf": {  # VideoMAE-B at 8 frames (16 exceeds the per-model timeout on a shared 2-core machine)
        "full": ["--repeats", "2", "--videomae-frames", "8"],
        "quick": ["--quick", "--repeats", "1"],
        "timeout": 900,
        "est_s": 300,
        "device": False,
    },
    "bench_canonize": {
        "full": ["--repeats", "3", "--explain-repeats", "2"],
        "quick": ["--quick", "--repeats", "2", "--explain-repeats", "1"],
        "timeout": 600,
        "est_s": 150,
        "device": False,
    },
    "bench_selective": {
        "full": [],
        "quick": ["--repeats", "5", "--authors-repeats", "2", "--threads", "2"],
        "timeout": 180,
        "est_s": 25,
        "device": True,
    },
    "bench_flow": {"full": [], "quick": ["--clips-per-video", "1"], "timeout": 240, "est_s": 45, "device": False},
    "bench_training": {
        "full": ["--small-steps", "30", "--full-steps", "4", "--warmup", "2"],
        "quick": ["--small-steps", "3", "--full-steps", "1", "--warmup", "1"],
        "timeout": 420,
        "est_s": 150,
        "device": True,
    },
    "bench_memory": {
        "full": [],
        "quick": ["--methods", "forward,gradcam,selective"],
        "timeout": 300,
        "est_s": 60,
        "device": True,
    },
    "bench_loader": {"full": [], "quick": ["--rounds", "1"], "timeout": 300, "est_s": 90, "device": False},
    "bench_live": {
        "full": [],
        "quick": ["--repeats", "1", "--explainers", "gradcam"],
        "timeout": 300,
        "est_s": 120,
        "device": True,
    },
    "bench_explain_app": {
        "full": ["--clips", "60"],
        "quick": ["--clips", "4"],
        "timeout": 360,
        "est_s": 120,
        "device": False,
    },
    "bench_sweeps": {"full": [], "quick": ["--scenarios", "small", "--clips", "4"], "timeout": 900, "est_s": 330,
                     "device": False},
}
UNKNOWN = {"full": [], "quick": [], "timeout": 300, "est_s": None, "device": False}
QUICK_TIMEOUT = 600


# ----------------------------------------------------------------------------------------------------------- run
def discover() -> list[Path]:
    """Every ``bench_*.py`` next to this file, sorted by name."""
    return sorted(HERE.glob("bench_*.py"))


def plan_for(path: Path, quick: bool, device: str) -> tuple[list[str], float]:
    """(arguments, timeout) of one benchmark for this run."""
    plan = PLAN.get(path.stem, UNKNOWN)
    args = list(plan["quick" if quick else "full"])
    if quick and not args and '"--quick"' in path.read_text():
        args.append("--quick")
    if device != "cpu" and plan["device"]:
        args += ["--device", device]
    return args, float(QUICK_TIMEOUT if quick else plan["timeout"])


def run_one(path: Path, args: list[str], timeout: float, out: Path, quick: bool) -> dict[str, Any]:
    """Run one benchmark in a subprocess; return its status, wall time, log paths and stderr tail."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MR_BENCH_RESULTS_DIR": str(out),
        "BENCH_QUICK": "1" if quick else "0",
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
    }
    cmd = [sys.executable, str(path), *args]
    start = time.time()
    stdout_path, stderr_path = logs / f"{path.stem}.out", logs / f"{path.stem}.err"
    with open(stdout_path, "w") as so, open(stderr_path, "w") as se:
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=so, stderr=se, start_new_session=True)
            rc: int | None = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the benchmark and its workers (its own session)
            proc.wait()
            rc, status = None, f"timed out after {timeout:.0f} s"
    wall = time.time() - start
    json_path = out / f"{path.stem}.json"
    fresh = json_path.exists() and json_path.stat().st_mtime >= start - 1
    if status == "ok" and not fresh:
        status = "failed (no results JSON written)"
    tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-25:])
    return {
        "name": path.stem,
        "cmd": " ".join(["python", f"benchmarks/{path.name}", *map(_quote, args)]),
        "status": status,
        "rc": rc,
        "wall_s": round(wall, 1),
        "est_s": PLAN.get(path.stem, UNKNOWN)["est_s"],
        "timeout_s": timeout,
        "stderr_tail": "" if status == "ok" else tail,
        "log": str(stdout_path.relative_to(out)),
        "json": json_path.name if fresh else None,
    }


def _quote(a: str) -> str:
    return a if a and re.fullmatch(r"[\w.,=/:-]+", a) else repr(a)


# ------------------------------------------------------------------------------------------------------ machine
def machine_slug(info: dict[str, Any], device: str) -> str:
    """``cpu-<model>-<N>c`` or ``gpu-<name>``, lower-case, dashes only."""

    def slug(s: str) -> str:
        s = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|\bprocessor\b|\bwith\b.*$|\b\d+-core\b", " ", s.lower())
        return re.sub(r"[^a-z0-9]+", "-", s).strip("-")

    if device == "cuda" and info.get("cuda"):
        return f"gpu-{slug(str(info['cuda']))}"
    return f"cpu-{slug(str(info.get('cpu_model', 'unknown')))}-{info.get('cpus_usable') or info.get('cpu_count')}c"


# ------------------------------------------------------------------------------------------------------ summary
def _load(out: Path, name: str) -> dict[str, Any] | None:
    p = out / f"{name}.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _x(a: float | None, b: float | None, spec: str = ".2f") -> str:
    """Ratio ``a / b`` formatted with an x, or "–"."""
    if a is None or b is None or not b:
        return "–"
    return f"{format(a / b, spec)}x"


def _n(x: float | None, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def sec_table4(d: dict) -> list[str]:
    r = d["results"]
    meta = r["meta"]
    out = [
        f"Full C3D(101), 16x112x112, device {meta['device']} ({meta['device_name']}); batch 1 mean ± std over "
        f"{meta['clips']} distinct clips; selective = sigma 4. Alternative columns: the paper (GTX 1080 Ti) "
        "where quoted, and batch 1 for the batch-8 throughput.",
        "",
        "| method | original ms/clip | + selective ms/clip | with / original | paper original | paper + selective "
        "| ours / paper | B=1 clips/s | B=8 clips/s | B=8 / B=1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        o, w = row["original_ms"], row["with_selective_ms"]
        paper = row.get("paper_ms", {})
        b1 = 1e3 / w["mean"]
        b8 = row.get("b8", {}).get("clips_per_s")
        out.append(
            f"| {row['method']} | {o['mean']:.1f} ± {o['std']:.1f} | {w['mean']:.1f} ± {w['std']:.1f} | "
            f"{row['selective_ratio']:.4f} | {_n(paper.get('original'))} | {_n(paper.get('selective'))} | "
            f"{_x(o['mean'], paper.get('original'))} | {b1:.2f} | {_n(b8, '.2f')} | {_x(b8, b1)} |"
        )
    if not meta.get("paper_quoted"):
        out += [
            "",
            "The paper's Table 4 figures are not quoted here, so the paper columns are "
            "empty (fill `PAPER_TABLE4` in bench_table4.py).",
        ]
    return out


def sec_selective(d: dict) -> list[str]:
    r = d["results"]
    out = [
        "Relevance (B, 3, 16, 112, 112), sigma 4. Ours = `selective_relevance` (replicate padding, torch "
        "operations); authors = 3-channel conv3d formulation; floor = one elementwise pass `R * 1.0`. First call in "
        f"a fresh process (start-up): {_n(r.get('first_call_ms'))} ms.",
        "",
        "| device | threads | B | ours ms/clip | authors ms/clip | authors / ours | floor ms/clip "
        "| ours / floor | same mask as authors (zeros padding) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        st = row["stats"]
        ours, auth, floor = (st[k]["median_ms"] for k in ("selective (replicate)", "authors conv3d", "floor R*1.0"))
        out.append(
            f"| {row.get('device', 'cpu')} | {row['threads']} | {row['batch']} | {ours:.3f} | {auth:.3f} | "
            f"{_x(auth, ours, '.1f')} | {floor:.3f} | {_x(ours, floor, '.1f')} | "
            f"{row['same_mask_as_authors']} (agreement {row['agree']:.6f}) |"
        )
    return out


def sec_frame_inflation(d: dict) -> list[str]:
    r = d["results"]
    out = [
        "DTD + selective relevance (ours) vs the frame-inflation baseline around DTD, C3D-like 3-block net, "
        "56 px, batch 1 (median ms per clip).",
        "",
        "| T | DTD + selective ms | frame inflation ms | frame inflation / ours |",
        "|---|---|---|---|",
    ]
    for row in r["frame_inflation"]:
        out.append(
            f"| {row['T']} | {row['dtd_plus_selective_ms']:.1f} | {row['frame_inflation_ms']:.1f} | "
            f"{row['ratio']:.1f}x |"
        )
    wrapped = [m for m in r["models"] if m.get("bare_captum_ms") is not None]
    if wrapped:
        out += [
            "",
            "Our explainer wrappers vs the bare Captum call (same target, eval model prepared beforehand):",
            "",
            "| model | B | method | ours ms/clip | bare Captum ms/clip | ours / Captum (medians) | ours / Captum "
            "(fastest calls) | wrapper's own cost, % of bare | selective % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in wrapped:
            fastest, fixed = m.get("wrapper_overhead_min_pct"), m.get("wrapper_fixed_pct")
            out.append(
                f"| {m['model']} | {m['batch']} | {m['explainer']} | {m['ours_same_target_ms']:.1f} | "
                f"{m['bare_captum_ms']:.1f} | {_x(m['ours_same_target_ms'], m['bare_captum_ms'])} | "
                f"{'–' if fastest is None else f'{1 + fastest / 100:.2f}x'} | {_n(fixed)} | "
                f"{m['selective_pct']:.2f} |"
            )
        out += [
            "",
            "The end-to-end ratios carry the noise of two long runs on a shared machine (±10 % here); the wrapper's "
            "own cost is measured directly: the same call with the Captum work replaced by its result.",
        ]
    return out


def sec_flow(d: dict) -> list[str]:
    r = d["results"]
    fl = r["flow_ms_per_clip"]
    ref = fl["farneback"]["median"]
    out = [
        f"{r['clips']} real 16x112x112 clips. Ours (default) = Farnebäck with the authors' parameters; "
        "alternative = DIS. Precision agreement: largest mean |Δ precision| vs Farnebäck over the stand-in "
        "explanations, and the moving-mask IoU.",
        "",
        "| method | ms/clip (median) | Farnebäck ms/clip | Farnebäck / method | mask IoU vs Farnebäck | "
        "max mean abs Δ precision | min Pearson r |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, s in fl.items():
        iou = r["mask_iou_vs_farneback"].get(m, {}).get("mean")
        diffs = [per[m]["mean_abs_diff_vs_farneback"] for per in r["precision"].values() if m in per]
        rs = [per[m]["pearson_vs_farneback"] for per in r["precision"].values() if m in per]
        out.append(
            f"| {m} | {s['median']:.1f} | {ref:.1f} | {_x(ref, s['median'])} | {_n(iou, '.3f')} | "
            f"{_n(max(diffs) if diffs else None, '.3f')} | {_n(min(rs) if rs else None, '.3f')} |"
        )
    return out


def sec_training(d: dict) -> list[str]:
    r = d["results"]
    target = r["meta"].get("target_wait_share", 0.1)
    out = [
        f"Plain loop (next(batch) | forward, CE, backward, SGD), device {r['meta']['device']}. Ours = the default "
        f"2 DataLoader workers; alternative = num_workers=0; floor = compute only. Target: data wait < "
        f"{100 * target:.0f} % with 2 workers.",
        "",
        "| model | data | clips/s (2 workers) | data wait % | clips/s (0 workers) | data wait % | 2 / 0 workers "
        "| compute-only clips/s | 2 workers / compute-only | target met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    models = dict.fromkeys(row["model"] for row in r["rows"])
    for model in models:
        by = {row["num_workers"]: row for row in r["rows"] if row["model"] == model}
        dft, alt = by.get(2), by.get(0)
        floor = max(row["compute_only_clips_per_s"] for row in by.values())
        out.append(
            f"| {model} | {r['meta']['data'].get(model, '')} | {_n(dft and dft['clips_per_s'])} | "
            f"{_n(dft and 100 * dft['data_wait_share'])} | {_n(alt and alt['clips_per_s'])} | "
            f"{_n(alt and 100 * alt['data_wait_share'])} | "
            f"{_x(dft and dft['clips_per_s'], alt and alt['clips_per_s'])} | {floor:.1f} | "
            f"{_x(dft and dft['clips_per_s'], floor)} | "
            f"{'–' if not dft else ('yes' if dft['data_wait_share'] < target else 'NO')} |"
        )
    return out


def sec_memory(d: dict) -> list[str]:
    r = d["results"]
    out = [
        f"One full-C3D clip, fresh process per method, device {r['meta']['device']} ({r['meta']['how']}); "
        f"model parameters {r['meta']['params_mib']:.0f} MiB. Alternative/floor = the forward pass alone.",
        "",
        "| method | peak increase MiB | forward-only MiB | method / forward |",
        "|---|---|---|---|",
    ]
    floor = next((row["peak_mib"] for row in r["rows"] if row["method"] == "forward"), None)
    for row in r["rows"]:
        out.append(f"| {row['method']} | {row['peak_mib']:.1f} | {_n(floor)} | {_x(row['peak_mib'], floor, '.1f')} |")
    return out


def sec_loader(d: dict) -> list[str]:
    cp = d["results"]["clips_per_s"]
    out = [
        "Decode 16 frames + resize 128x171 + crop 112 + normalise. Ours = VideoClipDataset (decord); "
        "alternatives = OpenCV VideoCapture per clip, and a naive decord reader per clip.",
        "",
        "| access | workers | ours clips/s | OpenCV per clip | ours / OpenCV | naive decord | ours / naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for pattern, row in cp.items():
        for w in (0, 2):
            ours, cv, naive = (row.get(f"{k}_w{w}") for k in ("ours_decord", "opencv_per_clip", "naive_decord"))
            out.append(
                f"| {pattern} | {w} | {_n(ours)} | {_n(cv)} | {_x(ours, cv)} | {_n(naive)} | {_x(ours, naive)} |"
            )
    return out


def sec_live(d: dict) -> list[str]:
    r = d["results"]
    dec = r["decoding"]
    ours_key = next(k for k in dec if k.startswith("incremental"))
    ours = dec[ours_key]["ms_per_window"]
    need = r["source_fps"] / r["stride"]
    out = [
        f"Window {r['window']}, stride {r['stride']}. Frame source: ours = incremental decoding; alternatives "
        "= re-decoding each window, decoding the whole video first.",
        "",
        "| frame source | ms/window | / ours | frames held MB |",
        "|---|---|---|---|",
    ]
    for k, v in dec.items():
        out.append(
            f"| {k} | {v['ms_per_window']:.1f} | {_x(v['ms_per_window'], ours)} | {v.get('frames_held_mb', 0):.1f} |"
        )
    out += [
        "",
        f"Pipeline vs real time (a {r['source_fps']:g} fps source needs {need:.3f} windows/s):",
        "",
        "| model | device | explainer | overlay video | windows/s | needed | real-time factor | latency ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in r["pipeline"]:
        out.append(
            f"| {p['model']} | {p['device']} | {p['explainer']} | {'yes' if p['overlay_video'] else 'no'} | "
            f"{p['windows_per_s']:.2f} | {need:.3f} | {p['real_time_factor']:.2f} | "
            f"{p['latency_ms_median']:.0f} |"
        )
    return out


def sec_explain_app(d: dict) -> list[str]:
    r = d["results"]
    runs = {run["tag"]: run for run in r["runs"]}
    cold, warm = r["runs"][0], r["runs"][-1]
    out = [
        f"`mr-explain` end to end on {r['clips']} motion_shapes clips, 4 methods + selective. Ours = flow cache "
        "warm; alternative = cold cache. Target: flow <= 5 % of the run with the cache warm.",
        "",
        "| run | clips/s | flow share % | vs cold |",
        "|---|---|---|---|",
    ]
    for tag, run in runs.items():
        out.append(
            f"| {tag} | {run['clips_per_s']:.2f} | {100 * run['shares']['flow']:.1f} | "
            f"{_x(run['clips_per_s'], cold['clips_per_s'])} |"
        )
    out.append(f"\nTarget met: {'yes' if warm['shares']['flow'] <= r.get('target_warm_flow_share', 0.05) else 'NO'}.")
    return out


#: Issue items in order: (title, benchmark, section builder). ``None`` = embed the benchmark's own markdown.
SECTIONS: list[tuple[str, str, Callable[[dict], list[str]] | None]] = [
    ("1. Table 4: explanation time per clip, original and selective (full C3D)", "bench_table4", sec_table4),
    ("2. Selective relevance vs the authors' formulation vs the floor", "bench_selective", sec_selective),
    ("3. Frame inflation vs selective relevance (T = 8, 16, 32)", "bench_explainers", sec_frame_inflation),
    ("4. Optical flow: Farnebäck vs DIS, time and precision agreement", "bench_flow", sec_flow),
    ("5. Training throughput and data wait", "bench_training", sec_training),
    ("6. Peak memory of explaining one full-C3D clip", "bench_memory", sec_memory),
    ("7. Clip loader vs OpenCV", "bench_loader", sec_loader),
    ("8. Live explanations", "bench_live", sec_live),
    ("9. Sweeps", "bench_sweeps", None),
    ("10. mr-explain end to end (flow cache)", "bench_explain_app", sec_explain_app),
]


def _embedded(out: Path, name: str) -> list[str]:
    md = out / f"{name}.md"
    if not md.exists():
        return [f"(no `{name}.md`; see `{name}.json`)"]
    text = md.read_text().strip().splitlines()
    return [("##" + line) if line.startswith("#") else line for line in text]


def summarise(out: Path, runs: list[dict], info: dict, slug: str, args: argparse.Namespace) -> str:
    """The markdown summary: one section per issue item, then failures, run log and machine."""
    by_name = {r["name"]: r for r in runs}
    lines = [
        f"# Benchmarks on `{slug}`{' (QUICK smoke run: figures are not meaningful)' if args.quick else ''}",
        "",
        f"Device: {args.device}. Written by `benchmarks/run_all.py` on {info.get('date')}; each row shows "
        "our figure, the alternative's figure and the ratio. Per-benchmark details: the `bench_*.md` files "
        "beside this one.",
        "",
    ]
    known = {name for _, name, _ in SECTIONS}
    extra = [(f"{p.stem}", p.stem, None) for p in sorted(out.glob("bench_*.json")) if p.stem not in known]
    for title, name, build in [*SECTIONS, *extra]:
        lines += [f"## {title}", ""]
        run = by_name.get(name)
        data = _load(out, name)
        if run is not None and run["status"] != "ok":
            lines += [f"**FAILED** — `{name}`: {run['status']} (see Failures below)", ""]
            continue
        if data is None:
            lines += [f"Not run in this pass (no `{name}.json`).", ""]
            continue
        try:
            body = build(data) if build else _embedded(out, name)
        except Exception as exc:  # a schema change in a benchmark must not lose the rest of the summary
            body = [
                f"(summary of `{name}` failed: {type(exc).__name__}: {exc}; its own report follows)",
                "",
                *_embedded(out, name),
            ]
        lines += [*body, ""]
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        lines += ["## Failures", ""]
        for r in failed:
            lines += [
                f"### {r['name']}: {r['status']}",
                "",
                f"`{r['cmd']}`",
                "",
                "```",
                r["stderr_tail"] or "(empty)",
                "```",
                "",
            ]
    if runs:
        total = sum(r["wall_s"] for r in runs)
        lines += [
            "## Run log",
            "",
            "| benchmark | status | wall s | estimate s (full, 2 quiet cores) | command |",
            "|---|---|---|---|---|",
        ]
        for r in runs:
            lines.append(
                f"| {r['name']} | {r['status']} | {r['wall_s']:.0f} | {_n(r['est_s'], '.0f')} | `{r['cmd']}` |"
            )
        lines += ["", f"Total: {total:.0f} s ({total / 60:.1f} min)."]
    sources = []
    for p in sorted(out.glob("bench_*.json")):
        m = (_load(out, p.stem) or {}).get("machine", {})
        sources.append(
            f"| {p.stem} | {m.get('date')} | {m.get('cpu_model')} ({m.get('cpus_usable')} usable) | "
            f"{m.get('cuda')} | {m.get('torch')} |"
        )
    if sources:
        lines += [
            "",
            "## Sources (the machine each results file was written on)",
            "",
            "| benchmark | written | CPU | CUDA device | torch |",
            "|---|---|---|---|---|",
            *sources,
        ]
    lines += ["", "## Machine", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    return "\n".join(lines) + "\n"


def write_index(index_dir: Path) -> Path:
    """``README.md`` in ``index_dir`` linking every machine summary found under it (quick runs apart)."""
    rows = []
    for p in sorted(index_dir.rglob("*.json")):
        if "quick" in p.relative_to(index_dir).parts[:-1] and index_dir.name != "quick":
            continue
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(d, dict) or d.get("kind") != "machine_summary":
            continue
        rel = p.with_suffix(".md").relative_to(index_dir)
        ok = sum(r["status"] == "ok" for r in d["runs"])
        rows.append(
            f"| [{d['machine_slug']}]({rel.as_posix()}) | {d['device']} | {d['machine'].get('date')} | "
            f"{'quick' if d['quick'] else 'full'} | "
            + (f"{ok}/{len(d['runs'])} ok |" if d["runs"] else "collected from existing results |")
        )
    text = (
        "# Benchmark results\n\nOne summary per machine, written by `benchmarks/run_all.py` (`make bench`); "
        "`bench_*.{json,md}` are the latest per-benchmark files.\n\n"
        "| machine | device | date | run | benchmarks |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    path = index_dir / "README.md"
    path.write_text(text)
    return path


def main() -> int:
    """Run (or collect) the benchmarks, write the summary and the index; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run with tiny sizes (writes to results/quick/)")
    ap.add_argument("--only", default="", help="comma list of benchmark names (bench_x or x)")
    ap.add_argument("--skip", default="", help="comma list of benchmark names to leave out")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="for benchmarks that take --device")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default results/ or results/quick/)")
    ap.add_argument("--collect-only", action="store_true", help="do not run: summarise the JSON files in --out")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    args = ap.parse_args()
    out = (args.out or (RESULTS / "quick" if args.quick else RESULTS)).resolve()
    out.mkdir(parents=True, exist_ok=True)

    def norm(s: str) -> set[str]:
        return {n if n.startswith("bench_") else f"bench_{n}" for n in s.split(",") if n}

    only, skip = norm(args.only), norm(args.skip)
    paths = [p for p in discover() if (not only or p.stem in only) and p.stem not in skip]
    if args.list:
        for p in paths:
            a, t = plan_for(p, args.quick, args.device)
            print(f"{p.stem:20s} est {PLAN.get(p.stem, UNKNOWN)['est_s']} s, timeout {t:.0f} s: {' '.join(a)}")
        total = sum(PLAN.get(p.stem, UNKNOWN)["est_s"] or 0 for p in paths)
        print(f"estimated total {total / 60:.0f} min (full run, 2 quiet CPU cores)")
        return 0
    runs: list[dict[str, Any]] = []
    if not args.collect_only:
        for p in paths:
            a, t = plan_for(p, args.quick, args.device)
            print(f"[run_all] {p.stem} {' '.join(map(_quote, a))} (timeout {t:.0f} s)", flush=True)
            r = run_one(p, a, t, out, args.quick)
            runs.append(r)
            print(f"[run_all] {p.stem}: {r['status']} in {r['wall_s']:.0f} s", flush=True)
            if r["status"] != "ok":
                print(r["stderr_tail"], file=sys.stderr, flush=True)
    from _common import machine_info

    info = {**machine_info(), "device": args.device}
    if args.collect_only:  # describe the machine the results came from, not the one summarising them
        written = sorted(out.glob("bench_*.json"))
        if written:
            recorded = json.loads(written[0].read_text()).get("machine") or {}
            info = {**recorded, "device": args.device}
    slug = machine_slug(info, args.device) + ("-quick" if args.quick else "")
    previous = _load(out, slug)
    if args.collect_only and previous and previous.get("kind") == "machine_summary":
        runs = previous.get("runs", [])  # keep the run log of the run that produced these files
    summary = summarise(out, runs, info, slug, args)
    payload = {
        "kind": "machine_summary",
        "machine_slug": slug,
        "device": args.device,
        "quick": args.quick,
        "machine": info,
        "runs": runs,
        "results": {p.stem: (_load(out, p.stem) or {}).get("results") for p in sorted(out.glob("bench_*.json"))},
    }
    (out / f"{slug}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / f"{slug}.md").write_text(summary)
    index_dir = out if args.quick or out.parent != RESULTS else out.parent
    index = write_index(index_dir)
    failed = [r["name"] for r in runs if r["status"] != "ok"]
    print(f"[run_all] wrote {out / (slug + '.md')}, {out / (slug + '.json')}, {index}", flush=True)
    if failed:
        print(f"[run_all] FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
