"""Trust in the run folder: metrics.json first and atomic, a failing writer reported while the others run, a full
disk and an unwritable paths.log_dir each one line, an interpolation error one line naming the key, and mr-report
naming every job of a sweep without a result (also those that never started)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from motion_relevance.explain_app import explain
from motion_relevance.explain_app import main as explain_main
from motion_relevance.pipeline import tables as tables_module
from motion_relevance.pipeline.record import FAILED_KEY, RunFolderFull, RunRecord, write_metrics
from motion_relevance.report import main as report_main
from motion_relevance.utils.run import OneLineError, check_interpolations, check_run_folder
from tests.conftest import ROOT, TINY_DATA

#: The cheapest real mr-explain run: two explainers, two clips, no faithfulness, randomisation, flow or cache.
CHEAP = ["~explainer@explainers.gbp", "~explainer@explainers.guided_gradcam", "faithfulness=none",
         "randomization=none", "flow=none", "cache=none", "num_clips=2", "logger=csv", "~callbacks.progress_bar",
         "extras.print_config=false", *TINY_DATA]


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------------------------------------ run record
def test_a_failing_writer_is_reported_once_and_the_others_still_run(tmp_path: Path, caplog) -> None:
    record = RunRecord(tmp_path)
    record.write_metrics({"test/acc": 0.5})
    caplog.set_level(logging.WARNING)

    def broken() -> None:
        raise RuntimeError("codec missing")

    assert record.guard("overlay video", tmp_path / "clip0.mp4", broken) is None
    assert record.guard("table", tmp_path / "t.md", lambda: (tmp_path / "t.md").write_text("ok")) is not None
    record.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "overlay video" in warnings[0] and "clip0.mp4" in warnings[0]
    assert (tmp_path / "t.md").read_text() == "ok"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == 0.5
    assert saved[FAILED_KEY] == [{"writer": "overlay video", "file": str(tmp_path / "clip0.mp4"),
                                  "error": "RuntimeError: codec missing"}]
    again = RunRecord(tmp_path)  # a later stage's failures are added to the earlier ones
    again.guard("table", tmp_path / "x.csv", broken)
    again.close()
    assert [f["writer"] for f in json.loads((tmp_path / "metrics.json").read_text())[FAILED_KEY]] == [
        "overlay video", "table"]


def test_a_full_disk_stops_the_writers_with_one_line(tmp_path: Path) -> None:
    record = RunRecord(tmp_path)
    with pytest.raises(RunFolderFull) as exc:
        record.guard("table", tmp_path / "tables" / "t.csv", _full)
    assert "metrics.json could not be written" in str(exc.value)
    record.write_metrics({"a": 1})
    with pytest.raises(RunFolderFull) as exc:
        record.guard("table", tmp_path / "tables" / "t.csv", _full)
    message = str(exc.value)
    assert "\n" not in message and "no space left" in message and "t.csv" in message
    assert "metrics.json holds the numbers" in message and "paths.log_dir" in message


def test_metrics_json_is_atomic_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_metrics(tmp_path, {"a": 1.0})
    monkeypatch.setattr(os, "fsync", _full)
    with pytest.raises(RunFolderFull, match="metrics.json could not be written"):
        write_metrics(tmp_path, {"a": 2.0, "b": 3.0})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1.0}  # the earlier file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left


def test_one_failing_table_leaves_the_other_tables_written(tmp_path: Path) -> None:
    metrics = {"test/precision/dtd": 0.5, "test/overhead_ms/dtd": 3.0}
    record = RunRecord(tmp_path)
    real = tables_module.write_csv

    def guard(writer, path, write):
        if Path(path).name == "table1_precision.csv":
            return record.guard(writer, path, lambda: (_ for _ in ()).throw(ValueError("bad cell")))
        return record.guard(writer, path, write)

    tables_module.write_tables(metrics, tmp_path / "tables", guard=guard)
    assert real is tables_module.write_csv
    assert not (tmp_path / "tables" / "table1_precision.csv").exists()
    for name in ("table1_precision.md", "table4_overhead.csv", "table4_overhead.md", "tables.md"):
        assert (tmp_path / "tables" / name).exists(), name
    assert [f["file"] for f in record.failed] == [str(tmp_path / "tables" / "table1_precision.csv")]


# ------------------------------------------------------------------------------------------------ end to end
def test_explain_with_a_broken_figure_writer_keeps_every_other_output(
    tmp_path: Path, data_root: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from motion_relevance.callbacks import figures
    from tests.conftest import compose_config

    def broken_grid(*args, **kwargs):
        raise RuntimeError("matplotlib backend gone")

    monkeypatch.setattr(figures, "save_explanation_grid", broken_grid)
    cfg = compose_config("explain", [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache",
                                     f"ckpt_path={checkpoint}", *CHEAP], tmp_path)
    caplog.set_level(logging.WARNING)
    metrics, _ = explain(cfg)
    run = Path(cfg.paths.output_dir)
    warnings = [r.getMessage() for r in caplog.records if "Could not write" in r.getMessage()]
    assert len(warnings) == 1 and "explanation grid" in warnings[0] and "_grid.png" in warnings[0]
    assert (run / "tables" / "table3_selectivity.csv").exists() and list((run / "explanations").glob("*_clip0.mp4"))
    record = json.loads((run / "metrics.json").read_text())
    assert [f["writer"] for f in record[FAILED_KEY]] == ["explanation grid"]
    assert "test/selectivity_area/dtd" in record and metrics[FAILED_KEY] == record[FAILED_KEY]


def test_a_full_disk_ends_mr_explain_with_one_line_after_metrics_json(
    tmp_path: Path, data_root: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run = tmp_path / "run"
    seen: list[bool] = []

    def full_table(rows, path):
        seen.append((run / "metrics.json").exists())  # metrics.json is written before any table
        _full()

    monkeypatch.setattr(tables_module, "write_csv", full_table)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["mr-explain", f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache",
                                      f"ckpt_path={checkpoint}", f"hydra.run.dir={run}", *CHEAP])
    with pytest.raises(SystemExit) as exc:
        explain_main()
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exc.value.code == 1 and seen == [True]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "no space left on device" in line]
    assert len(lines) == 1 and "/tables/table" in lines[0] and "metrics.json holds the numbers" in lines[0]
    record = json.loads((run / "metrics.json").read_text())
    assert "test/selectivity_area/dtd" in record  # the stage's numbers are safe


# ----------------------------------------------------------------------------------- refusals before work
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="offline", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "motion_relevance.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _train_main(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> SystemExit:
    """``mr-train <args>`` in this process; returns the SystemExit it ends with."""
    from motion_relevance.train import main as train_main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["mr-train", *args])
    try:
        with pytest.raises(SystemExit) as exc:
            train_main()
    finally:
        GlobalHydra.instance().clear()
    return exc.value


def test_unwritable_log_dir_is_one_line_before_hydra_makes_the_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """Tests run as root, which chmod cannot stop: a path under a regular file cannot be made by anyone."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    exit_ = _train_main(monkeypatch, [f"paths.log_dir={blocker}/logs", "logger=csv"])
    message = str(exit_.code)  # Python prints it as the process's last line, exit status 1
    assert "\n" not in message and message.startswith("Error: paths.log_dir=") and str(blocker) in message
    assert "set paths.log_dir to a folder" in message
    assert "Traceback" not in capsys.readouterr().err


def test_bad_interpolation_is_one_line_naming_the_key(tmp_path: Path, monkeypatch, capsys) -> None:
    exit_ = _train_main(monkeypatch, [f"paths.log_dir={tmp_path}/logs", f"paths.data_dir={tmp_path}/data",
                                      "logger=csv", "data.clip_len=${oops}"])
    err = capsys.readouterr().err
    assert exit_.code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("data.clip_len: ") and "oops" in line]
    assert len(lines) == 1, err[-2000:]
    assert not (tmp_path / "data").exists()  # refused before any data generation


@pytest.mark.slow
def test_unwritable_log_dir_and_bad_interpolation_are_one_line_from_the_cli(tmp_path: Path) -> None:
    """The same two refusals from a real process (exit status and stderr as a user sees them)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    proc = _cli([f"paths.log_dir={blocker}/logs", "logger=csv"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "paths.log_dir" in line]
    assert len(lines) == 1 and str(blocker) in lines[0] and "set paths.log_dir to a folder" in lines[0]
    proc = _cli([f"paths.log_dir={tmp_path}/logs", "logger=csv", "data.clip_len=${oops}"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len([line for line in proc.stderr.splitlines() if line.startswith("data.clip_len: ")]) == 1


def test_run_folder_outside_log_dir_and_interpolations_are_checked(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OneLineError, match="hydra.run.dir=.*blocker.*is not a folder"):
        check_run_folder(blocker / "run", tmp_path / "logs")
    check_run_folder(tmp_path / "logs" / "train" / "runs" / "now", tmp_path / "logs")  # fine: made on demand
    assert (tmp_path / "logs").is_dir()
    cfg = OmegaConf.create({"data": {"clip_len": "${oops}", "ok": 1}, "model": {"width": "${data.ok}"}})
    with pytest.raises(OneLineError, match=r"^data\.clip_len: .*oops.*; give data\.clip_len a plain value"):
        check_interpolations(cfg)
    check_interpolations(OmegaConf.create({"model": {"width": "${data.ok}"}, "data": {"ok": 1}}))


# --------------------------------------------------------------------------------------------- mr-report
def _multirun(sweep: Path, sweep_override: str) -> None:
    """A sweep folder as Hydra's basic sweeper leaves it: multirun.yaml with the sweeper and the task overrides."""
    sweep.mkdir(parents=True)
    hydra = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                         "max_batch_size": None, "params": None},
             "overrides": {"hydra": [], "task": [sweep_override, "ckpt_path=x.ckpt", "logger=csv"]}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra, "task_name": "explain"}))


def _job(sweep: Path, name: str, sigma: float, metrics: dict | None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"selective:\n  sigma: {sigma}\n")
    (job / ".hydra" / "overrides.yaml").write_text(f"- selective.sigma={sigma}\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_report_names_every_job_of_a_killed_sweep(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    _multirun(sweep, "selective.sigma=1,2,3,4")
    _job(sweep, "0", 1.0, {"test/precision/dtd_selective": 0.4, "test/precision/dtd": 0.3})
    _job(sweep, "1", 2.0, None)  # started, killed before metrics.json; jobs 2 and 3 never started
    report_main([str(sweep)])
    err = capsys.readouterr().err
    for job in ("1", "2", "3"):
        assert f"warning: job {job} left out" in err, job
    assert "selective.sigma=3" in err and "selective.sigma=4" in err and "never started" in err
    text = (sweep / "sigma_report.md").read_text()
    assert "Jobs left out (3 of 4)" in text and "job 3: no job folder" in text and "INCOMPLETE sweep" in text


def test_report_of_a_sweep_with_no_result_names_all_planned_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _multirun(sweep, "selective.sigma=1,2,3")
    with pytest.raises(SystemExit) as exc:
        report_main([str(sweep)])
    assert exc.value.code == 2 and not (sweep / "sigma_report.md").exists()


def test_a_full_disk_in_a_spawned_ddp_process_is_one_line_too(tmp_path: Path) -> None:
    """Under ddp_spawn rank 0's error reaches the parent as the text of its traceback."""
    from torch.multiprocessing.spawn import ProcessRaisedException

    from motion_relevance.utils.run import run_and_record

    line = "no space left on device writing the table /x/tables/t.csv; metrics.json holds the numbers; free space"

    def task(cfg):
        raise ProcessRaisedException(f"\n\n-- Process 0 terminated with the following error:\nTraceback (most recent "
                                     f"call last):\n  File \"x.py\", line 1\nmotion_relevance.pipeline.record."
                                     f"RunFolderFull: {line}\n", 0, 1234)

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}, "extras": {}})
    with pytest.raises(OneLineError) as exc:
        run_and_record(cfg, task)
    assert str(exc.value) == line
    with pytest.raises(ProcessRaisedException):  # any other error of a spawned process stays as it is
        run_and_record(cfg, lambda c: (_ for _ in ()).throw(ProcessRaisedException("boom", 0, 1)))
