"""``report.html``: one self-contained page per run folder (or sweep folder), built from the folder's files.

The page is read from ``file://`` with no network: CSS, JavaScript and (up to ``inline_mb``) every image are
inlined; larger images are linked relative to the page, so the folder stays movable. It shows

- the run's settings (``.hydra/overrides.yaml``, the resolved ``.hydra/config.yaml`` flattened; a sweep's
  ``multirun.yaml`` / ``optimization_results.yaml``);
- every table (``tables/*.csv``, a sweep's ``sigma_report.csv`` / ``best_sigma.csv``, then ``per_clip.csv`` and
  ``temporal.csv``): sortable, three significant figures, ``mean ± std`` where an ``x_std`` column exists, each
  column explained on hover (:data:`COLUMN_HELP`);
- the figures (``explanations/``, ``figures/`` or the folder itself): grid, faithfulness, randomisation, temporal;
- a clip viewer over the sprites :func:`write_clip_frames` wrote into ``report_assets/``: pick a clip and a
  method, scrub the frames with a slider, see the input, the baseline and the selective overlays side by side and
  each map's share of relevance per frame under them;
- every scalar of ``metrics.json``.

Every source is optional: a missing or unreadable file leaves its section out (named in the page's notes).
Rendering uses jinja2 templates from ``viz/templates/`` (package data). Entry point:
``python -m motion_relevance.pipeline.report_page RUN_DIR``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as _dt
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np
import torch
import yaml
from markupsafe import Markup
from PIL import Image

from motion_relevance.checks import check_choice, check_float, check_int, check_unique
from motion_relevance.metrics.keys import split_selective
from motion_relevance.metrics.temporal import frame_shares
from motion_relevance.pipeline.record import METRICS_FILE
from motion_relevance.viz.colormaps import DEFAULT_CMAPS, blend, colorize, grey_frames, normalize_relevance, to_numpy

__all__ = [
    "ASSETS_DIR",
    "COLUMN_HELP",
    "PAGE_NAME",
    "column_help",
    "format_number",
    "write_clip_frames",
    "write_report_page",
]

#: The page's file name inside the run folder.
PAGE_NAME = "report.html"
#: Folder (inside the run folder) of the clip viewer's sprites and their ``<prefix>_clips.json`` indices.
ASSETS_DIR = "report_assets"
INDEX_SUFFIX = "_clips.json"
INDEX_FORMAT = 1
#: Rows of a long table (per_clip.csv, temporal.csv, metrics.json) shown on the page; the file keeps them all.
MAX_ROWS = 2000
#: Widest sprite (pixels): longer clips are downscaled by an integer factor to fit (JPEG allows 65535).
MAX_SPRITE_WIDTH = 16384

#: One-line definition of every column the project's tables have (docs/method.md says the same in prose).
COLUMN_HELP: dict[str, str] = {
    # row labels
    "method": "explanation method: a baseline (dtd, gradcam, ...), its selective map (dtd_selective, "
              "dtd_selective_s<sigma>), a pair for agreement (dtd~gradcam), or dtd@s<sigma> per sigma",
    "reference": "what removed voxels are replaced with: freeze (each pixel's temporal mean), mean (each "
                 "channel's mean), blur (per-frame Gaussian, 5 px)",
    "stage": "randomisation stage k: the k last weighted layers are re-initialised (0 = unchanged model)",
    "layer": "the layer randomised last at this stage",
    "selective_map": "the selective map whose voxels set the matched budget m",
    "sigma": "selectivity threshold: a voxel is kept when its temporal gradient G > sigma * std(G)",
    "job": "job folder of the sweep",
    "objective": "the sweep's objective value of this job (conf objective.*)",
    "complete_sweep": "false when some jobs of the sweep could not be read (best sigma over the readable ones)",
    "metric": "metric name (see the tables' column help)",
    "value": "the per-clip value (empty or nan where undefined)",
    "clip": "clip index in the order the clips were explained",
    "video": "the clip's video file",
    "label": "true class index of the clip",
    "target": "class the explanation explains (the label or the prediction, conf target)",
    "frame": "frame index t within the clip (0 = first)",
    "share": "share of the clip's positive relevance in this frame: sum over H,W of R+ at t / sum R+, "
             "R+ = max(R.sum(C), 0) (sums to 1)",
    "key": "metrics.json key: <stage>/<metric>[_std|_n|_n_undefined]/<method>",
    # Tables 1-5
    "precision": "flow precision: |P(R) and moves| / |P(R)| over the frames with optical flow (Table 1)",
    "agreement": "intersection over union of the positive-relevance voxels of two baseline methods (Table 2)",
    "selectivity_area": "|P(R_sel)| / |P(R)|: share of positive-relevance voxels selective relevance keeps "
                        "(Table 3)",
    "selectivity_mass": "sum R_sel+ / sum R+: share of positive relevance selective relevance keeps (Table 3)",
    "overhead_ms": "wall time per clip in ms of the explainer call, or of the selective step (Table 4)",
    "temporal_share": "share of the relevance AttnLRP passes through the attention products (A @ V) that goes "
                      "between tokens of different frames (TimeSformer: the time branches' share of the relevance "
                      "the residual sums give the attention branches); cached clips undefined (Table 9)",
    "gt_precision": "|P(R) and M| / |P(R)|: share of positive voxels inside the ground-truth motion mask M",
    "gt_recall": "|P(R) and M| / |M|: share of the ground-truth motion mask covered by positive voxels",
    "gt_f1": "Dice 2|P(R) and M| / (|P(R)| + |M|) against the ground-truth motion mask",
    "motion_share": "sum R+ inside the ground-truth motion mask / sum R+",
    "spatial_bias": "1 - sum R_sel+ / sum R+: share of positive relevance removed as static",
    # Table 6
    "motion_reliance": "causal motion share of the model, sum D_m+ / sum (D_m+ + D_a+) over clips in [0, 1] "
                       "(D_m = full_freeze_drop, D_a = full_static_drop, + = clipped at 0; per_clip.csv: the "
                       "clip's own share); the calibrated motion measure, beside the paper's spatial_bias",
    "motion_reliance_lo": "lower end of the seeded 95% percentile bootstrap interval of motion_reliance over clips",
    "motion_reliance_hi": "upper end of the seeded 95% percentile bootstrap interval of motion_reliance over clips",
    "full_freeze_drop": "D_m = s(x) - s(freeze(x)): score drop when every frame is the clip's temporal mean (motion "
                        "removed, appearance kept)",
    "full_static_drop": "D_a = s(x) - s(x - x.mean(T) + x.mean(T,H,W)), per channel: score drop when the appearance "
                        "is removed and the changes kept",
    "full_mean_drop": "s(x) - s(mean(x)): score drop when every voxel is its channel's clip mean (everything "
                      "removed)",
    "deletion_auc": "area under the score curve while the most relevant voxels are replaced (lower = more "
                    "faithful)",
    "insertion_auc": "area under the score curve while the most relevant voxels are put back into the reference "
                     "(higher = more faithful)",
    "deletion_auc_random": "deletion AUC of a random voxel order (the floor)",
    "insertion_auc_random": "insertion AUC of a random voxel order (the floor)",
    "drop_selective": "score drop when the selective map's m voxels are replaced (matched budget)",
    "drop_topm": "score drop when the baseline's top m voxels are replaced",
    "drop_random": "score drop when m random voxels are replaced",
    "advantage_vs_random": "drop_selective - drop_random, paired per clip",
    "budget_voxels": "m: the number of voxels the selective map keeps (the matched budget)",
    # Table 7
    "spearman": "Spearman correlation of the baseline map with the map of the unchanged model at this stage",
    "spearman_selective": "Spearman correlation of the selective map with that of the unchanged model",
    # Table 8
    "temporal_drop_selective": "score drop when w frames around the selective map's top frame are frozen (each "
                               "replaced by the clip's temporal mean)",
    "temporal_drop_baseline": "score drop when w frames around the baseline map's top frame are frozen",
    "temporal_drop_random": "score drop when w frames around a seeded random frame are frozen",
    "temporal_advantage": "temporal_drop_selective - temporal_drop_random, paired per clip",
    "frame_share_peak": "largest per-frame share of positive relevance of a clip (1/T: even, 1: one frame)",
    # sigma report
    "precision_selective": "flow precision of the selective map",
    "gt_f1_selective": "ground-truth Dice of the selective map",
    "gt_precision_selective": "ground-truth precision of the selective map",
    "gt_recall_selective": "ground-truth recall of the selective map",
    "motion_share_selective": "ground-truth motion share of the selective map",
    "freeze_drop_freeze_selective": "score drop when the selective map's voxels are frozen (freeze reference)",
    "drop_advantage_random_freeze": "freeze drop of the selective map minus that of as many random voxels",
}
#: Definitions of the statistics columns ``<metric>_std``, ``<metric>_n``, ``<metric>_n_undefined``.
SUFFIX_HELP: dict[str, str] = {
    "_n_undefined": "clips where {base} is undefined (zero denominator or non-finite), counted, never averaged",
    "_n": "clips averaged into {base}",
    "_std": "sample standard deviation of {base} over clips (n - 1)",
}
TABLE_TITLES: dict[str, str] = {
    "table1_precision": "Table 1 · flow precision",
    "table2_agreement": "Table 2 · agreement between methods",
    "table3_selectivity": "Table 3 · selectivity",
    "table4_overhead": "Table 4 · overhead",
    "table5_ground_truth": "Table 5 · ground truth",
    "table6_motion_reliance": "Table 6 · motion reliance",
    "table6_faithfulness": "Table 6 · faithfulness",
    "table7_randomization": "Table 7 · cascading randomisation",
    "table8_temporal": "Table 8 · temporal window",
    "table9_temporal_share": "Table 9 · relevance through time",
    "sigma_report": "Sigma report",
    "best_sigma": "Best sigma per method",
    "per_clip": "Per-clip values",
    "temporal": "Relevance per frame",
}
#: Figure groups, by the first pattern the file name contains.
FIGURE_GROUPS: tuple[tuple[str, str], ...] = (
    ("grid", "Explanation grid"),
    ("faithfulness", "Faithfulness"),
    ("randomization", "Randomisation"),
    ("temporal", "Temporal"),
    ("sigma", "Sigma sweep"),
)
_FIGURE_DIRS = ("explanations", "figures", ".")
_LONG_TABLES = ("per_clip", "temporal")
_ROOT_TABLES = ("sigma_report", "best_sigma")


# ------------------------------------------------------------------ numbers and columns
def column_help(name: str) -> str:
    """One-line definition of a table column (statistics suffixes and ``_random`` floors derived); ``""`` if
    unknown."""
    if name in COLUMN_HELP:
        return COLUMN_HELP[name]
    for suffix, text in SUFFIX_HELP.items():
        if name.endswith(suffix) and name[: -len(suffix)]:
            return text.format(base=name[: -len(suffix)])
    return ""


def columns_markdown() -> str:
    """The column reference of docs/method.md ("Columns"): every column of every table with its definition, from
    :data:`COLUMN_HELP` and :data:`SUFFIX_HELP` (the one home of these definitions; a test keeps the page in sync)."""
    lines = ["| column | definition |", "|---|---|"]
    lines += [f"| `{name}` | {text.replace('|', '∣')} |" for name, text in COLUMN_HELP.items()]
    lines += [f"| `<x>{suffix}` | {text.format(base='x').replace('|', '∣')} |" for suffix, text in SUFFIX_HELP.items()]
    return "\n".join(lines) + "\n"


def _to_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def format_number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` significant figures: integers stay whole, ``1234.5 → 1230``, ``0.00012345 →
    0.000123``, tiny or huge values in e-notation; ``None`` / empty → ``–``; non-numbers unchanged."""
    x = _to_number(value)
    if x is None:
        return "–" if value is None or str(value).strip() == "" else str(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    x = float(f"{x:.{digits - 1}e}")  # rounded first, so 99.96 → 100 has the magnitude of 100
    mag = math.floor(math.log10(abs(x)))
    if mag < -4 or mag >= 9:
        return f"{x:.{digits - 1}e}"
    if mag >= digits - 1:
        return str(int(round(x, digits - 1 - mag)))
    return f"{x:.{digits - 1 - mag}f}"


def _sort_key(value: Any) -> str:
    """``data-v`` of a cell: the number (``nan``/missing as empty, sorted last) or the text."""
    x = _to_number(value)
    if x is None or math.isnan(x):
        return ""
    return repr(x)


# ------------------------------------------------------------------ clip sprites
def _check_maps(frames: np.ndarray, maps: Mapping[str, Any]) -> dict[str, np.ndarray]:
    n, t = frames.shape[:2]
    out: dict[str, np.ndarray] = {}
    for name, rel in maps.items():
        r = to_numpy(rel)
        if r.ndim not in (4, 5) or r.shape[0] != n or r.shape[-3] != t:
            raise ValueError(f"maps[{name!r}] has shape {tuple(r.shape)}: expected (N, T, H, W) or (N, C, T, H, W) "
                             f"with N={n}, T={t} like frames")
        r = np.asarray(r, dtype=np.float32)
        if not np.isfinite(r).all():
            raise ValueError(f"maps[{name!r}] holds NaN or infinite values: pass finite relevance maps")
        out[str(name)] = r
    return out


def _frame_shares(relevance: Any) -> np.ndarray:
    """Per-frame relevance ``(N, T)`` of maps ``(N, T, H, W)`` or ``(N, C, T, H, W)``: the share of positive relevance
    in each frame, by :func:`motion_relevance.metrics.temporal.frame_shares` (NaN rows where undefined)."""
    r = torch.as_tensor(np.asarray(to_numpy(relevance), dtype=np.float32))
    if r.dim() == 4:
        r = r.unsqueeze(1)
    return frame_shares(r).double().numpy()


def _overlay(frames: np.ndarray, rel: np.ndarray, mode: str, alpha: float, gamma: float) -> np.ndarray:
    """Overlay of one clip: ``frames (T, H, W, 3)``, ``rel (T, h, w)`` channel-summed → ``(T, H, W, 3)`` uint8,
    normalised over the clip, blended over the greyed frames with weight ``(|R| / vmax) ** gamma``."""

    n = normalize_relevance(rel, mode=mode)  # type: ignore[arg-type]
    h, w = frames.shape[1:3]
    if n.shape[1:] != (h, w):
        n = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in n])
    heat = colorize((n + 1.0) * 0.5 if mode == "signed" else n, DEFAULT_CMAPS[mode])
    return blend(grey_frames(frames, fade=0.15), heat, alpha=alpha, weight=np.abs(n) ** gamma)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "map"


def _write_sprite(strip: np.ndarray, path: Path, quality: int) -> None:

    image = Image.fromarray(np.ascontiguousarray(strip))
    if path.suffix == ".jpg":
        image.save(path, quality=quality, subsampling=0)
    else:
        image.save(path, optimize=True)


def write_clip_frames(
    out_dir: str | Path,
    frames: Any,
    maps: Mapping[str, Any],
    *,
    prefix: str = "test",
    captions: Sequence[str] | None = None,
    mode: str | Mapping[str, str] = "auto",
    alpha: float = 0.85,
    weight_gamma: float = 0.5,
    image_format: str = "auto",
    quality: int = 90,
    curves: Mapping[str, Any] | None = None,
) -> Path:
    """Frame strips of kept clips for the report page's clip viewer, and their index ``<prefix>_clips.json``.

    Args:
        out_dir: the run folder's ``report_assets/`` (:data:`ASSETS_DIR`; created).
        frames: ``uint8`` ``(N, T, H, W, 3)`` RGB model-input frames.
        maps: view name → relevance ``(N, T, H, W)`` or ``(N, C, T, H, W)`` (numpy or torch; summed over ``C`` for
            the overlay), e.g. ``{"dtd": …, "dtd_selective": …}``. A name ``<m>_selective[_s<sigma>]`` is shown as
            the selective map of method ``<m>``; others as baselines.
        prefix: the set's name (stage, e.g. ``"test"``); a second call with the same prefix replaces the set.
        captions: one label per clip (e.g. ``"right → pred left"``); default ``"clip <i>"``.
        mode: ``"signed"`` (blue/white/red), ``"positive"`` (inferno) or ``"auto"`` (positive when the view's maps
            are never negative), for all views or per view name (missing names: auto).
        alpha, weight_gamma: blend opacity at the largest ``|R|`` and the exponent of the per-pixel weight, as in
            the explanation grid; every map is normalised over its whole clip.
        image_format: ``"png"``, ``"jpg"`` or ``"auto"`` (PNG up to 96×96 px frames, else JPEG at ``quality``).
        curves: view name → ``(N, T)`` per-frame shares to plot instead of :func:`frame_shares` of the map.

    Writes one sprite per clip and view (the input too): the ``T`` frames side by side, ``<prefix>_c<i>_<view>``.
    Returns the index path. The index holds, per clip, the caption, each view's sprite and per-frame share.
    """
    fr = to_numpy(frames)
    if fr.ndim != 5 or fr.shape[-1] != 3 or fr.dtype != np.uint8 or 0 in fr.shape:
        raise ValueError(f"frames has dtype {fr.dtype} and shape {tuple(fr.shape)}: expected non-empty uint8 "
                         "(N, T, H, W, 3) RGB frames")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(prefix)):
        raise ValueError(f"prefix={prefix!r}: use letters, digits, '_', '-' or '.' (it names files)")
    check_choice("image_format", image_format, ("auto", "png", "jpg"))
    check_int("quality", quality, 1, 100)
    check_float("alpha", alpha, 0.0, 1.0)
    check_float("weight_gamma", weight_gamma, 0.0, None)
    n, t, h, w = fr.shape[:4]
    rel = _check_maps(fr, maps)
    if "input" in rel:
        raise ValueError("maps has a view named 'input': that name is the frames' own view; rename the map")
    files = {name: _safe_name(name) for name in rel}
    check_unique("maps (names as file names)", ["input", *files.values()])
    if captions is not None:
        captions = [str(c) for c in captions]
        if len(captions) != n:
            raise ValueError(f"captions has {len(captions)} entries for {n} clips: pass one per clip or None")
    modes: dict[str, str] = {}
    for name, r in rel.items():
        m = mode.get(name, "auto") if isinstance(mode, Mapping) else mode
        check_choice(f"mode[{name!r}]", m, ("auto", "signed", "positive"))
        summed = r.sum(axis=1) if r.ndim == 5 else r
        modes[name] = ("positive" if float(summed.min()) >= 0.0 else "signed") if m == "auto" else m
    shares: dict[str, np.ndarray] = {}
    for name, r in rel.items():
        if curves is not None and name in curves:
            c = np.asarray(to_numpy(curves[name]), dtype=np.float64)
            if c.shape != (n, t):
                raise ValueError(f"curves[{name!r}] has shape {c.shape}: expected (N, T) = ({n}, {t})")
            shares[name] = c
        else:
            shares[name] = _frame_shares(r)

    fmt = ("png" if h * w <= 96 * 96 else "jpg") if image_format == "auto" else image_format
    scale = max(1, math.ceil(t * w / MAX_SPRITE_WIDTH))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def strip(images: np.ndarray) -> np.ndarray:  # (T, H, W, 3) -> (H', T*W', 3)
        if scale > 1:

            images = np.stack([cv2.resize(x, (w // scale, h // scale), interpolation=cv2.INTER_AREA) for x in images])
        return np.concatenate(list(images), axis=1)

    clips = []
    for i in range(n):
        views = {}
        name = f"{prefix}_c{i}_input.{fmt}"
        _write_sprite(strip(fr[i]), out / name, quality)
        views["input"] = {"sprite": name}
        for view, r in rel.items():
            summed = r[i].sum(axis=0) if r.ndim == 5 else r[i]
            name = f"{prefix}_c{i}_{files[view]}.{fmt}"
            _write_sprite(strip(_overlay(fr[i], summed, modes[view], alpha, weight_gamma)), out / name, quality)
            share = [None if not math.isfinite(v) else round(float(v), 6) for v in shares[view][i]]
            views[view] = {"sprite": name, "share": share}
        clips.append({"caption": captions[i] if captions is not None else f"clip {i}", "views": views})
    views_meta = []
    for view in rel:
        split = split_selective(view)
        views_meta.append({"name": view, "method": split[0] if split else view,
                           "kind": "selective" if split else "baseline", "mode": modes[view]})
    index = {"format": INDEX_FORMAT, "prefix": prefix, "frames": t, "height": h // scale, "width": w // scale,
             "views": views_meta, "clips": clips}
    path = out / f"{prefix}{INDEX_SUFFIX}"
    path.write_text(json.dumps(index, indent=1))
    return path


# ------------------------------------------------------------------ reading the run folder
class _Notes(list):
    """Problems met while reading the folder (shown on the page, never raised)."""


def _read_text(path: Path, notes: _Notes) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        notes.append(f"{path.name}: not readable ({err.strerror or err})")
        return None


def _read_csv(path: Path, notes: _Notes) -> tuple[list[str], list[dict[str, str]]] | None:
    text = _read_text(path, notes)
    if text is None:
        return None
    try:
        reader = csv.DictReader(text.splitlines())
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    except csv.Error as err:
        notes.append(f"{path.name}: not a readable CSV ({err})")
        return None
    if not columns:
        notes.append(f"{path.name}: empty")
        return None
    return columns, rows


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out or [(prefix, "{}")]
    return [(prefix, value)]


def _yaml(path: Path, notes: _Notes) -> Any:

    text = _read_text(path, notes)
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        notes.append(f"{path.name}: not readable YAML ({str(err).splitlines()[0]})")
        return None


def _settings(run: Path, notes: _Notes) -> dict[str, Any]:
    """Overrides, flattened resolved config and raw YAML of the run (or sweep)."""
    out: dict[str, Any] = {"overrides": [], "rows": [], "files": []}
    hydra_dir = run / ".hydra"
    overrides = _yaml(hydra_dir / "overrides.yaml", notes) if (hydra_dir / "overrides.yaml").is_file() else None
    if isinstance(overrides, list):
        out["overrides"] = [str(o) for o in overrides]
    for path in (hydra_dir / "config.yaml", run / "multirun.yaml", run / "optimization_results.yaml"):
        if not path.is_file():
            continue
        text = _read_text(path, notes)
        data = _yaml(path, notes)
        if text is not None:
            out["files"].append({"name": str(path.relative_to(run)), "text": text})
        if path.name == "config.yaml" and isinstance(data, Mapping):
            out["rows"] = [{"key": k, "value": v if isinstance(v, str) else json.dumps(v)}
                           for k, v in _flatten(data)]
        elif path.name == "multirun.yaml" and isinstance(data, Mapping) and not out["rows"]:
            params = (data.get("hydra") or {}).get("sweeper", {}) if isinstance(data.get("hydra"), Mapping) else {}
            out["overrides"] = out["overrides"] or [
                f"{k}={v}" for k, v in _flatten(params.get("params") or {}) if isinstance(params, Mapping)]
    return out


def _metrics(run: Path, notes: _Notes) -> dict[str, Any] | None:
    path = run / METRICS_FILE
    if not path.is_file():
        return None
    text = _read_text(path, notes)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        notes.append(f"metrics.json: not valid JSON ({err.msg} at line {err.lineno}); its numbers are left out")
        return None
    if not isinstance(data, Mapping):
        notes.append("metrics.json: not a JSON object; its numbers are left out")
        return None
    return dict(data)


def _table(name: str, title: str, columns: list[str], rows: list[dict[str, str]], *, long: bool = False
           ) -> dict[str, Any]:
    """A table for the template: shown columns (``x`` absorbs ``x_std``), header help, formatted cells."""
    shown = [c for c in columns if not (c.endswith("_std") and c[: -len("_std")] in columns)]
    header = [{"name": c, "help": column_help(c) or "(no definition recorded for this column)"} for c in shown]
    body = []
    for row in rows[:MAX_ROWS] if long else rows:
        cells = []
        for c in shown:
            value = row.get(c)
            text = format_number(value)
            std = row.get(f"{c}_std") if f"{c}_std" in columns else None
            if std not in (None, "") and value not in (None, ""):
                text = f"{text} ± {format_number(std)}"
            cells.append({"text": text, "v": _sort_key(value) if _to_number(value) is not None else "",
                          "numeric": _to_number(value) is not None, "raw": "" if value is None else str(value)})
        body.append(cells)
    return {"id": f"t-{_safe_name(name)}", "name": name, "title": title, "header": header, "rows": body,
            "total": len(rows), "shown": len(body), "long": long}


def _tables(run: Path, notes: _Notes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(result tables, long tables): ``tables/*.csv`` (a markdown table without CSV as text), a sweep's CSVs,
    then per_clip/temporal CSVs."""
    results, long = [], []
    tdir = run / "tables"
    seen = set()
    if tdir.is_dir():
        for path in sorted(tdir.glob("*.csv")):
            read = _read_csv(path, notes)
            seen.add(path.stem)
            if read is not None:
                results.append(_table(path.stem, TABLE_TITLES.get(path.stem, path.stem), *read))
        for path in sorted(tdir.glob("*.md")):
            if path.stem not in seen and path.stem != "tables":
                text = _read_text(path, notes)
                if text is not None:
                    results.append({"id": f"t-{_safe_name(path.stem)}", "name": path.stem, "markdown": text,
                                    "title": TABLE_TITLES.get(path.stem, path.stem)})
    for stem in _ROOT_TABLES:
        path = run / f"{stem}.csv"
        if path.is_file() and (read := _read_csv(path, notes)) is not None:
            results.append(_table(stem, TABLE_TITLES[stem], *read))
    for stem in _LONG_TABLES:
        for path in sorted(run.glob(f"{stem}*.csv")):
            read = _read_csv(path, notes)
            if read is not None:
                long.append(_table(path.stem, f"{TABLE_TITLES[stem]} ({path.name})", *read, long=True))
    return results, long


class _Assets:
    """Image sources: data URIs while the inline budget lasts, then paths relative to the page."""

    def __init__(self, run: Path, inline_bytes: int, notes: _Notes) -> None:
        self.run, self.left, self.notes = run, inline_bytes, notes

    def src(self, path: Path) -> str | None:
        try:
            size = path.stat().st_size
            if size <= self.left:
                data = path.read_bytes()
                self.left -= size
                mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(
                    path.suffix.lower(), "image/png")
                return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        except OSError as err:
            self.notes.append(f"{path.name}: not readable ({err.strerror or err})")
            return None
        return path.relative_to(self.run).as_posix()


def _figures(run: Path, assets: _Assets) -> list[dict[str, Any]]:
    found: list[Path] = []
    for sub in _FIGURE_DIRS:
        folder = run / sub
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg")
                            and p.is_file())
    groups: dict[str, list[dict[str, Any]]] = {title: [] for _, title in FIGURE_GROUPS}
    groups["Other figures"] = []
    for path in found:
        title = next((t for pattern, t in FIGURE_GROUPS if pattern in path.name.lower()), "Other figures")
        src = assets.src(path)
        if src is not None:
            groups[title].append({"src": src, "name": path.relative_to(run).as_posix()})
    return [{"title": t, "id": f"fig-{_safe_name(t.lower())}", "images": imgs} for t, imgs in groups.items() if imgs]


def _clip_sets(run: Path, assets: _Assets, notes: _Notes) -> list[dict[str, Any]]:
    folder = run / ASSETS_DIR
    if not folder.is_dir():
        return []
    sets = []
    for path in sorted(folder.glob(f"*{INDEX_SUFFIX}")):
        text = _read_text(path, notes)
        if text is None:
            continue
        try:
            index = json.loads(text)
            t = int(index["frames"])
            views = [dict(v) for v in index["views"]]
            clips = []
            for clip in index["clips"]:
                out = {"caption": str(clip["caption"]), "views": {}}
                for name, view in clip["views"].items():
                    src = assets.src(folder / str(view["sprite"]))
                    if src is None:
                        raise KeyError(f"sprite {view['sprite']}")
                    out["views"][name] = {"src": src, "share": view.get("share")}
                clips.append(out)
        except (ValueError, KeyError, TypeError) as err:
            notes.append(f"{ASSETS_DIR}/{path.name}: not a clip index of this version ({err}); its clips are left "
                         "out")
            continue
        sets.append({"prefix": str(index.get("prefix", path.name[: -len(INDEX_SUFFIX)])), "frames": t,
                     "width": int(index["width"]), "height": int(index["height"]), "views": views, "clips": clips})
    return sets


def _metric_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, value in metrics.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            rows.append({"key": key, "value": value})
    return rows


# ------------------------------------------------------------------ page
def _template_text(name: str) -> str:
    return resources.files("motion_relevance.viz").joinpath("templates", name).read_text(encoding="utf-8")


def write_report_page(run_dir: str | Path, *, out: str | Path | None = None, inline_mb: float = 25.0,
                      title: str | None = None) -> Path:
    """Write ``report.html`` for a run folder (``mr-explain``, ``mr-train callbacks=explain``) or a sweep folder
    (``mr-report``) from the files in it; returns the page's path.

    ``out`` defaults to ``<run_dir>/report.html`` (it must lie in ``run_dir``, since linked images are relative to
    it). Images are embedded as data URIs up to ``inline_mb`` MiB in all, then linked. Missing sources leave their
    section out; unreadable ones are named in the page's notes.
    """

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run_dir={str(run)!r} is not a folder: pass a run folder (with metrics.json, "
                                "tables/ ...) or a sweep folder")
    run = run.resolve()
    check_float("inline_mb", inline_mb, 0.0, None)
    page = run / PAGE_NAME if out is None else Path(out).resolve()
    if page.parent != run:
        raise ValueError(f"out={str(out)!r} is not directly inside run_dir {str(run)!r}: the page links images "
                         "relative to itself; write it into the run folder")
    notes = _Notes()
    assets = _Assets(run, int(inline_mb * 2**20), notes)
    metrics = _metrics(run, notes)
    results, long_tables = _tables(run, notes)
    if metrics:
        scalars = _metric_rows(metrics)
        if scalars:
            rows = [{"key": r["key"], "value": "" if r["value"] is None else r["value"]} for r in scalars]
            long_tables.append(_table("metrics", f"All metrics (metrics.json, {len(rows)} values)", ["key", "value"],
                                      rows, long=True))
    settings = _settings(run, notes)
    figures = _figures(run, assets)
    clip_sets = _clip_sets(run, assets, notes)
    if assets.left <= 0 and any(not s.startswith("data:") for f in figures for s in (i["src"] for i in f["images"])):
        notes.append(f"images beyond {inline_mb:g} MiB are linked, not embedded: keep them beside {PAGE_NAME}")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    template = env.from_string(_template_text("report.html.j2"))
    checkpoint = metrics.get("checkpoint") if metrics else None
    text = template.render(
        title=title or f"motion_relevance · {run.name}",
        run_name=run.name,
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        checkpoint=checkpoint if isinstance(checkpoint, str) else None,
        settings=settings,
        results=results,
        long_tables=long_tables,
        figures=figures,
        clip_sets=clip_sets,
        notes=list(notes),
        css=Markup(_template_text("report.css")),
        js=Markup(_template_text("report.js")),
    )
    page.write_text(text, encoding="utf-8")
    return page


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m motion_relevance.pipeline.report_page RUN_DIR [--inline-mb 25]``: write ``RUN_DIR/report.html``."""
    parser = argparse.ArgumentParser(prog="python -m motion_relevance.pipeline.report_page",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (mr-explain, mr-train) or a sweep folder")
    parser.add_argument("--inline-mb", type=float, default=25.0, help="embed images up to this many MiB in all")
    args = parser.parse_args(argv)
    try:
        path = write_report_page(args.run_dir, inline_mb=args.inline_mb)
    except (FileNotFoundError, ValueError) as err:
        print(f"report_page: error: {err}", file=sys.stderr)
        return 2
    print(f"Report page written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
