"""The architectures study: its Hydra sweeps (configs, skip-finished jobs) and its analysis (tidy results that
reproduce the README), checked on hand-made runs and on the committed results."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from motion_relevance.conf import CONFIG_DIR
from motion_relevance.utils.run import CONFIG_DIGEST, INPUT_DIGESTS, RUN_STATUS, config_digest, run_and_record

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments" / "architectures"


def _analyse():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("study_analyse", STUDY / "analyse.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _compose(root: str, overrides: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(root, overrides=overrides, return_hydra_config=True)


# ------------------------------------------------------------------------------------------- sweeps
def test_training_sweep_covers_every_recipe_and_names_runs_as_the_explanation_sweep_reads_them() -> None:
    cfg = _compose("train", ["experiment=study_train"])
    params = cfg.hydra.sweeper.params
    recipes = params["+recipe"].split(",")
    assert sorted(recipes) == sorted(p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml"))
    assert params["seed"].count(",") >= 2  # three seeds or more
    assert params["data.generator.context_bias"].split(",")[0] == "0"  # the competence check runs first
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.launcher._target_.endswith("BasicLauncher")
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == "${study.run}"
    assert cfg.skip_finished is True and cfg.callbacks.early_stopping.monitor == "val/acc"
    assert cfg.callbacks.model_checkpoint.filename == "best"
    for kind in ("cnn", "transformers"):
        explain = _compose("explain", [f"experiment=study_explain_{kind}"])
        raw = OmegaConf.to_container(explain, resolve=False)
        assert raw["ckpt_path"] == "${study.out_dir}/train/${study.run}/checkpoints/best.ckpt"
        assert raw["hydra"]["sweep"]["subdir"] == "${study.run}"
        assert explain.num_clips >= 32 and explain.faithfulness.num_clips >= 16
        assert explain.randomization.num_clips >= 8 and explain.per_clip is True
        active = [k for k, v in explain.explainers.items() if v is not None]
        assert active[0] == explain.objective.method or explain.objective.method in active
        models = explain.hydra.sweeper.params["study.model"].split(",")
        assert set(models) <= set(recipes) or kind == "transformers"


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml")))
def test_each_recipe_trains_the_model_it_is_named_after(recipe: str) -> None:
    with_recipe = _compose("train", ["experiment=study_train", f"+recipe={recipe}"])
    plain = _compose("train", [f"model={recipe}"])
    assert with_recipe.hydra.runtime.choices.model == recipe
    assert with_recipe.model.net._target_ == plain.model.net._target_
    assert 0.0 < with_recipe.competence <= 1.0


def _job_cfg(tmp_path: Path, value: int = 1):  # type: ignore[no-untyped-def]
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "skip_finished": True, "value": value,
                            "extras": {}})
    return cfg


def test_a_finished_job_of_the_same_config_is_skipped_and_a_changed_or_failed_one_runs(tmp_path: Path) -> None:
    calls = []

    def task(cfg):  # type: ignore[no-untyped-def]
        calls.append(int(cfg.value))
        return {"score": 0.5 * cfg.value}, {}

    first = run_and_record(_job_cfg(tmp_path), task, page=False)
    assert first[RUN_STATUS] == "finished" and calls == [1]
    again = run_and_record(_job_cfg(tmp_path), task, page=False)
    assert calls == [1] and again["score"] == 0.5 and again[CONFIG_DIGEST] == first[CONFIG_DIGEST]
    run_and_record(_job_cfg(tmp_path, value=2), task, page=False)  # another configuration: runs
    assert calls == [1, 2]
    cfg = _job_cfg(tmp_path, value=2)
    with open_dict(cfg):
        cfg.skip_finished = False
    run_and_record(cfg, task, page=False)  # skipping switched off: runs
    assert calls == [1, 2, 2]

    def failing(cfg):  # type: ignore[no-untyped-def]
        calls.append(-1)
        raise RuntimeError("worker died")

    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        run_and_record(_job_cfg(failed), failing, page=False)
    with pytest.raises(RuntimeError):  # a failed job has no finished record: it runs again
        run_and_record(_job_cfg(failed), failing, page=False)
    assert calls.count(-1) == 2


def test_a_second_process_in_a_busy_run_folder_stops_before_touching_it(tmp_path: Path) -> None:
    """Two sweeps over the same grid (or a job started twice) must not write one folder at once: the second stops
    with one line naming the folder, and the first run's record is left where it is."""
    import fcntl

    from motion_relevance.utils.run import RUN_LOCK, OneLineError

    run_and_record(_job_cfg(tmp_path), lambda cfg: ({"score": 1.0}, {}), page=False)
    before = (tmp_path / "metrics.json").read_bytes()
    calls = []
    with open(tmp_path / RUN_LOCK, "a") as held:  # what the running process holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        cfg = _job_cfg(tmp_path, value=2)
        with pytest.raises(OneLineError, match=rf"{tmp_path} is in use.*hydra.sweep.subdir"):
            run_and_record(cfg, lambda cfg: (calls.append(1) or {"score": 2.0}, {}), page=False)
        assert calls == [] and (tmp_path / "metrics.json").read_bytes() == before
        assert not (tmp_path / "metrics.previous.json").exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    run_and_record(_job_cfg(tmp_path, value=2), lambda cfg: (calls.append(1) or {"score": 2.0}, {}), page=False)
    assert calls == [1]  # the folder is free again once the first run ended


def test_a_job_whose_task_fills_in_config_keys_is_still_skipped(tmp_path: Path) -> None:
    """mr-train copies a model's preprocessing into ``data`` and mr-explain a checkpoint's pathways: the record's
    digest is of the configuration as given, so the next run of the same job is skipped (mc3_small and SlowFast
    were trained again on every rerun while the digest was taken after the task)."""
    calls = []

    def task(cfg):  # type: ignore[no-untyped-def]
        calls.append(1)
        with open_dict(cfg):
            cfg.filled_in = {"pathways": 4}
        return {"score": 0.5}, {}

    first = run_and_record(_job_cfg(tmp_path), task, page=False)
    again = run_and_record(_job_cfg(tmp_path), task, page=False)
    assert calls == [1] and again[CONFIG_DIGEST] == first[CONFIG_DIGEST] == config_digest(_job_cfg(tmp_path))


def test_an_explanation_of_a_checkpoint_trained_again_is_not_skipped(tmp_path: Path) -> None:
    """The same configuration over a changed checkpoint is another run: by the digest the record keeps, and for
    records without one by the checkpoint's modification time."""
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights of the first training")
    calls = []

    def task(cfg):  # type: ignore[no-untyped-def]
        calls.append(ckpt.read_bytes())
        return {"score": 0.5}, {}

    def cfg():  # type: ignore[no-untyped-def]
        job = _job_cfg(tmp_path / "explain")
        with open_dict(job):
            job.ckpt_path = str(ckpt)
        return job

    first = run_and_record(cfg(), task, page=False)
    assert first[INPUT_DIGESTS] == {"ckpt_path": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    run_and_record(cfg(), task, page=False)
    assert len(calls) == 1  # same checkpoint: skipped
    ckpt.write_bytes(b"weights of the second training")
    run_and_record(cfg(), task, page=False)
    assert calls == [b"weights of the first training", b"weights of the second training"]

    record = tmp_path / "explain" / "metrics.json"  # a record written before input digests were kept
    metrics = json.loads(record.read_text())
    del metrics[INPUT_DIGESTS]
    record.write_text(json.dumps(metrics))
    os.utime(ckpt, (record.stat().st_mtime - 60,) * 2)
    run_and_record(cfg(), task, page=False)
    assert len(calls) == 2  # checkpoint older than the record: skipped (the record is left as it was)
    os.utime(ckpt, (record.stat().st_mtime + 60,) * 2)
    run_and_record(cfg(), task, page=False)
    assert len(calls) == 3  # checkpoint written after the record: run again
    assert INPUT_DIGESTS in json.loads(record.read_text())


# ------------------------------------------------------------------------------------------- analysis
def _clip_rows(rng: np.random.Generator, n: int, freeze: float, static: float) -> list[dict]:
    rows = []
    for c in range(n):
        def add(metric: str, method: str, value: float, c: int = c) -> None:
            rows.append({"clip": c, "video": f"v{c}.avi", "label": c % 8, "target": c % 8, "metric": metric,
                         "method": method, "value": value})
        add("full_freeze_drop", "model", freeze + rng.normal(0, 0.05))
        add("full_static_drop", "model", static + rng.normal(0, 0.05))
        add("full_mean_drop", "model", 0.9)
        for sigma in ("4", "1"):
            add("freeze_drop_freeze", f"dtd_selective_s{sigma}", 0.3 + rng.normal(0, 0.02))
            add("topm_drop_freeze", f"dtd@s{sigma}", 0.2 + rng.normal(0, 0.02))
            add("random_drop_freeze", f"dtd@s{sigma}", 0.05)
            add("drop_advantage_random_freeze", f"dtd@s{sigma}", 0.25 if sigma == "4" else 0.1)
            add("spatial_bias", f"dtd@s{sigma}", 0.8)
        add("gt_precision", "dtd", 0.1)
        add("gt_precision", "dtd_selective_s4", 0.5)
        for k in range(3):
            add(f"randomization_s{k}", "dtd", [1.0, 0.6, 0.1][k])
            add(f"randomization_s{k}", "dtd_selective", [1.0, 0.7, 0.2][k])
    return rows


def test_summary_recomputes_from_tidy_files_and_leaves_out_runs_below_their_bar(tmp_path: Path) -> None:
    mod = _analyse()
    rng = np.random.default_rng(0)
    runs = [{"model": "toy", "context_bias": 0.0, "seed": s, "test_acc": acc, "val_acc_best": acc, "epochs": 5,
             "max_epochs": 30, "train_seconds": 10.0, "competence": 0.9, "learned": int(acc >= 0.9)}
            for s, acc in ((1, 0.95), (2, 0.97), (3, 0.5))]
    clips = {"toy_cb0_s1": _clip_rows(rng, 6, 0.6, 0.2), "toy_cb0_s2": _clip_rows(rng, 6, 0.5, 0.3),
             "toy_cb0_s3": _clip_rows(rng, 6, -0.2, 0.9)}  # seed 3 missed its bar: not summarised
    results = tmp_path / "results"
    mod.write_csv(results / "runs.csv", runs, mod.RUN_COLUMNS)
    for name, rows in clips.items():
        mod.write_csv(results / "clips" / f"{name}.csv", rows, mod.CLIP_COLUMNS)
    read_runs, read_clips = mod.read_results(results)
    summary = mod.summarise(read_runs, read_clips)
    at = {(r["method"], r["metric"]): r for r in summary}
    acc = at[("model", "test_acc")]
    assert acc["mean"] == pytest.approx((0.95 + 0.97 + 0.5) / 3) and acc["n"] == 3
    learned = [r for name in ("toy_cb0_s1", "toy_cb0_s2") for r in clips[name]]
    dm = [max(r["value"], 0) for r in learned if r["metric"] == "full_freeze_drop"]
    da = [max(r["value"], 0) for r in learned if r["metric"] == "full_static_drop"]
    rel = at[("model", "motion_reliance")]
    assert rel["mean"] == pytest.approx(sum(dm) / (sum(dm) + sum(da))) and rel["n"] == 12
    assert 0.0 <= rel["lo"] <= rel["mean"] <= rel["hi"] <= 1.0
    sel = [r["value"] for r in learned if (r["metric"], r["method"]) == ("freeze_drop_freeze", "dtd_selective_s4")]
    top = [r["value"] for r in learned if (r["metric"], r["method"]) == ("topm_drop_freeze", "dtd@s4")]
    assert at[("dtd@s4", "drop_advantage_topm_freeze")]["mean"] == pytest.approx(np.mean(np.subtract(sel, top)))
    assert at[("dtd", "randomization_all")]["mean"] == pytest.approx(0.1)
    assert at[("dtd_selective", "randomization_half")]["mean"] == pytest.approx(0.7)
    assert mod.best_sigma(summary, "toy", 0.0, "dtd")[0] == 4.0
    text = mod.tables(read_runs, summary)
    assert "| toy | 0 | 3 | 2 (bar 0.9) | 0.950, 0.970, 0.500 |" in text
    verdict = mod.verdict(read_runs, summary, "toy")
    assert "uses motion" in verdict and "sigma 4" in verdict and "baseline yes" in verdict
    mod.write_csv(results / "summary.csv", summary, mod.SUMMARY_COLUMNS)
    with open(results / "summary.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert list(cells[0]) == list(mod.SUMMARY_COLUMNS)
    assert all(c[k] == "" or math.isfinite(float(c[k])) for c in cells for k in ("mean", "lo", "hi", "n"))


def test_a_cell_whose_runs_all_missed_the_bar_has_no_explanation_rows(tmp_path: Path) -> None:
    mod = _analyse()
    runs = [{"model": "toy", "context_bias": 0.0, "seed": 1, "test_acc": 0.2, "competence": 0.9, "learned": 0,
             "train_seconds": 1.0, "epochs": 3}]
    summary = mod.summarise(runs, {"toy_cb0_s1": _clip_rows(np.random.default_rng(1), 3, 0.5, 0.5)})
    assert [r["metric"] for r in summary] == ["test_acc"]
    assert "missed its bar" in mod.verdict(runs, summary, "toy")


def test_calibration_ranks_the_explanations_motion_share_against_motion_reliance() -> None:
    mod = _analyse()

    def rows(model: str, bias: float, reliance: float, spatial: float) -> list[dict]:
        return [{"model": model, "context_bias": bias, "method": "model", "metric": "motion_reliance",
                 "mean": reliance, "lo": reliance, "hi": reliance, "n": 8},
                {"model": model, "context_bias": bias, "method": "dtd@s4", "metric": "spatial_bias",
                 "mean": spatial, "lo": spatial, "hi": spatial, "n": 8},
                {"model": model, "context_bias": bias, "method": "dtd", "metric": "gt_precision",
                 "mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 8}]

    # less spatial bias where more reliance: the same order (rank correlation 1); one model reversed: 0.5
    agree = rows("a", 0.0, 0.9, 0.1) + rows("b", 0.0, 0.5, 0.4) + rows("c", 0.0, 0.2, 0.8) + rows("a", 1.0, 0.3, 0.6)
    text = mod.calibration(agree)
    assert "over 3 architectures" in text and "motion reliance is 1.00 " in text
    assert "a, context bias 0 → 1: motion reliance 0.900 → 0.300, spatial bias 0.100 → 0.600" in text
    assert "for 1 of 1 architectures" in text
    assert "for 0 of 1 architectures" in mod.calibration(agree[:-6] + rows("a", 1.0, 0.3, 0.05))
    swapped = rows("a", 0.0, 0.9, 0.4) + rows("b", 0.0, 0.5, 0.1) + rows("c", 0.0, 0.2, 0.8)
    assert "motion reliance is 0.500 " in mod.calibration(swapped)


def test_trials_table_lists_each_trial_and_the_models_without_a_study_run(tmp_path: Path) -> None:
    mod = _analyse()
    path = tmp_path / "recipe_trials.csv"
    columns = ("model", "recipe", "overrides", "seed", "epochs", "train_seconds", "cpu_seconds", "val_acc",
               "test_acc", "note")
    mod.write_csv(path, [
        {"model": "vit", "recipe": "plain", "epochs": 30, "val_acc": 0.5, "test_acc": 0.4567, "note": "missed"},
        {"model": "vit", "recipe": "stopped", "epochs": 3, "note": "not tested"},
        {"model": "cnn", "recipe": "plain", "epochs": 9, "val_acc": 1.0, "test_acc": 0.99, "note": "learned"}],
        columns)
    text = mod.trials_table(path, runs=[{"model": "cnn", "learned": 1}])
    assert "| vit | plain | 30 | 0.500 | 0.457 | missed |" in text
    assert "| vit | stopped | 3 | – | – | not tested |" in text
    assert "**vit** has no finished run in the study grid yet (best tested trial 0.457 above; " in text
    assert "**cnn** has no" not in text
    text = mod.trials_table(path, runs=[{"model": "cnn", "learned": 1}, {"model": "vit", "learned": 0}])
    assert "**vit** missed its bar in every study run (best tested trial 0.457 above; " in text


def test_a_row_with_a_stray_comma_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe_trials.csv"
    path.write_text("model,recipe,note\nvit,plain,fine\nvit,plain,missed (0.1, 0.2)\n")
    with pytest.raises(ValueError, match=r"recipe_trials.csv, line 3: 3 columns"):
        _analyse().read_csv(path)
    path.write_text("model,recipe,note\nvit,plain\n")
    with pytest.raises(ValueError, match="line 2"):
        _analyse().read_csv(path)


def test_committed_results_reproduce_summary_and_readme() -> None:
    """summary.csv and the README's tables are what the analysis computes from runs.csv and the per-clip files."""
    mod = _analyse()
    results = STUDY / "results"
    if not (results / "summary.csv").is_file():
        pytest.skip("no study results committed yet")
    runs, clips = mod.read_results(results)
    recomputed = mod.summarise(runs, clips)
    with open(results / "summary.csv", newline="") as handle:
        committed = list(csv.DictReader(handle))
    assert len(recomputed) == len(committed)
    for new, old in zip(recomputed, committed):
        assert (new["model"], new["method"], new["metric"]) == (old["model"], old["method"], old["metric"])
        for key in ("mean", "lo", "hi"):
            value = float(old[key]) if old[key] else math.nan
            assert new[key] == pytest.approx(value, rel=1e-12, abs=1e-15, nan_ok=True), (old, key)
        assert int(new["n"]) == int(old["n"])
    readme = (STUDY / "README.md").read_text()
    assert mod.tables(runs, committed) in readme
    reliance = [r for r in committed if r["metric"] == "motion_reliance"]
    assert all(0.0 <= float(r[k]) <= 1.0 for r in reliance for k in ("mean", "lo", "hi") if r[k])


def test_the_recipe_probe_writes_one_row_per_epoch(tmp_path: Path, data_root: Path) -> None:
    """experiments/architectures/timesformer_probe.py on the tiny data: a row per epoch, accuracies in [0, 1]."""
    import subprocess
    import sys

    from tests.conftest import TINY_DATA

    pytest.importorskip("transformers")
    out = tmp_path / "probe.csv"
    subprocess.run([sys.executable, str(STUDY / "timesformer_probe.py"), "--epochs", "2", "--out", str(out),
                    "--time-embeddings-std", "0.02", "model=hf_timesformer_tiny", f"paths.data_dir={data_root}",
                    f"paths.cache_dir={data_root}/cache", *TINY_DATA], check=True, cwd=ROOT, capture_output=True)
    rows = list(csv.DictReader(out.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r[k]) <= 1.0 for r in rows for k in ("train_acc", "val_acc"))
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
