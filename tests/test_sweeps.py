"""Sigma sweeps at scale: Hydra multirun with the attribution cache, grouped W&B runs, the sigma report, the
single-job sigma list, the Optuna search, the submitit launcher and DDP equality (the last two are slow)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from motion_relevance.callbacks import ExplanationCallback
from motion_relevance.datamodules import VideoDataModule, worker_start_method
from motion_relevance.digests import state_digest
from motion_relevance.explain.cache import AttributionCache, describe, explainer_config
from motion_relevance.explain_app import explain, objective_values, sigmas_of, validate_objective
from motion_relevance.explain_app import main as explain_main
from motion_relevance.report import main as report_main
from motion_relevance.train import train
from tests.conftest import ROOT, TINY_DATA, compose_config

#: Two explainers (one pixel method, one Grad-CAM-like) keep the sweep tests short.
FEW_EXPLAINERS = ["~explainer@explainers.gbp", "~explainer@explainers.guided_gradcam"]


def _common(data_root: Path, ckpt: Path, cache_dir: Path) -> list[str]:
    return [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", f"cache.dir={cache_dir}",
            f"ckpt_path={ckpt}", "~callbacks.progress_bar", "extras.print_config=false", "num_clips=2",
            *FEW_EXPLAINERS, *TINY_DATA]


def _run_cli(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """``mr-explain <args>`` in this process (the basic launcher runs multirun jobs here, one after the other)."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["mr-explain", *args])
    explain_main()
    GlobalHydra.instance().clear()


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


# ----------------------------------------------------------------------------------------------- cache (unit)
def test_cache_roundtrip_lru_eviction_and_counters(tmp_path: Path) -> None:
    rel = torch.randn(3, 4, 8, 8)
    one_entry = None
    cache = AttributionCache(tmp_path / "c", max_bytes=10**9)
    keys = [cache.key(model="m", explainer={"e": 1}, inputs=[torch.full((3, 4, 8, 8), float(s))], target=0)
            for s in range(3)]
    assert cache.get(keys[0]) is None
    cache.put(keys[0], [rel], ms=12.5)
    entry = cache.get(keys[0])
    assert entry is not None and torch.equal(entry.relevance[0], rel) and entry.ms == 12.5
    one_entry = cache.info()["bytes"]
    assert cache.info()["hits"] == 1 and cache.info()["misses"] == 1 and one_entry > rel.numel() * 4
    # a bound of 2.5 entries keeps the 2 most recently used: key 0 is refreshed by a hit, key 1 is evicted
    small = AttributionCache(tmp_path / "lru", max_bytes=int(2.5 * one_entry))
    small.put(keys[0], [rel], 1.0)
    small.put(keys[1], [rel], 1.0)
    os.utime(small.path(keys[0]), ns=(1, 1)), os.utime(small.path(keys[1]), ns=(2, 2))
    assert small.get(keys[0]) is not None  # refreshed: now the newest
    small.put(keys[2], [rel], 1.0)
    assert small.info()["evictions"] == 1 and small.info()["bytes"] <= int(2.5 * one_entry)
    assert small.get(keys[1]) is None and small.get(keys[0]) is not None and small.get(keys[2]) is not None


def test_corrupt_entry_is_recomputed_and_unwritable_folder_falls_back(tmp_path: Path) -> None:
    cache = AttributionCache(tmp_path / "c")
    key = cache.key(model="m", explainer={}, inputs=[torch.zeros(3, 2, 4, 4)], target=1)
    cache.put(key, [torch.ones(1, 2, 4, 4)], 1.0)
    cache.path(key).write_bytes(b"garbage, not an npz")
    assert cache.get(key) is None
    assert cache.info()["corrupt"] == 1 and not cache.path(key).exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="attribution cache disabled") as record:
        off = AttributionCache(blocker / "sub")
    assert len(record) == 1 and not off.enabled
    off.put(key, [torch.ones(1, 2, 4, 4)], 1.0)  # silently nothing
    assert off.get(key) is None
    with pytest.raises(ValueError, match="max_bytes"):
        AttributionCache(tmp_path / "x", max_bytes=0)


def test_cache_keys_follow_weights_explainer_config_and_clip() -> None:
    from motion_relevance.explain import GradCAM
    from motion_relevance.models import C3D

    net = C3D(num_classes=2, width=0.125, crop_size=32)
    before = state_digest(net)
    with torch.no_grad():
        net.fc8.bias.add_(1e-3)
    assert state_digest(net) != before
    assert explainer_config(GradCAM(layer="conv5b")) != explainer_config(GradCAM(layer="conv5a"))
    assert explainer_config(GradCAM(upsample="trilinear")) != explainer_config(GradCAM(upsample="nearest"))
    assert explainer_config(GradCAM()) == explainer_config(GradCAM())
    cache = AttributionCache(None, enabled=False)
    clip = torch.randn(3, 16, 32, 32)
    key = cache.key(model="m", explainer={}, inputs=[clip], target=0)
    assert key != cache.key(model="m", explainer={}, inputs=[clip.roll(1, dims=1)], target=0)  # another first frame
    assert key != cache.key(model="m", explainer={}, inputs=[clip[:, :, :28, :28]], target=0)  # another crop
    assert describe(float("nan")) == "nan"


# ---------------------------------------------------------------------------------------- bad input (unit)
@pytest.mark.parametrize("bad", [[1.0, -2.0], [1.0, float("nan")], "abc", []])
def test_bad_sigma_lists_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="selective.sigma"):
        sigmas_of(bad)
    if bad and not isinstance(bad, str):
        with pytest.raises(ValueError, match="selective.sigma"):
            ExplanationCallback(explainers={"x": lambda *a, **k: None}, selective={"sigma": bad})
    assert sigmas_of(OmegaConf.create({"s": [1, 2.5]}).s) == [1.0, 2.5]


def test_unknown_objective_lists_valid_ones(tmp_path: Path, data_root: Path) -> None:
    cfg = compose_config("explain", [f"paths.data_dir={data_root}", "ckpt_path=x", "objective.name=nope"], tmp_path)
    with pytest.raises(ValueError, match="valid objectives: auto, gt_f1, flow_precision"):
        validate_objective(cfg)
    with open_dict(cfg):
        cfg.objective.name = "gt_f1"
        cfg.objective.method = "lrp"
    with pytest.raises(ValueError, match="not a configured explainer"):
        validate_objective(cfg)


def test_objective_values_gt_f1_and_flow_precision_with_min_mass() -> None:
    obj = {"name": "auto", "method": "dtd", "min_mass": 0.2, "penalty": -1.0}
    metrics = {"test/gt_f1/dtd_selective": 0.4, "test/precision/dtd_selective": 0.9,
               "test/selectivity_mass/dtd": 0.1}
    assert objective_values(metrics, obj, [2.0])["objective"] == 0.4  # auto: masks present -> gt_f1
    flow = {**obj, "name": "flow_precision"}
    assert objective_values(metrics, flow, [2.0])["objective"] == -1.0  # mass 0.1 < 0.2
    assert objective_values({**metrics, "test/selectivity_mass/dtd": 0.3}, flow, [2.0])["objective"] == 0.9
    multi = {"test/precision/dtd_selective_s1": 0.5, "test/selectivity_mass/dtd@s1": 0.5,
             "test/precision/dtd_selective_s3": 0.8, "test/selectivity_mass/dtd@s3": 0.25}
    out = objective_values(multi, obj, [1.0, 3.0])  # auto without gt metrics -> flow precision
    assert out["objective"] == 0.8 and out["objective_sigma"] == 3.0 and out["objective/s1"] == 0.5
    penalty = {**flow, "penalty": float("-inf")}
    assert objective_values(metrics, penalty, [2.0])["objective"] == -math.inf
    with pytest.raises(KeyError, match="gt_f1"):
        objective_values({}, {**obj, "name": "gt_f1"}, [2.0])


# ------------------------------------------------------------------------------------ the sweep, end to end
def test_sigma_multirun_hits_cache_groups_runs_and_reports(
    tmp_path: Path, data_root: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "sweep"
    cache_dir = tmp_path / "attr"
    _run_cli(monkeypatch, ["-m", "selective.sigma=1,2,3", f"hydra.sweep.dir={sweep}", "logger=wandb",
                           *_common(data_root, checkpoint, cache_dir)])
    jobs = [sweep / str(i) for i in range(3)]
    metrics = [_metrics(j) for j in jobs]
    explained = 2 * 2  # num_clips x explainers
    assert metrics[0]["test/cache_misses"] == explained and metrics[0]["test/cache_hits"] == 0
    for m in metrics[1:]:  # later jobs read every explanation from disk: Captum never ran
        assert m["test/cache_hits"] == explained and m["test/cache_misses"] == 0
        assert m["test/cache_bytes"] > 0
        # hits report the stored explanation time and give identical baseline numbers
        assert m["test/overhead_ms/dtd"] == metrics[0]["test/overhead_ms/dtd"]
        assert m["test/gt_precision/dtd"] == metrics[0]["test/gt_precision/dtd"]
    assert [m["objective_sigma"] for m in metrics] == [1.0, 2.0, 3.0]
    for job in jobs:  # one offline W&B run per job, grouped by the multirun folder's name
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1
        hparams = yaml.safe_load((job / "csv" / "hparams.yaml").read_text())
        assert hparams["group"] == sweep.name
        assert hparams["selective"]["sigma"] in (1, 2, 3)

    report_main([str(sweep)])
    text = (sweep / "sigma_report.md").read_text()
    assert "sigma sweep" in text and "best sigma per method" in text
    assert (sweep / "sigma_report.png").stat().st_size > 0
    rows = list(csv.DictReader((sweep / "sigma_report.csv").read_text().splitlines()))
    assert {(r["sigma"], r["method"]) for r in rows} == {(s, m) for s in ("1.0", "2.0", "3.0")
                                                         for m in ("dtd", "gradcam")}

    # the single-job sigma list evaluates all sigmas at once and gives the same selective numbers
    multi = compose_config("explain", ["selective.sigma=[1,2,3]", "logger=csv",
                                       *_common(data_root, checkpoint, cache_dir)], tmp_path / "multi")
    m_multi, _ = explain(multi)
    assert m_multi["test/cache_misses"] == 0
    for sigma, m in zip((1, 2, 3), metrics):
        assert float(m_multi[f"test/gt_f1/dtd_selective_s{sigma}"]) == pytest.approx(m["test/gt_f1/dtd_selective"])
        assert float(m_multi[f"objective/s{sigma}"]) == pytest.approx(m["objective"])

    # a changed checkpoint (same file name, other weights) never reuses the entries
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["state_dict"]["net.fc8.bias"] = ckpt["state_dict"]["net.fc8.bias"] + 0.01
    changed = tmp_path / "changed" / "last.ckpt"
    changed.parent.mkdir()
    torch.save(ckpt, changed)
    cfg = compose_config("explain", ["logger=csv", *_common(data_root, changed, cache_dir)], tmp_path / "changed")
    m_changed, _ = explain(cfg)
    assert m_changed["test/cache_hits"] == 0 and m_changed["test/cache_misses"] == explained


def test_unwritable_cache_folder_falls_back_with_one_warning(
    tmp_path: Path, data_root: Path, checkpoint: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    cfg = compose_config("explain", ["logger=csv", "cache.dir=" + str(blocker / "attr"),
                                     *[o for o in _common(data_root, checkpoint, tmp_path) if
                                       not o.startswith("cache.dir")], "num_clips=1"], tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics, _ = explain(cfg)
    assert sum("attribution cache disabled" in str(w.message) for w in caught) == 1
    assert metrics["test/cache_enabled"] == 0 and "test/precision/dtd" in metrics


# ------------------------------------------------------------------------------------- search and scale
def test_optuna_search_returns_best_sigma(
    tmp_path: Path, data_root: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "optuna"
    _run_cli(monkeypatch, ["hparams_search=sigma_optuna", "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}",
                           "logger=csv", *_common(data_root, checkpoint, tmp_path / "attr")])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert 0.5 <= results["best_params"]["selective.sigma"] <= 6.0
    trials = list(csv.DictReader((sweep / "trials.csv").read_text().splitlines()))
    assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials)
    assert results["best_value"] == max(float(t["value"]) for t in trials)
    assert _metrics(sweep / "3")["test/cache_hits"] > 0


def _cli_env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", HYDRA_FULL_ERROR="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _two_job_sigma_sweep(tmp_path: Path, data_root: Path, checkpoint: Path, *launcher: str) -> Path:
    """``mr-explain -m selective.sigma=1,4`` in a subprocess with the given launcher overrides; checks both jobs."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "motion_relevance.explain_app", "-m", "selective.sigma=1,4",
           f"hydra.sweep.dir={sweep}", "logger=csv", *_common(data_root, checkpoint, tmp_path / "attr"),
           *launcher]  # the launcher's overrides last: they win over _common's
    proc = subprocess.run(cmd, cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert "test/gt_f1/dtd_selective" in _metrics(sweep / job)
    return sweep


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweeps]'")
    sweep = _two_job_sigma_sweep(tmp_path, data_root, checkpoint, "hydra/launcher=submitit_local",
                                 "hydra.launcher.timeout_min=10")
    assert (sweep / ".submitit").is_dir()


def _start_method_in_a_loky_worker(num_workers: int) -> str | None:
    from motion_relevance.datamodules import worker_start_method

    return worker_start_method(num_workers)


def test_dataloader_workers_fork_inside_a_joblib_worker_and_keep_the_default_elsewhere() -> None:
    """Hydra's joblib launcher runs jobs in loky workers, whose default context cannot start DataLoader workers."""
    joblib = pytest.importorskip("joblib")
    assert worker_start_method(0) is None and worker_start_method(2) is None  # this process: Python's default
    assert worker_start_method(2, "spawn") == "spawn"
    in_loky = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(_start_method_in_a_loky_worker)(n)
                                                       for n in (0, 2))
    assert in_loky == [None, "fork"]
    with pytest.raises(ValueError, match="multiprocessing_context"):
        VideoDataModule(root=".", multiprocessing_context="threads")


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_whose_dataloaders_have_workers(tmp_path: Path, data_root: Path,
                                                                 checkpoint: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[sweeps]'")
    sweep = _two_job_sigma_sweep(tmp_path, data_root, checkpoint, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                 "data.num_workers=1")
    assert all(OmegaConf.load(sweep / job / ".hydra" / "config.yaml").data.num_workers == 1 for job in ("0", "1"))


@pytest.mark.slow
def test_ddp_two_cpu_processes_equal_one_process(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    def run(*overrides: str) -> dict:
        cfg = compose_config("explain", ["logger=csv", "cache=none", *_common(data_root, checkpoint, tmp_path),
                                         "num_clips=null", *overrides], tmp_path / "_".join(overrides or ("one",)))
        metrics, _ = explain(cfg)
        return {k: float(v) if isinstance(v, (int, float, torch.Tensor)) else v  # stage lists stay as they are
                for k, v in metrics.items() if k.startswith("test/")}

    single = run()
    ddp = run("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert set(single) == set(ddp)
    assert single["test/explained_clips"] == ddp["test/explained_clips"] == 4  # every test clip, none twice
    compared = [k for k in single if "overhead_ms" not in k]  # wall times differ by nature
    assert len(compared) > 50
    for key in compared:
        a, b = single[key], ddp[key]
        if isinstance(a, dict):  # mean faithfulness curves: to float32 rounding of a probability (below)
            assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a), key
            continue
        if not isinstance(a, float):
            assert a == b, key
            continue
        # the faithfulness values are differences of float32 probabilities from forward passes of other batch
        # compositions (2 clips per process vs 4): equal to float32 rounding of a probability, not relatively;
        # Spearman correlations rank explanations of such passes, where near-ties may swap
        perturbed = any(p in key for p in ("drop", "auc", "reliance"))
        tolerance = {"rel": 1e-6, "abs": 1e-5 if "randomization" in key else 1e-6 if perturbed else 1e-9}
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, **tolerance), key

    # training runs on the same strategy too
    cfg = compose_config("train", [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", "logger=csv",
                                   "callbacks=default", "~callbacks.progress_bar", "trainer=ddp",
                                   "trainer.accelerator=cpu", "trainer.max_epochs=1", *TINY_DATA],
                         tmp_path / "train_ddp")
    metrics, _ = train(cfg)
    assert "test/acc" in metrics and Path(cfg.paths.output_dir, "checkpoints", "last.ckpt").exists()
