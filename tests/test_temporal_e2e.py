"""When, end to end: a tiny ``mr-explain`` run folder holds temporal.csv, the per-frame figure, Table 8 and the
temporal keys."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from motion_relevance.explain_app import explain
from tests.conftest import TINY_DATA, compose_config

#: The OpenCV decoder reads the tiny synthetic videos everywhere (decord refuses 32 px frames on some builds).
DATA = [*TINY_DATA, "data.decoder=opencv"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    from motion_relevance.train import train

    tmp = tmp_path_factory.mktemp("ckpt_temporal")
    cfg = compose_config("train", [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", "logger=csv",
                                   "callbacks=default", "~callbacks.progress_bar", "trainer.max_epochs=1",
                                   "test=false", *DATA], tmp)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_explain_run_folder_holds_the_temporal_record(tmp_path: Path, data_root: Path, tiny_checkpoint: Path) -> None:
    cfg = compose_config("explain", [
        f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", f"ckpt_path={tiny_checkpoint}",
        "logger=csv", "~callbacks.progress_bar", "num_clips=3", "~explainers.gbp", "~explainers.guided_gradcam",
        "flow=none", "randomization=none", "faithfulness.references=[freeze]", "faithfulness.steps=2",
        "faithfulness.num_clips=2", "faithfulness.random_floor=false", "callbacks.explanations.overlay_videos=1",
        *DATA], tmp_path)
    metrics, _ = explain(cfg)
    run = Path(cfg.paths.output_dir)
    with open(run / "temporal.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["stage", "clip", "video", "method", "frame", "value"]
    methods = {r["method"] for r in rows}
    assert {"dtd", "dtd_selective", "gradcam", "gradcam_selective", "ground_truth"} <= methods
    frames = {int(r["frame"]) for r in rows}
    assert {int(r["clip"]) for r in rows} == {0, 1, 2} and frames == set(range(len(frames)))
    for clip in range(3):  # each defined curve sums to 1
        values = [float(r["value"]) for r in rows if r["method"] == "dtd" and int(r["clip"]) == clip and r["value"]]
        assert not values or abs(sum(values) - 1) < 1e-4
    assert (run / "explanations" / "test_temporal.png").stat().st_size > 1000
    table = run / "tables" / "table8_temporal.csv"
    assert table.exists() and (run / "tables" / "table8_temporal.md").exists()
    with open(table, newline="") as handle:
        trows = list(csv.DictReader(handle))
    assert [r["method"] for r in trows] == ["dtd", "gradcam"]
    assert {"temporal_drop_selective", "temporal_drop_baseline", "temporal_drop_random", "temporal_advantage",
            "temporal_advantage_n", "temporal_advantage_n_undefined"} <= set(trows[0])
    saved = json.loads((run / "metrics.json").read_text())
    for method in ("dtd", "gradcam"):
        for name in ("temporal_drop_selective", "temporal_drop_baseline", "temporal_drop_random",
                     "temporal_advantage"):
            assert saved[f"test/{name}_n/{method}"] + saved[f"test/{name}_n_undefined/{method}"] == 2
    assert len(saved["test/temporal_curves"]["dtd"]) == len(frames)
    assert "test/frame_share_peak/dtd" in metrics


@pytest.mark.slow
def test_train_with_explain_callbacks_writes_both_stages(tmp_path: Path, data_root: Path) -> None:
    from motion_relevance.train import train

    cfg = compose_config("train", [
        f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", "logger=csv", "callbacks=explain",
        "~callbacks.progress_bar", "trainer.fast_dev_run=true", "num_clips=2",
        "callbacks.explanations.stages=[validate,test]", "~explainers.gbp", "~explainers.guided_gradcam",
        "flow=none", "faithfulness.references=[freeze]", "faithfulness.steps=2", "faithfulness.num_clips=2",
        "faithfulness.random_floor=false", "callbacks.explanations.overlay_videos=0", *DATA], tmp_path)
    metrics, _ = train(cfg)
    run = Path(cfg.paths.output_dir)
    with open(run / "temporal.csv", newline="") as handle:
        stages = {r["stage"] for r in csv.DictReader(handle)}
    assert stages == {"val", "test"}  # the test stage's rows join the validation stage's
    assert (run / "explanations" / "test_temporal.png").exists()
    assert (run / "explanations" / "val_temporal.png").exists()
    assert (run / "tables" / "table8_temporal.md").exists()
    assert (run / "tables" / "val" / "table8_temporal.csv").exists()
    for stage in ("val", "test"):
        assert f"{stage}/temporal_advantage/dtd" in metrics, stage
