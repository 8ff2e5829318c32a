"""One run folder, whoever runs the pipeline: mr-train with the explanation callbacks writes what mr-explain writes
(metrics.json, tables, figures, per-clip values), the tables equal mr-report's rebuild from metrics.json, and a
run folder's earlier record is set aside, never merged."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from motion_relevance.report import main as report_main
from motion_relevance.train import set_aside_checkpoints, train
from motion_relevance.utils.run import (
    CONFIG_DIGEST,
    INPUT_DIGESTS,
    RUN_CPU_SECONDS,
    RUN_SECONDS,
    RUN_STATUS,
    cpu_seconds,
    run_and_record,
)


def _record(run: Path) -> dict:
    """The run's metrics.json without the bookkeeping every finished run adds (checked here)."""
    record = json.loads((run / "metrics.json").read_text())
    assert record.pop(RUN_STATUS) == "finished" and record.pop(RUN_SECONDS) >= 0 and record.pop(CONFIG_DIGEST)
    assert record.pop(RUN_CPU_SECONDS) >= 0 and isinstance(record.pop(INPUT_DIGESTS), dict)
    return record


def test_cpu_seconds_counts_this_process_and_its_finished_children() -> None:
    """A job's CPU time includes its data-loader workers: a child that spins 0.3 CPU seconds adds at least that."""
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass"
    before = cpu_seconds()
    subprocess.run([sys.executable, "-c", spin], check=True)
    assert cpu_seconds() - before >= 0.3

FEW_EXPLAINERS = ["~explainer@explainers.gbp", "~explainer@explainers.guided_gradcam"]


def test_train_with_explain_callbacks_writes_the_run_folder(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("callbacks=explain", "trainer.fast_dev_run=true", "num_clips=2", "+per_clip=true",
                    "callbacks.explanations.stages=[validate,test]", "faithfulness.num_clips=1",
                    "faithfulness.references=[freeze]", "faithfulness.steps=2", *FEW_EXPLAINERS)
    metrics = run_and_record(cfg, train)
    run = Path(cfg.paths.output_dir)
    record = json.loads((run / "metrics.json").read_text())
    for stage in ("val", "test"):
        assert f"{stage}/precision/dtd" in record and f"{stage}/faithfulness_curves" in record, stage
        assert record[f"{stage}/faithfulness_steps"] == 2
    assert "test/faithfulness_curves" in metrics  # the entry point's return value holds the record too
    assert "failed_writers" not in record
    for folder in ("tables", "tables/val"):
        for name in ("table1_precision", "table2_agreement", "table3_selectivity", "table6_faithfulness"):
            assert (run / folder / f"{name}.csv").exists() and (run / folder / f"{name}.md").exists(), (folder, name)
    assert list((run / "explanations").glob("test_*_grid.png")) and list((run / "explanations").glob("val_*_grid.png"))
    assert (run / "explanations" / "test_faithfulness_freeze.png").exists()
    for name, stage in (("per_clip.csv", "test"), ("per_clip_val.csv", "val")):
        rows = list(csv.DictReader((run / name).open()))
        assert rows and {r["stage"] for r in rows} == {stage}, name
        assert {r["clip"] for r in rows} == {"0", "1"}, name  # num_clips=2 clips, every metric of each

    # the tables the run wrote are exactly what mr-report rebuilds from its metrics.json
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    shutil.copy(run / "metrics.json", rebuilt / "metrics.json")
    report_main([str(rebuilt)])
    written = sorted(p.name for p in (run / "tables").glob("*.*"))
    assert written == sorted(p.name for p in (rebuilt / "tables").glob("*.*"))
    for name in written:
        assert (run / "tables" / name).read_bytes() == (rebuilt / "tables" / name).read_bytes(), name


def test_callback_hands_nothing_back_through_attributes(train_cfg) -> None:
    """The entry points read the run folder; the callback keeps no result attributes for them to collect."""
    from hydra.utils import instantiate

    cfg = train_cfg("callbacks=explain", *FEW_EXPLAINERS)
    callback = instantiate(cfg.callbacks.explanations)
    assert not hasattr(callback, "artifacts") and not hasattr(callback, "clip_rows")


def test_an_earlier_runs_metrics_are_set_aside_not_merged(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"test/precision/old": 0.9, "shared": 1}))
    cfg = OmegaConf.create({"paths": {"output_dir": str(run)}, "extras": {}})
    run_and_record(cfg, lambda c: ({"shared": 2, "test/acc": 0.5}, {}))
    assert _record(run) == {"shared": 2, "test/acc": 0.5}
    assert json.loads((run / "metrics.previous.json").read_text())["test/precision/old"] == 0.9


def test_a_run_again_in_its_folder_owns_best_ckpt_and_the_old_checkpoints_are_kept(train_cfg) -> None:
    """A study job run again in its own folder (its configuration changed): Lightning would keep the earlier run's
    best.ckpt and write best-v1.ckpt beside it, so what reads best.ckpt would get the old weights."""
    overrides = ("trainer.max_epochs=1", "test=false", "callbacks.model_checkpoint.filename=best")
    first = train_cfg(*overrides, "seed=1")
    run_and_record(first, train)
    folder = Path(first.paths.output_dir) / "checkpoints"
    old_best = (folder / "best.ckpt").read_bytes()
    second = train_cfg(*overrides, "seed=2")
    assert second.paths.output_dir == first.paths.output_dir
    run_and_record(second, train)
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert _record(Path(second.paths.output_dir))["best_checkpoint"] == str(folder / "best.ckpt")
    assert (folder / "best.ckpt").read_bytes() != old_best  # seed 2's weights
    (aside,) = (folder.parent / "replaced_checkpoints").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (aside / "best.ckpt").read_bytes() == old_best


def test_checkpoints_set_aside_twice_in_one_second_keep_both(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for n in (1, 2):
        (folder / "best.ckpt").write_text(str(n))
        set_aside_checkpoints(folder)
    kept = sorted(p.read_text() for p in (tmp_path / "replaced_checkpoints").glob("*/best.ckpt"))
    assert kept == ["1", "2"] and not list(folder.glob("*.ckpt"))
    assert set_aside_checkpoints(folder) is None and set_aside_checkpoints(tmp_path / "absent") is None


def test_the_final_record_merges_with_what_the_run_wrote(tmp_path: Path) -> None:
    """A stage's record (non-scalar results) written during the task survives the entry point's final write."""
    from motion_relevance.pipeline.record import write_metrics

    run = tmp_path / "run"

    def task(cfg):
        write_metrics(run, {"test/faithfulness_curves": {"dtd/freeze/deletion": [1.0, 0.5]}, "test/acc": 0.1})
        return {"test/acc": 0.5, "checkpoint": "x.ckpt"}, {}

    cfg = OmegaConf.create({"paths": {"output_dir": str(run)}, "extras": {}})
    run_and_record(cfg, task)
    assert _record(run) == {
        "test/faithfulness_curves": {"dtd/freeze/deletion": [1.0, 0.5]}, "test/acc": 0.5, "checkpoint": "x.ckpt"}
