"""When, in the pipeline: the per-frame recorder, the temporal-window test in the faithfulness stage, temporal.csv,
Table 8 and the W&B line plots, against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from motion_relevance.metrics import keys
from motion_relevance.metrics.suite import ClipRecords
from motion_relevance.metrics.temporal import TemporalWindowDrop, temporal_window_drops
from motion_relevance.pipeline import ExplanationPipeline, FaithfulnessStage
from motion_relevance.pipeline.faithfulness import clip_seeds
from motion_relevance.pipeline.temporal import (
    CSV_COLUMNS,
    FrameRecorder,
    log_temporal_curves,
    read_temporal_csv,
    temporal_rows,
    write_temporal_csv,
)
from tests.tiny_models import FrameReader


def _hand_shares(rel: torch.Tensor) -> np.ndarray:
    """Per-frame shares by loops over numpy: (B, T), NaN rows for clips without positive relevance."""
    a = rel.double().numpy().sum(1)
    b, t = a.shape[:2]
    out = np.full((b, t), np.nan)
    for i in range(b):
        per = [float(np.clip(a[i, f], 0, None).sum()) for f in range(t)]
        if sum(per) > 0:
            out[i] = [p / sum(per) for p in per]
    return out


def test_recorder_rows_curves_and_peaks_match_hand_loops() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(3, 2, 5, 3, 3), torch.randn(2, 2, 5, 3, 3)]
    batches[1][1] = -batches[1][1].abs()  # no positive relevance: no curve, an undefined peak
    rec = FrameRecorder()
    rec.start()
    masks = []
    for i, rel in enumerate(batches):
        mask = torch.zeros(rel.shape[0], 5, 3, 3, dtype=torch.bool)
        mask[:, 1:3, 0, 0] = True
        mask[0, 4, :, :] = True
        masks.append(mask)
        rec.update({"m": rel}, {"m_selective": rel.clamp_min(0) * (rel > 1)}, videos=[f"v{i}"] * rel.shape[0],
                    mask=mask)
    hand = np.concatenate([_hand_shares(r) for r in batches])
    rows = rec.rows("validate")
    assert set(rows[0]) == set(CSV_COLUMNS) and {r["stage"] for r in rows} == {"val"}
    got = np.full((5, 5), np.nan)
    for r in rows:
        if r["method"] == "m":
            got[r["clip"], r["frame"]] = r["value"]
    np.testing.assert_allclose(got, hand, rtol=1e-6, equal_nan=True)
    assert [r["video"] for r in rows if r["method"] == "m" and r["frame"] == 0] == ["v0"] * 3 + ["v1"] * 2
    defined = hand[~np.isnan(hand).all(1)]
    art = rec.artifacts()
    np.testing.assert_allclose(art["temporal_curves"]["m"], defined.mean(0), rtol=1e-6)
    np.testing.assert_allclose(art["temporal_curves_std"]["m"], defined.std(0, ddof=1), rtol=1e-5)
    assert art["temporal_curves_n"]["m"] == 4
    # ground truth: each clip's mask share per frame, and the fraction of clips moving at each frame
    gt = np.concatenate([_hand_shares(m[:, None].float()) for m in masks])
    np.testing.assert_allclose(art["temporal_curves"][keys.GROUND_TRUTH], gt.mean(0), rtol=1e-6)
    assert art["temporal_motion_frames"] == [0.0, 1.0, 1.0, 0.0, 0.4]
    res = rec.results("validate")
    assert res["val/frame_share_peak_n_undefined/m"] == 1 and res["val/frame_share_peak_n/m"] == 4
    assert res["val/frame_share_peak/m"] == pytest.approx(defined.max(1).mean(), rel=1e-6)
    rec.start()
    assert rec.rows("test") == [] and rec.results("test")["test/frame_share_peak_n/m"] == 0


def test_recorder_refuses_a_bad_mask_and_a_changing_clip_length() -> None:
    rec = FrameRecorder()
    rel = torch.rand(2, 1, 4, 2, 2)
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 4, H, W\)"):
        rec.update({"m": rel}, {}, mask=torch.ones(2, 3, 2, 2, dtype=torch.bool))
    rec.update({"m": rel}, {})
    with pytest.raises(ValueError, match="frames per clip or maps changed within an epoch"):
        rec.update({"m": torch.rand(2, 1, 6, 2, 2)}, {})
    with pytest.raises(ValueError, match="clips: expected 2 clip indices"):
        rec.update({"m": rel}, {}, clips=[0])


def _clips_and_maps(t: int = 8) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    clips = torch.randn(3, 3, t, 4, 4)
    clips[:, 0, 6] += 2.0
    rel = torch.zeros_like(clips)
    rel[:, :, 1] = 1.0  # the baseline points at frame 1
    sel1 = torch.zeros_like(clips)
    sel1[:, :, 6] = 1.0  # the first selective map at the evidence frame 6
    sel2 = torch.zeros_like(clips)
    sel2[:, :, 2] = 1.0
    sel2[2] = 0.0  # empty for clip 2: undefined
    return clips, rel, {"m_selective_s1": sel1, "m_selective_s2": sel2}


def test_stage_runs_the_temporal_window_test_per_sigma_under_registered_keys() -> None:
    clips, rel, sel = _clips_and_maps()
    model, targets = FrameReader(6), torch.zeros(3, dtype=torch.long)
    stage = FaithfulnessStage(["m"], [1.0, 2.0], references=["freeze"], steps=2, num_clips=3, random_floor=False,
                              matched_budget=False, reliance=False, temporal_window=3, seed=5)
    records = ClipRecords()
    stage.start()
    stage.record_into(records)
    stage.update(model, clips, targets, {"m": rel}, sel)
    values = stage.results("test")
    seeds = clip_seeds(clips, 5)
    for sigma, name in ((1.0, "m_selective_s1"), (2.0, "m_selective_s2")):
        ref = temporal_window_drops(model, clips, rel, sel[name], seeds, 0, window=3)
        method = keys.at_sigma("m", sigma, True)
        for quantity, metric in keys.TEMPORAL_METRICS.items():
            v = ref[quantity]
            ok = ~torch.isnan(v)
            assert values[f"test/{metric}/{method}"] == pytest.approx(float(v[ok].mean()), abs=1e-6)
            assert values[f"test/{metric}_n/{method}"] == int(ok.sum())
            assert values[f"test/{metric}_n_undefined/{method}"] == int((~ok).sum())
    assert values["test/temporal_drop_selective/m@s1"] > 0.05  # the evidence frame matters
    assert values["test/temporal_drop_baseline/m@s1"] == pytest.approx(0.0, abs=1e-6)  # frame 1 never does
    assert values["test/temporal_drop_selective_n_undefined/m@s2"] == 1
    names = {(r["metric"], r["method"]) for r in records.rows}
    assert ("temporal_advantage", "m@s2") in names and ("temporal_drop_random", "m@s1") in names


def test_temporal_window_refusals() -> None:
    with pytest.raises(ValueError, match="faithfulness.temporal needs selective maps"):
        FaithfulnessStage(["m"], [], references=["freeze"], matched_budget=False)
    with pytest.raises(ValueError, match="faithfulness.temporal_window"):
        FaithfulnessStage(["m"], [1.0], references=["freeze"], temporal_window=0)
    stage = FaithfulnessStage(["m"], [1.0], references=["freeze"], steps=2, temporal_window=9)
    with pytest.raises(ValueError, match=r"faithfulness.temporal_window=9 exceeds the 8 frames"):
        stage.check_data((3, 8, 4, 4))
    with pytest.raises(ValueError, match="temporal drops must have one shape"):
        TemporalWindowDrop().update(torch.zeros(2), torch.zeros(3), torch.zeros(2))
    assert FaithfulnessStage(["m"], [1.0], references=["freeze"], temporal=False).temporal is None


def test_pipeline_records_frames_and_logs_the_temporal_keys() -> None:
    torch.manual_seed(0)

    def explainer(model: nn.Module, clips: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return clips.clamp_min(0) * torch.linspace(0.1, 1.0, clips.shape[2]).view(1, 1, -1, 1, 1)

    pipe = ExplanationPipeline({"lin": explainer}, sigma=1.0, keep_clips=0,
                               faithfulness={"steps": 2, "num_clips": 2, "references": ["freeze"],
                                             "random_floor": False, "reliance": False})
    model = FrameReader(3)
    pipe.start(model)
    clips = torch.randn(3, 3, 4, 4, 4)
    pipe.explain(model, clips, torch.zeros(3, dtype=torch.long), videos=["a", "b", "c"])
    values = pipe.results("test")
    for metric in keys.TEMPORAL_METRICS.values():
        assert values[f"test/{metric}_n/lin"] + values[f"test/{metric}_n_undefined/lin"] == 2
    assert values["test/frame_share_peak_n/lin"] == 3
    rows = pipe.temporal_rows("test")
    assert {r["method"] for r in rows} == {"lin", "lin_selective"} and len(rows) == 2 * 3 * 4
    art = pipe.artifacts()
    assert set(art["temporal_curves"]) == {"lin", "lin_selective"} and len(art["temporal_curves"]["lin"]) == 4


def test_temporal_csv_keeps_other_stages_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "temporal.csv"
    val = [{"stage": "val", "clip": 0, "video": "a", "method": "m", "frame": f, "value": v}
           for f, v in enumerate([0.25, 0.75])]
    write_temporal_csv(val, path)
    write_temporal_csv([{**r, "value": r["value"] / 2} for r in val], path)  # a later val epoch replaces it
    test = [{"stage": "test", "clip": 0, "video": "a", "method": "m", "frame": 0, "value": math.nan}]
    write_temporal_csv(test, path)
    back = read_temporal_csv(path)
    assert [(r["stage"], r["frame"]) for r in back] == [("val", 0), ("val", 1), ("test", 0)]
    assert [r["value"] for r in back[:2]] == [0.125, 0.375] and math.isnan(back[2]["value"])
    assert path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    (tmp_path / "bad.csv").write_text("clip,value\n0,1\n")
    with pytest.raises(ValueError, match="bad.csv has columns"):
        read_temporal_csv(tmp_path / "bad.csv")


def test_table8_rows_from_metric_keys() -> None:
    metrics = {"test/temporal_advantage/dtd": 0.2, "test/temporal_advantage_std/dtd": 0.1,
               "test/temporal_advantage_n/dtd": 7.0, "test/temporal_advantage_n_undefined/dtd": 1.0,
               "test/temporal_drop_selective/dtd": 0.5, "test/temporal_drop_baseline/dtd": 0.4,
               "test/temporal_drop_random/dtd": 0.3, "val/temporal_advantage/gbp": 0.9, "test/precision/dtd": 1.0}
    rows = temporal_rows(metrics, "test")
    assert len(rows) == 1
    row = rows[0]
    assert row["method"] == "dtd" and row["temporal_advantage"] == 0.2 and row["temporal_advantage_std"] == 0.1
    assert (row["temporal_drop_selective"], row["temporal_drop_baseline"], row["temporal_drop_random"]) == (0.5, 0.4,
                                                                                                            0.3)
    assert row["temporal_advantage_n"] == 7.0 and row["temporal_advantage_n_undefined"] == 1.0
    assert row["temporal_drop_random_n"] is None
    assert [r["method"] for r in temporal_rows(metrics, "validate")] == ["gbp"]


class _Run:
    def __init__(self, fail: bool = False) -> None:
        self.logged: list[dict] = []
        self.fail = fail

    def log(self, data: dict) -> None:
        if self.fail:
            raise RuntimeError("disk full")
        self.logged.append(data)


class _WandbLike:
    def __init__(self, run: _Run) -> None:
        self.experiment = run

    def log_table(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        pass


class _CsvLike:
    def log_metrics(self, metrics: dict) -> None:
        raise AssertionError("never called")


def test_wandb_line_plots_go_to_wandb_loggers_only_and_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("wandb")
    curves = {"dtd": [0.5, 0.5], "dtd_selective": [None, 1.0], "gbp": [0.1, 0.9], keys.GROUND_TRUTH: [0.5, 0.5]}
    run = _Run()
    assert log_temporal_curves([_CsvLike(), _WandbLike(run)], curves, "test") == 2
    assert [next(iter(d)) for d in run.logged] == ["test/temporal/dtd", "test/temporal/gbp"]
    assert log_temporal_curves([_CsvLike()], curves, "test") == 0
    assert log_temporal_curves([_WandbLike(_Run(fail=True))], curves, "test") == 0
    assert "Could not log the per-frame curves" in caplog.text


def test_sigma_sweep_objective_temporal_advantage() -> None:
    from omegaconf import OmegaConf

    from motion_relevance.explain_app import objective_values, validate_objective

    obj = {"name": "temporal_advantage", "method": "dtd"}
    metrics = {"test/temporal_advantage/dtd": 0.3}
    assert objective_values(metrics, obj, [2.0]) == {"objective": 0.3, "objective_sigma": 2.0}
    multi = {"test/temporal_advantage/dtd@s1": 0.1, "test/temporal_advantage/dtd@s3": float("nan")}
    out = objective_values(multi, obj, [1.0, 3.0])
    assert out["objective/s3"] == -1.0 and out["objective"] == 0.1 and out["objective_sigma"] == 1.0
    with pytest.raises(KeyError, match="temporal_advantage needs faithfulness with temporal=true"):
        objective_values({}, obj, [2.0])
    cfg = OmegaConf.create({"objective": obj, "explainers": {"dtd": {}}, "faithfulness": {"enabled": True}})
    validate_objective(cfg)  # temporal defaults to on
    for off in ({"enabled": False}, {"enabled": True, "temporal": False}):
        cfg.faithfulness = off
        with pytest.raises(ValueError, match="objective.name=temporal_advantage needs the temporal-window test"):
            validate_objective(cfg)


def test_an_explainer_named_ground_truth_is_refused() -> None:
    from omegaconf import OmegaConf

    from motion_relevance.utils.validation import check_explainers

    cfg = OmegaConf.create({"explainers": {keys.GROUND_TRUTH: {"_target_": "motion_relevance.explain.GradCAM"}}})
    with pytest.raises(ValueError, match="explainers.ground_truth: the name is reserved"):
        check_explainers(cfg)


def test_figure_from_run_metrics(tmp_path: Path) -> None:
    from motion_relevance.pipeline.temporal import temporal_file, write_temporal_figure

    metrics = {"test/temporal_curves": {"dtd": [0.5, 0.5], "dtd_selective": [0.2, 0.8]},
               "test/temporal_curves_n": {"dtd": 2, "dtd_selective": 2}, "test/temporal_motion_frames": [0.0, 1.0]}
    path = write_temporal_figure(metrics, tmp_path, "test")
    assert path == tmp_path / "test_temporal.png" and path.stat().st_size > 1000
    assert write_temporal_figure(metrics, tmp_path, "validate") is None
    assert temporal_file() == "temporal.csv" and temporal_file(2, 1) == "temporal_rank1.csv"
