"""End-to-end run of the motion_vs_context study (experiments/motion_vs_context) in a reduced setting."""

from __future__ import annotations

import csv
import gzip
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "motion_vs_context" / "run.py"

#: Few videos, one epoch, few clips, two sigmas: the whole pipeline in a few minutes on 2 CPU cores.
REDUCED = [
    "study.seeds=[12345]",
    "study.epochs=1",
    "+study.generator.videos_per_class=8",
    "+study.generator.num_groups=4",
    "+study.generator.test_groups=1",
    "study.num_clips=4",
    "study.fi_clips=2",
    "study.fi_chunk_size=8",
    "study.sigmas=[1.0,4.0]",
    "study.bootstrap=50",
    "study.publish=false",
    "study.train_overrides=['data.num_workers=0','data.batch_size=8','data.val_fraction=0.34']",
    "data.batch_size=4",
]

TABLES = ["models", "q1_selective_gain", "q2_flow_vs_gt", "q3_spatial_bias", "q3_ranking", "q4_sigma_grid",
          "q4_best_sigma", "q5_frame_inflation"]


def _read(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_study_reduced_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "study"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, str(SCRIPT), f"paths.data_dir={tmp_path / 'data'}",
           f"paths.cache_dir={tmp_path / 'cache'}", f"study.out_dir={out}", *REDUCED]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"Study folder: {out}" in proc.stdout
    check_outputs(out)


def check_outputs(out: Path) -> None:
    """The tables, per-clip rows, figures and W&B run a reduced study writes."""
    for name in TABLES:
        assert (out / "csv" / f"{name}.csv").is_file(), name
    models = _read(out / "csv" / "models.csv")
    assert {r["model"] for r in models} == {"cb00", "cb05", "cb10", "distract", "pan"}
    assert all(r["swap_acc"] != "" for r in models if r["model"].startswith("cb"))

    clips = _read(out / "csv" / "per_clip.csv.gz")
    methods = {"dtd", "gradcam", "gbp", "guided_gradcam"}
    assert {r["method"] for r in clips} == methods
    assert {r["variant"] for r in clips} == {"baseline", "selective", "frame_inflation"}
    # every clip of every model: 1 baseline + 2 paddings x 2 sigmas per method; frame inflation on 2 main clips
    for model in ("cb00", "pan"):
        rows = [r for r in clips if r["model"] == model]
        n = len({r["clip"] for r in rows})
        assert 0 < n <= 4
        extra = 2 * len(methods) if model == "cb00" else 0
        assert len(rows) == n * len(methods) * 5 + extra
    for r in clips:
        for key in ("gt_precision", "gt_recall", "motion_share", "flow_precision"):
            v = float(r[key])
            assert math.isnan(v) or -1e-9 <= v <= 1 + 1e-9, (key, v)
        if r["variant"] == "selective":
            assert float(r["spatial_bias"]) <= 1 + 1e-9 or math.isnan(float(r["spatial_bias"]))

    assert len(_read(out / "csv" / "q4_best_sigma.csv")) == len(methods) * 2
    assert len(_read(out / "csv" / "q3_spatial_bias.csv")) == 3
    text = (out / "results.md").read_text()
    for heading in ("Q1", "Q2", "Q3", "Q4", "Q5"):
        assert f"### {heading}" in text
    for fig in ("sigma_zeros", "sigma_replicate", "flow_vs_gt_precision", "spatial_bias"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    assert list(out.glob("wandb/offline-run-*")), "no offline W&B run"
