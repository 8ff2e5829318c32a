"""The promises the project makes about trust: each test feeds one bad input or fault and checks the promise.

1. A shared checkpoint is data, never code.
2. No cache serves a stale value.
3. A run's input is prepared as the checkpoint's was, or the run is refused.
4. The project deletes only what it wrote.
5. A failing W&B never takes a run or its local record down.
6. Every documented option works.
7. Split files are checked, not trusted.
8. A cache entry that does not match what was asked is recomputed.
9. Bad values are refused before any work; the run's record says what happened.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from motion_relevance.data import MotionShapesConfig, generate_motion_shapes, load_split
from motion_relevance.data.splits import LIST_DIR, VIDEO_DIR
from motion_relevance.digests import cache_key, state_digest, tensor_digest
from motion_relevance.explain.cache import AttributionCache, CachedExplainer
from motion_relevance.explain_app import explain
from motion_relevance.metrics.flow import FlowEstimator
from motion_relevance.models.checkpoint import load_classifier, read_checkpoint
from motion_relevance.report import main as report_main
from motion_relevance.train import train
from tests.conftest import ROOT, SHARED_DATA, TINY_DATA, compose_config


def _explain_cfg(tmp_path: Path, data_root: Path, ckpt: Path, *overrides: str):
    return compose_config(
        "explain",
        [f"paths.data_dir={data_root}", f"paths.cache_dir={tmp_path}/cache", f"ckpt_path={ckpt}", "logger=csv",
         "~callbacks.progress_bar", "num_clips=2", "~explainer@explainers.gbp",
         "~explainer@explainers.guided_gradcam", *TINY_DATA, *overrides],
        tmp_path,
    )


# ------------------------------------------------------------------------- 1. a checkpoint is data, never code
class _Payload:
    """Pickles to a call that creates a marker file: what a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickled_payload_in_a_checkpoint_never_runs(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, evil)
    with pytest.raises(ValueError, match="refused"):
        load_classifier(evil)
    with pytest.raises(ValueError, match="refused"):
        explain(_explain_cfg(tmp_path, data_root, evil))
    assert not marker.exists()


def test_foreign_target_in_a_model_description_is_refused(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    source, copy = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    source.write_text("x")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for model in ({"_target_": "shutil.copyfile", "src": str(source), "dst": str(copy)},
                  {**ckpt["motion_relevance"]["model"], "init": {"_target_": "shutil.copyfile", "src": str(source),
                                                                  "dst": str(copy)}}):
        bad = dict(ckpt, motion_relevance={**ckpt["motion_relevance"], "model": model})
        path = tmp_path / "foreign.ckpt"
        torch.save(bad, path)
        with pytest.raises(ValueError, match=r"shutil\.copyfile|_target_"):
            load_classifier(path)
        with pytest.raises(ValueError, match=r"shutil\.copyfile|_target_"):
            explain(_explain_cfg(tmp_path, data_root, path))
    assert not copy.exists()


def test_resuming_from_an_unsafe_checkpoint_is_refused_before_training(train_cfg, tmp_path: Path,
                                                                       checkpoint: Path) -> None:
    marker = tmp_path / "payload_ran"
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(ValueError, match="refused"):
        train(train_cfg(f"ckpt_path={evil}", "trainer.max_epochs=2"))
    assert not marker.exists()
    assert isinstance(read_checkpoint(checkpoint), dict)  # our own checkpoints read as data


# ---------------------------------------------------------------------------- 2. no cache serves a stale value
def _key_parts() -> dict:
    return {"model": "m", "explainer": {"class": "DeepTaylor", "pooling": "winner"}, "dtype": "float32",
            "inputs": [tensor_digest(torch.zeros(3, 4, 5, 5))], "target": 1, "preprocessing": {"stride": 1}}


def test_weights_digest_covers_batchnorm_counters_and_scalars() -> None:
    """Every state tensor is digested, 0-dim ones too (BatchNorm's int64 ``num_batches_tracked``), so a model with
    BatchNorm can be cached and a changed counter or running statistic changes the key."""
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
    before = state_digest(net)
    assert tensor_digest(torch.tensor(3)) != tensor_digest(torch.tensor(4))
    assert tensor_digest(torch.tensor(3)) != tensor_digest(torch.tensor([3]))  # the shape is part of the digest
    net[1].num_batches_tracked += 1
    changed = state_digest(net)
    net[1].running_mean += 1
    assert len({before, changed, state_digest(net)}) == 3


@pytest.mark.parametrize("part, other", [
    ("model", "m2"), ("explainer", {"class": "DeepTaylor", "pooling": "proportional"}), ("dtype", "float16"),
    ("inputs", [tensor_digest(torch.ones(3, 4, 5, 5))]), ("target", 2), ("preprocessing", {"stride": 2}),
])
def test_every_input_of_a_key_changes_it(part: str, other) -> None:
    parts = _key_parts()
    assert cache_key("attribution", **parts) == cache_key("attribution", **_key_parts())
    assert cache_key("attribution", **{**parts, part: other}) != cache_key("attribution", **parts)
    assert cache_key("flow", **parts) != cache_key("attribution", **parts)


def test_equal_inputs_give_equal_keys_across_processes() -> None:
    code = ("import torch; from motion_relevance.digests import cache_key, tensor_digest; "
            "print(cache_key('attribution', model='m', inputs=[tensor_digest(torch.arange(24.).view(2, 3, 4))], "
            "explainer={'b': 1.5, 'a': [1, 2]}, target=3))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout.strip() for seed in (1, 2)}
    here = cache_key("attribution", model="m", inputs=[tensor_digest(torch.arange(24.).view(2, 3, 4))],
                     explainer={"a": [1, 2], "b": 1.5}, target=3)
    assert outs == {here}


def test_attribution_keys_follow_each_input(tmp_path: Path) -> None:
    cache = AttributionCache(tmp_path)
    clip = torch.randn(3, 4, 8, 8)
    base = cache.key(model="m", explainer={"e": 1}, inputs=[clip], target=0)
    assert base == cache.key(model="m", explainer={"e": 1}, inputs=[clip.clone()], target=0)
    for changed in (dict(model="m2"), dict(explainer={"e": 2}), dict(inputs=[clip + 1e-6]), dict(target=1)):
        args = {"model": "m", "explainer": {"e": 1}, "inputs": [clip], "target": 0, **changed}
        assert cache.key(**args) != base, changed
    assert AttributionCache(tmp_path, dtype="float16").key(model="m", explainer={"e": 1}, inputs=[clip],
                                                           target=0) != base


def test_flow_of_regenerated_frames_is_recomputed(tmp_path: Path) -> None:
    est = FlowEstimator(cache_dir=tmp_path)
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (1, 4, 32, 32, 3), dtype=np.uint8)
    est(clip)
    est(clip)
    assert (est.hits, est.misses) == (1, 1)
    est(np.ascontiguousarray(clip[:, :, :, ::-1]))  # same video name and start, other content
    assert (est.hits, est.misses) == (1, 2)


def test_data_regenerated_in_place_gives_fresh_numbers(tmp_path: Path, checkpoint: Path) -> None:
    """The defect: regenerating motion_shapes in place (another seed) reused old flow and explanations."""
    root = tmp_path / "data"
    shared = [f"paths.data_dir={root}", f"cache.dir={tmp_path}/attr"]
    first, _ = explain(_explain_cfg(tmp_path / "a", root, checkpoint, *shared))
    regen = [*shared, "data.generator.seed=7"]
    again, _ = explain(_explain_cfg(tmp_path / "b", root, checkpoint, *regen))
    fresh_cache = [o.replace(f"{tmp_path}/attr", f"{tmp_path}/attr_fresh") for o in regen]
    fresh, _ = explain(_explain_cfg(tmp_path / "c", root, checkpoint, *fresh_cache,
                                    f"paths.cache_dir={tmp_path}/cache_fresh"))
    assert again["test/cache_hits"] == 0
    compared = [k for k in fresh if k.startswith("test/") and "overhead" not in k and "cache" not in k]
    assert len(compared) > 20
    for key in compared:
        if not isinstance(fresh[key], (int, float, torch.Tensor)):  # e.g. the list of randomisation stages
            assert again[key] == fresh[key], key
            continue
        a, b = float(again[key]), float(fresh[key])
        assert (a != a and b != b) or a == pytest.approx(b, rel=1e-9, abs=1e-12), key
    assert any(float(first[k]) != float(fresh[k]) for k in compared if "precision" in k)


# --------------------------------------------------------------- 3. input prepared as in training, or refused
@pytest.mark.parametrize("override, key", [("data.stride=2", "stride"), ("data.resize=[40,40]", "resize"),
                                           ("data.mean=[0.5,0.5,0.5]", "mean"), ("data.decoder=opencv", "decoder"),
                                           ("data.channel_order=BGR", "channel_order")])
def test_differently_preprocessed_data_is_refused_naming_both_values(tmp_path: Path, data_root: Path,
                                                                     checkpoint: Path, override: str,
                                                                     key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}: checkpoint .* vs data") as err:
        explain(_explain_cfg(tmp_path, data_root, checkpoint, override))
    assert f"data.{key}=" in str(err.value)  # the override that fixes it


# ------------------------------------------------------------------ 4. the project deletes only what it wrote
def test_generator_refuses_a_root_with_user_files_and_keeps_them(tmp_path: Path) -> None:
    cfg = MotionShapesConfig(classes=["right", "left"], videos_per_class=2, num_groups=2, test_groups=1,
                             frame_size=[32, 32], object_size=[6, 8])
    for sub in (LIST_DIR, "masks"):
        root = tmp_path / sub
        (root / sub).mkdir(parents=True)
        mine = root / sub / "my_notes.txt"
        mine.write_text("mine")
        with pytest.raises(FileExistsError, match="not generated by motion_shapes"):
            generate_motion_shapes(root, cfg)
        assert mine.read_text() == "mine"


def test_regeneration_deletes_only_generated_files(tmp_path: Path) -> None:
    root = tmp_path / "ms"
    cfg = MotionShapesConfig(classes=["right", "left"], videos_per_class=2, num_groups=2, test_groups=1,
                             frame_size=[32, 32], object_size=[6, 8])
    generate_motion_shapes(root, cfg)
    user = root / LIST_DIR / "trainlist02.txt"
    user.write_text("mine")
    with pytest.raises(FileExistsError, match="not generated"):  # a user's file in the tree: refused, kept
        generate_motion_shapes(root, MotionShapesConfig(**{**cfg.to_dict(), "seed": 3}))
    assert user.read_text() == "mine"
    user.unlink()
    edited = root / LIST_DIR / "testlist01.txt"
    edited.write_text(edited.read_text() + "\n")  # a generated file the user changed: never deleted
    with pytest.raises(FileExistsError, match="changed since"):
        generate_motion_shapes(root, MotionShapesConfig(**{**cfg.to_dict(), "seed": 3}))
    assert edited.exists()
    edited.unlink()
    out = generate_motion_shapes(root, MotionShapesConfig(**{**cfg.to_dict(), "seed": 3, "videos_per_class": 4}))
    assert out.generated and len(list((root / VIDEO_DIR).rglob("*.avi"))) == 8


def test_interrupted_generation_is_cleaned_up_and_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import motion_relevance.data.synthetic as synthetic

    root = tmp_path / "ms"
    cfg = MotionShapesConfig(classes=["right", "left"], videos_per_class=2, num_groups=2, test_groups=1,
                             frame_size=[32, 32], object_size=[6, 8])
    calls = {"n": 0}
    real = synthetic.write_video

    def crash_on_third(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_video", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate_motion_shapes(root, cfg)
    monkeypatch.setattr(synthetic, "write_video", real)
    out = generate_motion_shapes(root, cfg)
    assert out.generated and out.num_videos == 4


# --------------------------------------------------------------------------- 5. W&B never takes a run down
@pytest.fixture
def fresh_wandb():  # type: ignore[no-untyped-def]
    """W&B keeps one settings singleton and service per process: tear it down around a test that changes W&B's
    environment (mode, host, key), so neither this test nor the next one runs with another test's settings."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


@pytest.mark.usefixtures("fresh_wandb")
def test_wandb_online_without_key_warns_and_keeps_the_local_record(train_cfg, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    cfg = train_cfg("logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                    "trainer.limit_val_batches=1")
    from motion_relevance.utils.run import run_and_record

    metrics = run_and_record(cfg, train)
    run = Path(cfg.paths.output_dir)
    assert "test/acc" in metrics and json.loads((run / "metrics.json").read_text())["test/acc"] is not None
    assert "test/acc" in (run / "csv" / "metrics.csv").read_text()
    assert sum("W&B failed" in r.getMessage() for r in caplog.records) == 1


class _SilentServer:
    """A loopback TCP server that accepts connections and never answers: an unreachable W&B host."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.usefixtures("fresh_wandb")
def test_unreachable_wandb_host_is_bounded_by_the_init_timeout(train_cfg, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server = _SilentServer()
    try:
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.port}")
        monkeypatch.setenv("HOME", str(tmp_path))
        cfg = train_cfg("logger=wandb", "logger.wandb.init_timeout=5", "trainer.max_epochs=1",
                        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
        from motion_relevance.utils.run import run_and_record

        start = time.monotonic()
        metrics = run_and_record(cfg, train)
        assert time.monotonic() - start < 120
        assert "test/acc" in json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
        assert "test/acc" in metrics
    finally:
        server.close()


# ------------------------------------------------------------------------------ 6. every documented option
def test_flow_none_explains_without_flow_metrics(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    metrics, _ = explain(_explain_cfg(tmp_path, data_root, checkpoint, "flow=none"))
    assert "test/gt_precision/dtd" in metrics and not any(k.startswith("test/precision/") for k in metrics)
    assert (Path(metrics["checkpoint"]).exists())


def test_flow_none_in_training_callbacks(train_cfg) -> None:
    metrics, _ = train(train_cfg("callbacks=explain", "flow=none", "trainer.fast_dev_run=true", "num_clips=2"))
    assert "test/gt_f1/dtd_selective" in metrics and "test/precision/dtd" not in metrics


# ------------------------------------------------------------------------------ 7. split files are checked
def _tree(tmp_path: Path, train_lines: list[str], test_lines: list[str], folders: tuple[str, ...] = ("A", "B"),
          files: tuple[str, ...] = ("A/v_A_g01_c01.avi", "B/v_B_g01_c01.avi", "A/v_A_g02_c01.avi",
                                    "B/v_B_g02_c01.avi")) -> Path:
    root = tmp_path / "tree"
    (root / LIST_DIR).mkdir(parents=True)
    (root / LIST_DIR / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(folders)))
    (root / LIST_DIR / "trainlist01.txt").write_text("".join(f"{line}\n" for line in train_lines))
    (root / LIST_DIR / "testlist01.txt").write_text("".join(f"{line}\n" for line in test_lines))
    for folder in folders:
        (root / VIDEO_DIR / folder).mkdir(parents=True, exist_ok=True)
    for rel in files:
        (root / VIDEO_DIR / rel).write_bytes(b"")
    return root


def test_split_line_leaving_the_root_is_refused_with_file_and_line(tmp_path: Path) -> None:
    outside = tmp_path / "outside.avi"
    outside.write_bytes(b"")
    root = _tree(tmp_path, ["A/v_A_g01_c01.avi 1", "A/../../../outside.avi 1"], ["A/v_A_g02_c01.avi"])
    with pytest.raises(ValueError, match=r"trainlist01.txt:2: path .* leaves the data root"):
        load_split(root, 1, "train")


def test_repeated_and_overlapping_videos_are_refused_or_counted(tmp_path: Path, data_root: Path) -> None:
    from motion_relevance.datamodules import VideoDataModule

    root = _tree(tmp_path, ["A/v_A_g01_c01.avi 1", "B/v_B_g01_c01.avi 2"],
                 ["A/v_A_g02_c01.avi"] * 9 + ["B/v_B_g02_c01.avi"])
    with pytest.raises(ValueError, match=r"testlist01.txt: 1 videos are listed more than once .*lines \[1, 2"):
        load_split(root, 1, "test")
    _, items, _ = load_split(root, 1, "test", allow_duplicates=True)
    assert len(items) == 10
    overlap = _tree(tmp_path / "o", ["A/v_A_g01_c01.avi 1", "B/v_B_g01_c01.avi 2"],
                    ["A/v_A_g01_c01.avi", "B/v_B_g02_c01.avi"])
    dm = VideoDataModule(overlap, num_workers=0, crop_size=None, resize=None)
    with pytest.raises(ValueError, match=r"listed in both trainlist01.txt and testlist01.txt .*line 1"):
        dm._check_lists()
    dm = VideoDataModule(overlap, num_workers=0, crop_size=None, resize=None, allow_overlap=True)
    dm._check_lists()
    assert dm.data_counts["overlap_videos"] == 1


def test_split_parse_errors_name_file_and_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["A/v_A_g01_c01.avi 1", "B/v B g01.avi 2"], ["A/v_A_g02_c01.avi"],
                 files=("A/v_A_g01_c01.avi", "B/v B g01.avi", "A/v_A_g02_c01.avi"))
    _, items, _ = load_split(root, 1, "train")  # a file name with spaces is a path, not a label
    assert [it.path for it in items][1] == f"{VIDEO_DIR}/B/v B g01.avi"
    (root / LIST_DIR / "trainlist01.txt").write_text("A/v_A_g01_c01.avi 1\nB/v_B_g01_c01.avi two\n")
    with pytest.raises(ValueError, match=r"trainlist01.txt:2: expected '<path> <1-based label>'"):
        load_split(root, 1, "train")
    (root / LIST_DIR / "trainlist01.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=r"trainlist01.txt: the list is empty"):
        load_split(root, 1, "train")


def test_class_without_training_videos_is_refused(tmp_path: Path) -> None:
    from motion_relevance.datamodules import VideoDataModule

    root = _tree(tmp_path, ["A/v_A_g01_c01.avi 1", "A/v_A_g03_c01.avi 1"], ["A/v_A_g02_c01.avi"],
                 folders=("A", "B"), files=("A/v_A_g01_c01.avi", "A/v_A_g03_c01.avi", "A/v_A_g02_c01.avi"))
    dm = VideoDataModule(root, num_workers=0, crop_size=None, resize=None, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"1 of 2 classes have no training videos on disk \(B\)"):
        dm.setup("fit")


def test_the_real_split_files_pass_every_check() -> None:
    root = SHARED_DATA / "ucf101_mini"
    if not root.is_dir():
        pytest.skip("no shared real data")
    from motion_relevance.data.splits import read_class_ind, read_list, split_overlap

    names = read_class_ind(root / LIST_DIR / "classInd.txt")
    for split in (1, 2, 3):
        assert split_overlap(root, split, names) == []
        for subset in ("train", "test"):  # parses, stays inside the root, no video listed twice
            listed = read_list(root / LIST_DIR / f"{subset}list{split:02d}.txt", names)
            assert len(listed) > 3000 and len({v.path.lower() for v in listed}) == len(listed)
    _, items, missing = load_split(root, 1, "train", allow_missing=True)
    assert len(items) == 2 and len(missing) > 9000


# ------------------------------------------------------------ 8. a cache entry that does not match is redone
def test_float16_entries_are_never_served_to_a_float32_run(tmp_path: Path) -> None:
    from motion_relevance.explain import GradCAM
    from motion_relevance.models import C3D

    net = C3D(num_classes=3, width=0.125, crop_size=32).eval()
    clips, target = torch.randn(2, 3, 16, 32, 32), torch.tensor([0, 1])
    half = CachedExplainer(GradCAM(), AttributionCache(tmp_path, dtype="float16"))
    half(net, clips, target)
    full_cache = AttributionCache(tmp_path, dtype="float32")
    out = CachedExplainer(GradCAM(), full_cache)(net, clips, target)
    assert out.hits == 0 and full_cache.info()["misses"] == 2
    assert torch.equal(out.relevance, GradCAM()(net, clips, target))


def test_wrong_shaped_entry_is_recomputed_once(tmp_path: Path) -> None:
    from motion_relevance.explain import GradCAM
    from motion_relevance.models import C3D

    net = C3D(num_classes=3, width=0.125, crop_size=32).eval()
    clips, target = torch.randn(2, 3, 16, 32, 32), torch.tensor([0, 1])
    cache = AttributionCache(tmp_path)
    explainer = CachedExplainer(GradCAM(), cache)
    reference = explainer(net, clips, target).relevance
    key = explainer.cache.key(model=__import__("motion_relevance.digests").digests.state_digest(net),
                              explainer=explainer._config, inputs=[clips[0]], target=0)
    cache.put(key, [torch.ones(1, 8, 4, 4)], 1.0)  # an entry of the wrong shape under the right key
    for _ in range(2):
        cache.reset_counters()
        again = explainer(net, clips, target)  # clip 0 recomputed alone: equal up to batched-conv rounding
        torch.testing.assert_close(again.relevance, reference, rtol=1e-5, atol=1e-7)
    assert again.hits == 2 and cache.info()["corrupt"] == 0  # the recomputed entry serves the second run


# ----------------------------------------------- 9. bad values refused before work; the record says what happened
@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=-1", "trains forever"), ("trainer.max_epochs=0", "max_epochs=0"),
    ("+explainers.foo=bar", "explainers.foo"), ("selective.sigma=-1", "selective.sigma"),
    ("num_clips=0", "num_clips"),
])
def test_bad_values_are_refused_before_any_data_is_made(train_cfg, tmp_path: Path, override: str,
                                                        message: str) -> None:
    cfg = train_cfg(override, "callbacks=explain")
    with open_dict(cfg):
        cfg.data.root = str(tmp_path / "never_generated")
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (tmp_path / "never_generated").exists()


def test_explain_refuses_a_non_explainer_entry_before_reading_the_checkpoint(tmp_path: Path,
                                                                              data_root: Path) -> None:
    with pytest.raises(ValueError, match="explainers.foo"):
        explain(_explain_cfg(tmp_path, data_root, tmp_path / "does_not_exist.ckpt", "+explainers.foo=bar"))


def test_metrics_json_names_last_checkpoint_and_csv_path(train_cfg) -> None:
    cfg = train_cfg("trainer.max_epochs=1", "trainer.limit_val_batches=1")
    metrics, _ = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert metrics["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert Path(metrics["best_checkpoint"]).exists()
    assert (run / "csv" / "metrics.csv").exists()
    readme = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert "csv/version_0/metrics.csv" not in readme


def test_resumed_run_says_where_it_continues_from(train_cfg, checkpoint: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO)
    metrics, _ = train(train_cfg(f"ckpt_path={checkpoint}", "trainer.max_epochs=2", "trainer.limit_val_batches=1",
                                 "test=false"))
    assert metrics["resumed_from"] == str(checkpoint.resolve())
    assert any("Continuing from" in r.getMessage() and str(checkpoint.parent.parent) in r.getMessage()
               for r in caplog.records)


def _job(sweep: Path, name: str, metrics: dict | str | None, sigma: float) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"selective:\n  sigma: {sigma}\n")
    (job / ".hydra" / "overrides.yaml").write_text(f"- selective.sigma={sigma}\n")
    if metrics is not None:
        (job / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))


def test_report_names_broken_jobs_and_marks_an_incomplete_sweep(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    (sweep).mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    good = {"test/gt_f1/dtd_selective": 0.5, "test/precision/dtd_selective": 0.4, "test/precision/dtd": 0.3}
    _job(sweep, "0", good, 1.0)
    _job(sweep, "1", None, 2.0)  # failed: no metrics.json
    _job(sweep, "2", json.dumps(good)[:20], 3.0)  # truncated
    report_main([str(sweep)])
    err = capsys.readouterr().err
    assert "job 1" in err and "job 2" in err
    text = (sweep / "sigma_report.md").read_text()
    assert "job 1: no metrics.json" in text and "job 2:" in text and "not valid JSON" in text
    assert "INCOMPLETE sweep" in text


def test_report_refuses_a_folder_that_is_no_run(tmp_path: Path) -> None:
    other = tmp_path / "holiday_photos"
    other.mkdir()
    (other / "beach.jpg").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        report_main([str(other)])
    assert exc.value.code == 2 and not (other / "tables").exists()
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"test/precision/dtd": 0.')
    with pytest.raises(SystemExit) as exc:
        report_main([str(broken)])
    assert exc.value.code == 2 and not (broken / "tables").exists()


def _calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def test_no_project_code_loads_user_files_as_code() -> None:
    """Every torch.load in the package passes weights_only=True; no instantiate of a checkpoint's description."""
    loads, unsafe = [], []
    for path in (ROOT / "src").rglob("*.py"):
        for call in _calls(path):
            name = getattr(call.func, "attr", getattr(call.func, "id", ""))
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if name == "load" and getattr(call.func, "value", None) is not None and \
                    getattr(call.func.value, "id", "") == "torch":
                flag = [k for k in call.keywords if k.arg == "weights_only"]
                loads.append(where)
                if not flag or not (isinstance(flag[0].value, ast.Constant) and flag[0].value.value is True):
                    unsafe.append(where)
            if name == "instantiate" and any(getattr(a, "id", "") in ("net_config", "meta") for a in call.args):
                unsafe.append(where)
    assert loads and unsafe == []
