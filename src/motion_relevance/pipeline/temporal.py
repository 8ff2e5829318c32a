"""When, not only where: per-frame relevance of every explained clip and the temporal-window freeze test, wired
into the pipeline (docs/method.md, "When").

- :class:`FrameRecorder` takes each explained batch (relevance and selective maps per method, clip ids, videos,
  the ground-truth mask) and keeps every clip's per-frame shares ``a_t = sum_hw A+[t] / sum A+`` (rows of
  ``temporal.csv``), the mean curve per map (sum states, exact under DDP: the figure) and ``frame_share_peak`` (the
  largest share of a clip; its ``_n_undefined`` counts the clips without positive relevance, which have no curve).
- :class:`TemporalWindowTest` freezes ``window`` frames around the selective map's top frame, the baseline's top
  frame and a seeded random frame (the faithfulness stage runs it on its clips, with its seeds).
- :func:`write_temporal_csv`, :func:`temporal_rows` (Table 8), :func:`log_temporal_curves` (W&B line plots) are
  the writers' hooks.

Maps are at the model's input frame rate: the pipeline measures the full-rate input of a multi-pathway model
(SlowFast's fast pathway) and transformer explainers upsample their token maps to the input frames. Plain code: no
Lightning or Hydra.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from motion_relevance.checks import check_int
from motion_relevance.metrics import keys
from motion_relevance.metrics.stats import MeanStdMetric
from motion_relevance.metrics.temporal import FrameShareCurve, TemporalWindowDrop, frame_shares, temporal_window_test
from motion_relevance.viz.temporal import plot_temporal_curves

log = logging.getLogger(__name__)

__all__ = ["CSV_COLUMNS", "PEAK", "TABLE", "TEMPORAL_FILE", "FrameRecorder", "TemporalWindowTest", "curve_groups",
           "log_temporal_curves", "read_temporal_csv", "temporal_file", "temporal_rows", "write_temporal_csv",
           "write_temporal_figure"]

#: File of the per-frame shares in the run folder, its columns (tidy long format) and Table 8's name.
TEMPORAL_FILE = "temporal.csv"
CSV_COLUMNS = ("stage", "clip", "video", "method", "frame", "value")
TABLE = "table8_temporal"
#: Metric name of a clip's largest per-frame share (1/T: spread evenly; 1: one frame).
PEAK = "frame_share_peak"


class _Peak(MeanStdMetric):
    quantities = ("peak",)

    def update(self, shares: Tensor) -> None:
        self._accumulate(0, shares.max(dim=1).values)  # NaN rows (no positive relevance) stay undefined


class FrameRecorder:
    """Per-frame relevance shares of the explained clips of one epoch (see the module docstring).

    Args:
        keep_rows: keep every clip's shares for ``temporal.csv`` (the curves and peaks are always kept).
    """

    def __init__(self, keep_rows: bool = True) -> None:
        self.keep_rows = bool(keep_rows)
        self.frames: int | None = None
        self.collection: MetricCollection | None = None
        self._device: torch.device | str | None = None
        self._batches: list[tuple[list[int], list[str], dict[str, Tensor]]] = []
        self._seen = 0
        self._keys: dict[str, str] = {}  # map name -> its metrics' key part (no dots: MetricCollection names)

    def start(self, device: torch.device | str | None = None) -> None:
        """Begin an epoch: forget the rows and zero the curves."""
        if device is not None:
            self._device = device
        if self.collection is not None:
            self.collection.to(self._device or "cpu")
            self.collection.reset()
        self._batches, self._seen = [], 0

    def _build(self, names: Sequence[str], frames: int) -> None:
        metrics: dict[str, Any] = {}
        self._keys = {name: f"m{i}" for i, name in enumerate(names)}
        for key in self._keys.values():
            metrics[f"curve_{key}"] = FrameShareCurve(frames)
            metrics[f"peak_{key}"] = _Peak()
        metrics["motion"] = FrameShareCurve(frames)  # 1 where the clip's mask moves at a frame: the mean is a fraction
        self.collection = MetricCollection(metrics, compute_groups=False)
        if self._device is not None:
            self.collection.to(self._device)
        self.frames = frames

    def update(self, relevance: Mapping[str, Tensor], selective: Mapping[str, Tensor], *,
               clips: Sequence[int] | None = None, videos: Sequence[str] = (), mask: Tensor | None = None) -> None:
        """Record one explained batch: maps ``(B, C, T, H, W)`` by name (baselines, then selective maps), the
        clips' epoch indices (default: counted from 0 over the epoch), their videos, and the ground-truth mask
        ``(B, T, H, W)`` bool (its per-frame shares go under :data:`~motion_relevance.metrics.keys.GROUND_TRUTH`)."""
        maps = {**relevance, **selective}
        if not maps:
            return
        first = next(iter(maps.values()))
        b, t = int(first.shape[0]), int(first.shape[2])
        ids = list(range(self._seen, self._seen + b)) if clips is None else [int(c) for c in clips]
        if len(ids) != b:
            raise ValueError(f"clips: expected {b} clip indices (one per clip), got {len(ids)}")
        shares = {name: frame_shares(m) for name, m in maps.items()}
        if mask is not None:
            if mask.dim() != 4 or tuple(mask.shape[:2]) != (b, t):
                raise ValueError(f"mask must have shape ({b}, {t}, H, W) like the maps' clips and frames, got "
                                 f"{tuple(mask.shape)}")
            shares[keys.GROUND_TRUTH] = frame_shares(mask[:, None].float())
        if self.collection is None or self.frames != t or list(shares) != list(self._keys):
            if self.collection is not None and self._seen:
                raise ValueError(f"frames per clip or maps changed within an epoch ({self.frames} frames of "
                                 f"{list(self._keys)} -> {t} of {list(shares)}); the per-frame curves need one clip "
                                 "length and one set of maps per epoch")
            self._build(list(shares), t)
        assert self.collection is not None
        for name, key in self._keys.items():
            s = shares[name].to(self.collection[f"curve_{key}"].total.device)
            self.collection[f"curve_{key}"].update(s)
            self.collection[f"peak_{key}"].update(s)
        if mask is not None:
            motion = self.collection["motion"]
            motion.update(mask.flatten(2).any(-1).to(motion.total.device, torch.float32))
        self._seen += b
        if self.keep_rows:
            names = [str(v) for v in videos][:b]
            names += [""] * (b - len(names))
            self._batches.append((ids, names, {k: v.detach().cpu() for k, v in shares.items()}))

    def rows(self, stage: str) -> list[dict[str, Any]]:
        """Every recorded share: ``{stage, clip, video, method, frame, value}`` (NaN for a clip without positive
        relevance), ``stage`` as in the metric keys (``val``, ``test``)."""
        prefix = keys.stage_prefix(stage)
        out = []
        for ids, videos, shares in self._batches:
            for method, values in shares.items():
                for i, row in enumerate(values.tolist()):
                    out += [{"stage": prefix, "clip": ids[i], "video": videos[i], "method": method, "frame": f,
                             "value": v} for f, v in enumerate(row)]
        return out

    def results(self, stage: str) -> dict[str, float]:
        """``<stage>/frame_share_peak[_std|_n|_n_undefined]/<map>`` (reduced over processes)."""
        prefix = keys.stage_prefix(stage)
        values: dict[str, float] = {}
        if self.collection is None:
            return values
        for method, key in self._keys.items():
            result = self.collection[f"peak_{key}"].compute()
            for stat in keys.STATS:
                values[keys.metric_key(prefix, PEAK, method, stat)] = float(result[f"peak_{stat}"])
        return values

    def artifacts(self) -> dict[str, Any]:
        """Mean curves for the figures and ``metrics.json``: ``temporal_curves`` (map -> mean share per frame),
        ``temporal_curves_std``, ``temporal_curves_n`` (clips with a curve) and, with masks,
        ``temporal_motion_frames`` (per frame, the fraction of the clips whose mask moves there). Reduced over
        processes."""
        if self.collection is None:
            return {}
        curves, stds, counts = {}, {}, {}
        for method, key in self._keys.items():
            result = self.collection[f"curve_{key}"].compute()
            curves[method] = [_num(v) for v in result["share_mean"].tolist()]
            stds[method] = [_num(v) for v in result["share_std"].tolist()]
            counts[method] = int(result["share_n"].max())
        out: dict[str, Any] = {"temporal_curves": curves, "temporal_curves_std": stds, "temporal_curves_n": counts}
        motion = self.collection["motion"].compute()
        if int(motion["share_n"].max()) > 0:
            out["temporal_motion_frames"] = [float(v) for v in motion["share_mean"].tolist()]
        return out


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class TemporalWindowTest:
    """The temporal-window freeze test of each method and selective map (docs/method.md, "When").

    Args:
        methods: explainer names; sigmas: the run's thresholds (one selective map per sigma).
        window: frames frozen; None: a quarter of the clip (``T // 4``, at least 1).
        batch_size: perturbed inputs per forward pass.
    """

    def __init__(self, methods: Sequence[str], sigmas: Sequence[float], *, window: int | None = None,
                 batch_size: int = 16) -> None:
        self.methods, self.sigmas = list(methods), [float(s) for s in sigmas if s is not None]
        if not self.sigmas:
            raise ValueError("faithfulness.temporal needs selective maps: set selective.sigma, or "
                             "faithfulness.temporal=false")
        self.window = None if window is None else check_int("faithfulness.temporal_window", window, 1)
        self.batch_size = check_int("faithfulness.batch_size", batch_size, 1)
        self.multi = len(self.sigmas) > 1
        self.collection = MetricCollection({f"{m}|{s:g}".replace(".", "_"): TemporalWindowDrop()
                                            for m in self.methods for s in self.sigmas}, compute_groups=False)

    def metric(self, method: str, sigma: float) -> TemporalWindowDrop:
        return self.collection[f"{method}|{sigma:g}".replace(".", "_")]

    def check_frames(self, frames: int) -> int:
        """The window for clips of ``frames`` frames; refuses a window longer than the clip."""
        if self.window is not None and self.window > frames:
            raise ValueError(f"faithfulness.temporal_window={self.window} exceeds the {frames} frames of the data's "
                             f"clips; set faithfulness.temporal_window <= {frames} (or null: a quarter of the clip)")
        return self.window or max(1, frames // 4)

    def update(self, net: nn.Module, clips: Tensor, targets: Tensor, relevance: Mapping[str, Tensor],
               selective: Mapping[str, Tensor], seeds: Sequence[int], input_builder: Any = None,
               records: Any = None) -> None:
        """Test ``clips`` ``(k, C, T, H, W)`` (the faithfulness stage's clips, its per-clip ``seeds``)."""
        window = self.check_frames(int(clips.shape[2]))
        k = clips.shape[0]
        for method in self.methods:
            names = [keys.selective(method, s, self.multi) for s in self.sigmas]
            out = temporal_window_test(net, clips, relevance[method][:k], [selective[n][:k] for n in names], seeds,
                                       targets, window=window, batch_size=self.batch_size,
                                       input_builder=input_builder)
            for i, sigma in enumerate(self.sigmas):
                metric = self.metric(method, sigma)
                metric.update(out["selective"][:, i], out["baseline"], out["random"])
                if records is not None:
                    records.add(metric, keys.TEMPORAL_METRICS, keys.at_sigma(method, sigma, self.multi))

    def results(self, stage: str) -> dict[str, float]:
        """``<stage>/temporal_drop_selective|_baseline|_random/<m>`` and ``temporal_advantage/<m>`` (``m@s<σ>`` with
        several sigmas), each with ``_std``, ``_n``, ``_n_undefined``."""
        prefix = keys.stage_prefix(stage)
        values: dict[str, float] = {}
        for method in self.methods:
            for sigma in self.sigmas:
                result = self.metric(method, sigma).compute()
                name = keys.at_sigma(method, sigma, self.multi)
                for quantity, metric in keys.TEMPORAL_METRICS.items():
                    for stat in keys.STATS:
                        values[keys.metric_key(prefix, metric, name, stat)] = float(result[f"{quantity}_{stat}"])
        return values


# ------------------------------------------------------------------ writers' hooks
def write_temporal_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write per-frame shares (rows of :meth:`FrameRecorder.rows`) to ``path``, keeping the rows of other stages
    already in the file (validation epochs, then the test stage, share one file; a stage's rows replace that
    stage's earlier ones). NaN values are written empty."""
    path = Path(path)
    stages = {str(r["stage"]) for r in rows}
    kept = [r for r in read_temporal_csv(path) if r["stage"] not in stages] if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in [*kept, *rows]:
            value = row["value"]
            writer.writerow({**{c: row[c] for c in CSV_COLUMNS},
                             "value": "" if value is None or (isinstance(value, float) and math.isnan(value))
                             else value})
    return path


def temporal_file(world_size: int = 1, rank: int = 0) -> str:
    """Name of the per-frame shares in the run folder: ``temporal.csv``, or ``temporal_rank<r>.csv`` for each
    process of a multi-process run (each writes its own clips)."""
    return TEMPORAL_FILE if world_size <= 1 else f"temporal_rank{rank}.csv"


def write_temporal_figure(metrics: Mapping[str, Any], out_dir: str | Path, stage: str = "test") -> Path | None:
    """``<out_dir>/<stage>_temporal.png`` from a run's metrics (``<stage>/temporal_curves``, ``_std``, ``_n``,
    ``<stage>/temporal_motion_frames``); None when the stage has no curves."""
    prefix = keys.stage_prefix(stage)
    curves = metrics.get(f"{prefix}/temporal_curves") or {}
    groups = curve_groups(curves)
    if not groups:
        return None
    return plot_temporal_curves(curves, Path(out_dir) / f"{prefix}_temporal.png", groups=groups,
                                reference=keys.GROUND_TRUTH,
                                std=metrics.get(f"{prefix}/temporal_curves_std"),
                                motion=metrics.get(f"{prefix}/temporal_motion_frames"),
                                counts=metrics.get(f"{prefix}/temporal_curves_n"),
                                title=f"per-frame relevance ({prefix}): share of positive relevance in each frame")


def read_temporal_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``temporal.csv`` (``clip`` and ``frame`` int, ``value`` float, NaN where empty)."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}; it is not a "
                             "temporal.csv of this version: delete it or write the run folder again")
        return [{**r, "clip": int(r["clip"]), "frame": int(r["frame"]),
                 "value": float(r["value"]) if r["value"] != "" else math.nan} for r in reader]


def temporal_rows(metrics: Mapping[str, Any], stage: str = "test") -> list[dict[str, Any]]:
    """Table 8: one row per method (``dtd``, ``dtd@s2`` with several sigmas) with the three window drops and the
    selective - random advantage: columns named as the metrics (``temporal_drop_selective``,
    ``temporal_drop_baseline``, ``temporal_drop_random``, ``temporal_advantage``; Table 6 has matched-budget
    ``drop_*`` columns), each with ``_std``, ``_n``, ``_n_undefined``."""
    prefix = keys.stage_prefix(stage)
    first = keys.TEMPORAL_METRICS["advantage"]
    methods = []
    for key in metrics:
        parsed = keys.parse_key(key)
        if parsed is not None and (parsed.stage, parsed.metric, parsed.stat) == (prefix, first, "mean"):
            methods.append(parsed.method)
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for metric in keys.TEMPORAL_METRICS.values():
            row[metric] = metrics.get(keys.metric_key(prefix, metric, method))
            for stat in keys.STATS[1:]:
                row[f"{metric}_{stat}"] = metrics.get(keys.metric_key(prefix, metric, method, stat))
        rows.append(row)
    return rows


def log_temporal_curves(loggers: Sequence[Any], curves: Mapping[str, Sequence[float | None]], prefix: str) -> int:
    """Log the mean per-frame curves as W&B line plots (one per baseline method: the baseline and its selective
    maps against the frame) to the loggers that have a W&B run; others are skipped. Returns the plots logged.

    A logger counts as W&B when it has ``log_table`` and an ``experiment`` with ``log`` (Lightning's
    ``WandbLogger``, :class:`~motion_relevance.utils.loggers.SafeWandbLogger`); a W&B failure is logged, never
    raised."""
    targets = [lg for lg in loggers if hasattr(lg, "log_table") and hasattr(lg, "experiment")]
    if not targets or not curves:
        return 0
    try:
        import wandb  # deferred: only when a W&B run takes the line plots
    except ImportError:
        return 0
    groups = curve_groups(curves)
    logged = 0
    for logger in targets:
        try:
            run = logger.experiment
            if not run or not hasattr(run, "log"):
                continue
            for method, names in groups.items():
                ys = [[math.nan if v is None else float(v) for v in curves[n]] for n in names]
                plot = wandb.plot.line_series(xs=list(range(len(ys[0]))), ys=ys, keys=names,
                                              title=f"{prefix} per-frame relevance: {method}", xname="frame")
                run.log({f"{prefix}/temporal/{method}": plot})
                logged += 1
        except Exception as err:  # noqa: BLE001 - W&B is a convenience, temporal.csv is the record
            log.warning("Could not log the per-frame curves to W&B (%s: %s)", type(err).__name__, err)
    return logged


def curve_groups(curves: Mapping[str, Any]) -> dict[str, list[str]]:
    """Baseline method -> [the baseline, its selective maps] among ``curves``' names (ground truth left out)."""
    groups: dict[str, list[str]] = {}
    for name in curves:
        split = keys.split_selective(name)
        base = split[0] if split else name
        if base == keys.GROUND_TRUTH:
            continue
        groups.setdefault(base, []).append(name)
    return groups
