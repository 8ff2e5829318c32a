"""Tables, figures and W&B logging of the motion_vs_context study (called by run.py).

Every number is a mean over clips with its standard error (s.e.m. = std / sqrt(n), ddof 1) unless marked
otherwise; paired differences (selective - baseline, replicate - zeros) carry a 95 % bootstrap interval over
clips. Undefined per-clip values (e.g. precision of an empty explanation) are counted, never averaged.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from scipy.stats import spearmanr

from motion_relevance.viz.plots import plot_metric_vs_sigma

Row = dict[str, Any]
METRICS = ("gt_precision", "gt_recall", "f1", "motion_share", "flow_precision")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


# ------------------------------------------------------------------------------------------------ helpers
def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows (dicts) to CSV with the union of their keys as columns."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def _vals(rows: Iterable[Row], key: str) -> np.ndarray:
    v = np.array([float(r.get(key, math.nan)) for r in rows], dtype=float)
    return v[np.isfinite(v)]


def mean_sem(rows: Iterable[Row], key: str) -> tuple[float, float, int]:
    """Mean, s.e.m. and count of the defined values of ``key``."""
    v = _vals(list(rows), key)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan, len(v)


def paired(a: Sequence[Row], b: Sequence[Row], key: str, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` over clips where both are defined, with a 95 % bootstrap interval (rows align by clip)."""
    ka = {(r["model"], r["seed"], r["clip"]): float(r[key]) for r in a}
    diffs = np.array([float(r[key]) - ka[(r["model"], r["seed"], r["clip"])] for r in b
                      if (r["model"], r["seed"], r["clip"]) in ka], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boots = diffs[rng.integers(0, len(diffs), (n_boot, len(diffs)))].mean(1)
    return float(diffs.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def select(rows: Iterable[Row], **where: Any) -> list[Row]:
    """Rows whose fields equal ``where`` (floats compared with a tolerance)."""
    out = []
    for r in rows:
        ok = True
        for k, v in where.items():
            x = r.get(k)
            ok = math.isclose(x, v, abs_tol=1e-9) if isinstance(v, float) and isinstance(x, float) else x == v
            if not ok:
                break
        if ok:
            out.append(r)
    return out


def fmt(mean: float, sem: float | None = None, digits: int = 3) -> str:
    """``0.123 ± 0.004`` (or ``–`` when undefined)."""
    if mean is None or not math.isfinite(mean):
        return "–"
    if sem is None or not math.isfinite(sem):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sem:.{digits}f}"


def fmt_ci(d: tuple[float, float, float], digits: int = 3) -> str:
    """``+0.123 [0.100, 0.140]``."""
    m, lo, hi = d
    if not math.isfinite(m):
        return "–"
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def markdown(rows: Sequence[Mapping[str, Any]], cols: Sequence[str] | None = None) -> str:
    """A GitHub markdown table."""
    if not rows:
        return "(no rows)\n"
    cols = list(cols or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ tables
def table_models(records: dict[str, Any]) -> list[Row]:
    """Accuracy (clean and background-swapped test list) and wall times of every trained model."""
    out = []
    for m in records["models"]:
        out.append({"model": m["model"], "seed": m["seed"], "checkpoint": m["trained_on"],
                    "generator": m["generator"],
                    "test_acc": round(m["test_acc"], 4), "test_clips": m["test_clips"],
                    "swap_acc": round(m["swap_acc"], 4) if m.get("swap_acc") is not None else "",
                    "train_wall_s": round(m["train_wall_s"], 1), "ckpt_reused": bool(m.get("reused", False)),
                    "explain_wall_s": round(m["explain_wall_s"], 1),
                    "train_command": m.get("command", "")})
    return out


def table_q1(clips: list[Row], methods: Sequence[str], models: Sequence[str], n_boot: int) -> list[Row]:
    """Q1: baseline vs selective (default sigma/padding): GT precision, motion share, recall, F1, per method."""
    out = []
    seeds = list(dict.fromkeys(r["seed"] for r in clips))
    for model, seed, method in ((m, s, k) for m in models for s in seeds for k in methods):
        base = select(clips, model=model, seed=seed, method=method, variant="baseline")
        sel = select(clips, model=model, seed=seed, method=method, default=True)
        row: Row = {"model": model, "seed": seed, "method": method, "clips": len(base)}
        for key, short in (("gt_precision", "P"), ("motion_share", "share"), ("gt_recall", "R"), ("f1", "F1")):
            row[f"{short}_base"] = fmt(*mean_sem(base, key)[:2])
            row[f"{short}_sel"] = fmt(*mean_sem(sel, key)[:2])
            d = paired(base, sel, key, n_boot)
            row[f"d{short}"] = fmt_ci(d)
            row[f"d{short}_mean"], row[f"d{short}_lo"], row[f"d{short}_hi"] = d
        row["P_undefined_sel"] = len(sel) - mean_sem(sel, "gt_precision")[2]
        out.append(row)
    return out


def table_q2(clips: list[Row], flows: list[Row], methods: Sequence[str], models: Sequence[str]) -> list[Row]:
    """Q2: Spearman rank correlation across clips of flow-based vs ground-truth precision, per condition/method."""
    out = []
    for model in models:
        fl = select(flows, model=model)
        fmp = mean_sem(fl, "flow_mask_precision")
        for method in methods:
            for variant, where in (("baseline", {"variant": "baseline"}), ("selective", {"default": True})):
                rs = [r for r in select(clips, model=model, method=method, **where)
                      if math.isfinite(r["gt_precision"]) and math.isfinite(r["flow_precision"])]
                x = np.array([r["flow_precision"] for r in rs])
                y = np.array([r["gt_precision"] for r in rs])
                rho = float(spearmanr(x, y).statistic) if len(rs) > 2 and x.std() > 0 and y.std() > 0 else math.nan
                out.append({
                    "model": model, "method": method, "variant": variant, "clips": len(rs),
                    "spearman_rho": round(rho, 3) if math.isfinite(rho) else "–",
                    "flow_P": fmt(*mean_sem(rs, "flow_precision")[:2]),
                    "gt_P": fmt(*mean_sem(rs, "gt_precision")[:2]),
                    "flow_minus_gt": fmt(float(np.mean(x - y)) if len(rs) else math.nan),
                    "flow_mask_on_object": fmt(*fmp[:2]),
                    "rho": rho,
                })
    return out


def table_q3(clips: list[Row], models_info: list[Row], methods: Sequence[str], models: Sequence[str],
             seeds: Sequence[int]) -> tuple[list[Row], list[Row]]:
    """Q3: spatial bias (default sigma/padding) per context model and method, next to the swap-accuracy drop."""
    out, checks = [], []
    for model in models:
        for seed in seeds:
            info = next((m for m in models_info if m["model"] == model and m["seed"] == seed), None)
            if info is None:
                continue
            row: Row = {"model": model, "seed": seed, "generator": info["generator"],
                        "test_acc": round(info["test_acc"], 3),
                        "swap_acc": round(info["swap_acc"], 3) if info.get("swap_acc") is not None else "–",
                        "acc_drop": round(info["test_acc"] - info["swap_acc"], 3)
                        if info.get("swap_acc") is not None else "–"}
            for method in methods:
                sel = select(clips, model=model, seed=seed, method=method, default=True)
                m, s, _ = mean_sem(sel, "spatial_bias")
                row[f"bias_{method}"] = fmt(m, s)
                row[f"bias_{method}_mean"] = m
                base = select(clips, model=model, seed=seed, method=method, variant="baseline")
                row[f"share_{method}"] = fmt(*mean_sem(base, "motion_share")[:2])
            out.append(row)
    # does the bias order the models like the swap-accuracy drop does? (Spearman over the context models, per
    # method and sigma, default padding)
    sigmas = sorted({r["sigma"] for r in clips if r["variant"] == "selective"})
    padding = next((r["padding"] for r in clips if r.get("default")), "replicate")
    for seed in seeds:
        rows = [r for r in out if r["seed"] == seed and r["acc_drop"] != "–"]
        drops = [r["acc_drop"] for r in rows]
        for method in methods:
            for sigma in sigmas:
                bias = [mean_sem(select(clips, model=r["model"], seed=seed, method=method, variant="selective",
                                        padding=padding, sigma=sigma), "spatial_bias")[0] for r in rows]
                ok = len(rows) > 1 and bool(np.all(np.isfinite(bias)))
                rho = (float(spearmanr(drops, bias).statistic)
                       if ok and np.std(drops) > 0 and np.std(bias) > 0 else math.nan)
                order_bias = [r["model"] for _, r in sorted(zip(bias, rows), key=lambda p: p[0])]
                order_true = [r["model"] for r in sorted(rows, key=lambda r: r["acc_drop"])]
                checks.append({"seed": seed, "method": method, "sigma": sigma, "padding": padding,
                               "bias": " / ".join(f"{b:.3f}" for b in bias),
                               "order_by_bias": " < ".join(order_bias), "order_by_acc_drop": " < ".join(order_true),
                               "same_order": order_bias == order_true and math.isfinite(rho),
                               "spearman_rho": round(rho, 3) if math.isfinite(rho) else "–"})
    return out, checks


def sigma_grid(clips: list[Row], methods: Sequence[str], model: str, paddings: Sequence[str]) -> list[Row]:
    """Q4 grid: mean of every metric per method x padding x sigma (main model)."""
    out = []
    sigmas = sorted({r["sigma"] for r in clips if r["variant"] == "selective"})
    for method in methods:
        for padding in paddings:
            for sigma in sigmas:
                rs = select(clips, model=model, method=method, variant="selective", padding=padding, sigma=sigma)
                row: Row = {"method": method, "padding": padding, "sigma": sigma, "method_padding":
                            f"{method}/{padding}", "clips": len(rs)}
                for key in (*METRICS, "spatial_bias", "area_ratio"):
                    m, s, _ = mean_sem(rs, key)
                    row[key], row[f"{key}_sem"] = m, s
                out.append(row)
    return out


def table_q4(clips: list[Row], grid: list[Row], methods: Sequence[str], model: str, paddings: Sequence[str],
             default_sigma: float, n_boot: int) -> list[Row]:
    """Q4: best sigma per method and padding (max mean F1 of R_sel vs the GT mask), and replicate - zeros."""
    out = []
    for method in methods:
        base_f1 = mean_sem(select(clips, model=model, method=method, variant="baseline"), "f1")
        for padding in paddings:
            g = [r for r in grid if r["method"] == method and r["padding"] == padding and math.isfinite(r["f1"])]
            if not g:
                continue
            best = max(g, key=lambda r: r["f1"])
            near = [r["sigma"] for r in g if r["f1"] >= best["f1"] - best["f1_sem"]]
            dflt = next((r for r in g if math.isclose(r["sigma"], default_sigma)), None)
            best_p = max(g, key=lambda r: r["gt_precision"] if math.isfinite(r["gt_precision"]) else -1)
            best_s = max(g, key=lambda r: r["motion_share"] if math.isfinite(r["motion_share"]) else -1)
            row: Row = {"method": method, "padding": padding, "best_sigma": best["sigma"],
                        "F1_best": fmt(best["f1"], best["f1_sem"]),
                        "P_best": fmt(best["gt_precision"], best["gt_precision_sem"]),
                        "R_best": fmt(best["gt_recall"], best["gt_recall_sem"]),
                        "sigmas_within_1sem": ",".join(f"{s:g}" for s in near),
                        f"F1_sigma{default_sigma:g}": fmt(dflt["f1"], dflt["f1_sem"]) if dflt else "–",
                        "best_sigma_by_P": f"{best_p['sigma']:g} ({best_p['gt_precision']:.3f})",
                        "best_sigma_by_share": f"{best_s['sigma']:g} ({best_s['motion_share']:.3f})",
                        "F1_baseline": fmt(*base_f1[:2])}
            out.append(row)
        if {"zeros", "replicate"} <= set(paddings):
            z = select(clips, model=model, method=method, variant="selective", padding="zeros", sigma=default_sigma)
            r = select(clips, model=model, method=method, variant="selective", padding="replicate",
                       sigma=default_sigma)
            for row in out[-len(paddings):]:
                row[f"replicate-zeros F1 (sigma {default_sigma:g})"] = fmt_ci(paired(z, r, "f1", n_boot))
                row[f"replicate-zeros P (sigma {default_sigma:g})"] = fmt_ci(paired(z, r, "gt_precision", n_boot))
    return out


def table_q5(clips: list[Row], q4: list[Row], methods: Sequence[str], model: str, default_sigma: float,
             default_padding: str) -> list[Row]:
    """Q5: baseline vs selective (default, best sigma) vs frame inflation, on the clips frame inflation explained."""
    out = []
    for method in methods:
        fi = select(clips, model=model, method=method, variant="frame_inflation")
        ids = {r["clip"] for r in fi}
        if not ids:
            continue
        best = next((r["best_sigma"] for r in q4 if r["method"] == method and r["padding"] == default_padding),
                    default_sigma)
        variants = {
            "baseline": select(clips, model=model, method=method, variant="baseline"),
            f"selective σ={default_sigma:g}": select(clips, model=model, method=method, default=True),
            f"selective σ={best:g} (best)": select(clips, model=model, method=method, variant="selective",
                                                   padding=default_padding, sigma=float(best)),
            "frame inflation": fi,
        }
        for name, rs in variants.items():
            rs = [r for r in rs if r["clip"] in ids and r["seed"] == fi[0]["seed"]]
            row: Row = {"method": method, "variant": name, "clips": len(rs)}
            for key, short in (("gt_precision", "P"), ("gt_recall", "R"), ("f1", "F1"), ("motion_share", "share")):
                row[short] = fmt(*mean_sem(rs, key)[:2])
            row["ms_per_clip"] = fmt(*mean_sem(rs, "time_ms")[:2], digits=1)
            out.append(row)
    return out


# ------------------------------------------------------------------------------------------------ figures
def figures(clips: list[Row], grid: list[Row], q3: list[Row], methods: Sequence[str], cfg: DictConfig,
            fig_dir: Path) -> list[Path]:
    """Sigma curves, flow-vs-GT precision scatter, spatial bias vs context bias."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for padding in cfg.study.paddings:
        rows = [{**r, **{f"{k}_std": r[f"{k}_sem"] for k in ("gt_precision", "gt_recall", "f1", "motion_share")}}
                for r in grid if r["padding"] == padding]
        paths.append(plot_metric_vs_sigma(
            rows, fig_dir / f"sigma_{padding}.png", metrics=("gt_precision", "gt_recall", "f1", "motion_share"),
            group_by="method", title=f"{cfg.study.main_model}: selective relevance vs sigma, padding={padding} "
                                     "(mean ± s.e.m. over clips)"))
    models = [str(m) for m in (*cfg.study.models, *cfg.study.probes)]
    fig, axes = plt.subplots(len(models), len(methods), figsize=(3.0 * len(methods), 2.8 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            for variant, where, colour in (("baseline", {"variant": "baseline"}, "C0"),
                                           ("selective", {"default": True}, "C3")):
                rs = select(clips, model=model, method=method, **where)
                ax.scatter([r["flow_precision"] for r in rs], [r["gt_precision"] for r in rs], s=8, alpha=0.6,
                           color=colour, label=variant)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{model} / {method}", fontsize=9)
            if i == len(models) - 1:
                ax.set_xlabel("flow-based precision")
            if j == 0:
                ax.set_ylabel("ground-truth precision")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "flow_vs_gt_precision.png", dpi=90)
    plt.close(fig)
    paths.append(fig_dir / "flow_vs_gt_precision.png")

    seed0 = cfg.study.seeds[0]
    rows = [r for r in q3 if r["seed"] == seed0]
    if rows:
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        x = np.arange(len(rows))
        width = 0.8 / (len(methods) + 1)
        for k, method in enumerate(methods):
            ax.bar(x + k * width, [r[f"bias_{method}_mean"] for r in rows], width, label=f"spatial bias, {method}")
        drops = [r["acc_drop"] if r["acc_drop"] != "–" else math.nan for r in rows]
        ax.bar(x + len(methods) * width, drops, width, color="k", label="acc - swap acc")
        ax.set_xticks(x + 0.4 - width / 2, [r["model"] for r in rows])
        ax.set_ylabel("share / accuracy drop")
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        ax.set_title("Spatial bias (default sigma) vs true context reliance")
        fig.tight_layout()
        fig.savefig(fig_dir / "spatial_bias.png", dpi=90)
        plt.close(fig)
        paths.append(fig_dir / "spatial_bias.png")
    return paths


# ------------------------------------------------------------------------------------------------ W&B
def log_wandb(cfg: DictConfig, tables: dict[str, list[Row]], summary: dict[str, Any], figs: list[Path],
              out_dir: Path) -> str | None:
    """One W&B run (mode from WANDB_MODE, default offline) with every table and figure; returns its folder."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return None
    run = wandb.init(project="motion_relevance", group=str(cfg.group), job_type="study", name="motion_vs_context",
                     dir=str(out_dir), mode=os.environ.get("WANDB_MODE", "offline"), tags=list(cfg.tags),
                     config=OmegaConf.to_container(cfg.study, resolve=True), reinit=True)
    try:
        for name, rows in tables.items():
            if rows:
                cols = list(dict.fromkeys(k for r in rows for k in r))
                numeric = {c: all(_is_num(r.get(c)) for r in rows) for c in cols}
                data = [[r.get(c) if numeric[c] else _cell(r.get(c)) for c in cols] for r in rows]
                run.log({f"table/{name}": wandb.Table(columns=cols, data=data)})
        for p in figs:
            run.log({f"figure/{p.stem}": wandb.Image(str(p))})
        run.summary.update(summary)
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, float | int) and not isinstance(v, bool))


def _cell(v: Any) -> str:
    """A W&B table cell of a column that is not numeric throughout: text."""
    return "" if v is None else str(v)


def flat_summary(tables: dict[str, list[Row]], keys: Callable[[str, Row], str | None]) -> dict[str, Any]:
    """Every numeric cell of every table as ``<table>/<row key>/<column>``."""
    out: dict[str, Any] = {}
    for name, rows in tables.items():
        for r in rows:
            rk = keys(name, r)
            if rk is None:
                continue
            for c, v in r.items():
                if isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v):
                    out[f"{name}/{rk}/{c}"] = v
    return out


# ------------------------------------------------------------------------------------------------ report
def report(cfg: DictConfig, records: dict[str, Any], out_dir: Path, wall_s: float, overrides: Sequence[str]) -> None:
    """Write CSVs, results.md and figures to ``out_dir``; W&B; publish next to the README when configured."""
    study = cfg.study
    methods = list(study.methods)
    clips, flows = records["clips"], records["flow"]
    main_model = str(study.main_model)
    default_sigma, default_padding = float(cfg.selective.sigma), str(cfg.selective.padding)
    n_boot = int(study.bootstrap)
    seeds = [int(s) for s in study.seeds]
    first = [r for r in clips if r["seed"] == seeds[0]]
    all_models = [str(m) for m in (*study.models, *study.probes)]

    models_t = table_models(records)
    q1 = table_q1(clips, methods, all_models, n_boot)
    q2 = table_q2(first, [r for r in flows if r["seed"] == seeds[0]], methods, all_models)
    q3, q3_check = table_q3(clips, records["models"], methods, [str(m) for m in study.context_models], seeds)
    grid = sigma_grid(first, methods, main_model, list(study.paddings))
    q4 = table_q4(first, grid, methods, main_model, list(study.paddings), default_sigma, n_boot)
    q5 = table_q5(first, q4, methods, main_model, default_sigma, default_padding)
    tables = {"models": models_t, "q1_selective_gain": q1, "q2_flow_vs_gt": q2, "q3_spatial_bias": q3,
              "q3_ranking": q3_check, "q4_sigma_grid": grid, "q4_best_sigma": q4, "q5_frame_inflation": q5}

    csv_dir = out_dir / "csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    write_csv(csv_dir / "per_clip.csv.gz", clips)  # one row per clip, method, sigma, padding
    write_csv(csv_dir / "per_clip_flow.csv", flows)
    for name, rows in tables.items():
        write_csv(csv_dir / f"{name}.csv", rows)
    fig_paths = figures(first, grid, q3, methods, cfg, out_dir / "figures")

    def rowkey(name: str, r: Row) -> str | None:
        parts = [str(r[k]) for k in ("model", "seed", "method", "variant", "padding", "sigma") if k in r]
        return "/".join(parts).replace(" ", "_") or None

    summary = flat_summary(tables, rowkey)
    summary["study/wall_s"] = wall_s
    wandb_dir = log_wandb(cfg, tables, summary, fig_paths, out_dir)

    md = results_markdown(cfg, tables, wall_s, overrides, default_sigma, default_padding, n_boot)
    (out_dir / "results.md").write_text(md)
    (out_dir / "summary.json").write_text(json.dumps({"wall_s": wall_s, "wandb_dir": wandb_dir,
                                                      "overrides": list(overrides)}, indent=2))
    if study.publish:
        publish(out_dir, Path(str(study.publish_dir)).resolve(), Path(str(study.readme)).resolve(), md)


def _drop(rows: list[Row], *patterns: str) -> list[Row]:
    """Rows without the columns whose names match any regex (machine-only columns)."""
    return [{k: v for k, v in r.items() if not any(re.fullmatch(p, k) for p in patterns)} for r in rows]


def results_markdown(cfg: DictConfig, t: dict[str, list[Row]], wall_s: float, overrides: Sequence[str],
                     sigma: float, padding: str, n_boot: int) -> str:
    """The result tables as markdown (pasted between the README markers)."""
    study = cfg.study
    cmd = "python experiments/motion_vs_context/run.py" + "".join(f" {o}" for o in overrides)
    hidden = (r".*_mean", r".*_lo", r".*_hi", "rho")
    q1_main = [r for r in t["q1_selective_gain"] if r["model"] == study.main_model]
    q1_rest = [{k: r[k] for k in ("model", "seed", "method", "clips", "dP", "dshare", "dR")}
               for r in t["q1_selective_gain"] if r["model"] != study.main_model]
    s = [
        f"_Generated by `{cmd}` in {wall_s / 60:.1f} min wall time; {study.num_clips} clips per model, "
        f"seeds {list(study.seeds)}, default selective set-up sigma={sigma:g}, padding={padding}. "
        f"Values: mean ± s.e.m. over clips; Δ: paired mean [95 % bootstrap interval, {n_boot} resamples]._\n",
        "### Models\n", markdown(_drop(t["models"], "train_command")),
        f"### Q1 — selective vs baseline on `{study.main_model}` (P = GT precision, share = motion share, "
        "R = GT recall)\n",
        markdown(_drop(q1_main, *hidden)),
        "\nΔ on the other models:\n", markdown(q1_rest),
        "### Q2 — flow-based vs ground-truth precision (Spearman ρ across clips; flow_mask_on_object = share of "
        "flow-'moving' voxels on the object)\n",
        markdown(_drop(t["q2_flow_vs_gt"], *hidden)),
        "![flow vs GT precision](results/figures/flow_vs_gt_precision.png)\n",
        "### Q3 — spatial bias (1 − mass ratio) vs true context reliance (accuracy drop on swapped backgrounds); "
        "share_* = baseline motion share\n",
        markdown(_drop(t["q3_spatial_bias"], *hidden, "generator")),
        "\nDoes the spatial bias order the models as the accuracy drop does? Spearman ρ between spatial bias and "
        "accuracy drop over the context models, per sigma (✓ = the same order; – = undefined: tied biases; padding "
        f"{padding}):\n", markdown(ranking_pivot(t["q3_ranking"])),
        "![spatial bias](results/figures/spatial_bias.png)\n",
        f"### Q4 — best sigma and padding on `{study.main_model}` (criterion: mean F1 of R_sel vs the GT mask)\n",
        markdown(t["q4_best_sigma"]),
        *[f"![sigma {p}](results/figures/sigma_{p}.png)\n" for p in study.paddings],
        f"### Q5 — frame inflation vs selective on `{study.main_model}` (the first {study.fi_clips} explained "
        "clips; ms_per_clip = wall time of one explanation call / clips in it, so its ± is over batches; selective "
        "= baseline + selective step; 2 CPU cores shared with other jobs)\n",
        markdown(t["q5_frame_inflation"]),
    ]
    return "\n".join(s)


def ranking_pivot(rows: list[Row]) -> list[Row]:
    """q3_ranking as method (x seed) rows and one column per sigma: ``ρ`` plus ✓ when the order is right."""
    out: dict[tuple[Any, str], Row] = {}
    for r in rows:
        row = out.setdefault((r["seed"], r["method"]), {"seed": r["seed"], "method": r["method"]})
        row[f"σ={r['sigma']:g}"] = f"{r['spearman_rho']}{' ✓' if r['same_order'] else ''}"
    return list(out.values())


def publish(out_dir: Path, publish_dir: Path, readme: Path, md: str) -> None:
    """Copy results.md, CSVs and figures to ``publish_dir``; replace the README's tables between the markers."""
    publish_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out_dir / "results.md", publish_dir / "results.md")
    for sub in ("csv", "figures"):
        dst = publish_dir / sub
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(out_dir / sub, dst)
    if readme.is_file():
        text = readme.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            readme.write_text(f"{head}{BEGIN}\n{md}\n{END}{tail}")
