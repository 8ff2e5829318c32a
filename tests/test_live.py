"""Live explanations (mr-live): frame sources, sliding windows + loop padding, pacing, outputs, bad input."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import decord
import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from motion_relevance.classifier import VideoClassifier
from motion_relevance.conf import CONFIG_DIR
from motion_relevance.live import app as live_app
from motion_relevance.live.config import fill_data_node
from motion_relevance.live.source import CameraSource, FileSource, SourceError, open_source, target_size
from motion_relevance.live.windows import Pacer, SlidingWindow, Window, count_windows, iter_windows
from tests.conftest import ROOT, SHARED_DATA, compose_config

CLASSES = [f"class{i}" for i in range(8)]
NET = {"_target_": "motion_relevance.models.C3D", "num_classes": 8, "width": 0.125, "clip_len": 16,
       "crop_size": 56, "in_channels": 3, "dropout": 0.0, "init": "kaiming"}
PRE = {"clip_len": 16, "stride": 1, "resize": None, "crop_size": [56, 56], "mean": [0.29, 0.29, 0.29],
       "std": [0.16, 0.16, 0.16], "scale": 255.0, "channel_order": "RGB"}
REAL_VIDEOS = sorted((SHARED_DATA / "videos").glob("*")) if (SHARED_DATA / "videos").is_dir() else []


def save_checkpoint(path: Path, preprocessing: dict | None = None, net_config: dict | None = None) -> Path:
    """A checkpoint in the layout ModelCheckpoint writes (state_dict + VideoClassifier.on_save_checkpoint)."""
    torch.manual_seed(0)
    net_config = dict(net_config or NET)
    net = hydra.utils.instantiate(net_config)
    module = VideoClassifier(net=net, net_config=net_config, preprocessing=PRE if preprocessing is None
                             else preprocessing, class_names=CLASSES)
    checkpoint = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def make_video(path: Path, num_frames: int, size: tuple[int, int] = (48, 64), fps: float = 25.0,
               fourcc: str = "MJPG") -> Path:
    """A moving bright square on a dark background, ``size`` (H, W)."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path} with {fourcc}"
    side = max(4, min(h, w) // 4)
    for i in range(num_frames):
        frame = np.full((h, w, 3), 30, np.uint8)
        x = (i * 3) % max(1, w - side)
        frame[h // 3 : h // 3 + side, x : x + side] = (40, 200, 250)
        writer.write(frame)
    writer.release()
    return path


def expected_windows(n: int, window: int, stride: int) -> int:
    """Independent formula: one window if the stream fits in one, else ceil((n - window) / stride) + 1
    (the last one partial and loop padded when the strides do not end exactly on the last frame)."""
    return 1 if n <= window else math.ceil((n - window) / stride) + 1


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("live_ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live_videos")


def live_cfg(tmp_path: Path, source: object, ckpt: Path, *overrides: str):
    return compose_config("live", [f"source={source}", f"ckpt_path={ckpt}", "logger=none", "progress=false",
                                   *overrides], tmp_path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("n", [1, 10, 15, 16, 17, 24, 25, 40, 41, 47])
@pytest.mark.parametrize(("window", "stride"), [(16, 8), (16, 16), (16, 5), (4, 6)])
def test_window_count_follows_from_frames_window_stride(n: int, window: int, stride: int) -> None:
    sw = SlidingWindow(window, stride)
    frames = ((np.full((2, 2, 3), i, np.uint8), i / 25) for i in range(n))
    wins = list(iter_windows(sw, frames))
    if stride <= window:
        assert len(wins) == expected_windows(n, window, stride)
    assert len(wins) == count_windows(n, window, stride)
    assert all(w.frames.shape == (window, 2, 2, 3) for w in wins)
    assert [w.start for w in wins] == [k * stride for k in range(len(wins))]
    if stride <= window:  # every frame is shown exactly once in the overlay video
        assert sum(w.num_real - w.new_from for w in wins) == n


def test_short_stream_gives_one_loop_padded_window() -> None:
    sw = SlidingWindow(16, 8)
    wins = list(iter_windows(sw, ((np.full((1, 1, 3), i, np.uint8), i / 25) for i in range(10))))
    assert len(wins) == 1 and wins[0].padded and wins[0].num_real == 10
    assert wins[0].frames[:, 0, 0, 0].tolist() == [i % 10 for i in range(16)]


def test_stream_ending_mid_window_pads_the_last_window() -> None:
    sw = SlidingWindow(16, 8)
    wins = list(iter_windows(sw, ((np.full((1, 1, 3), i, np.uint8), i / 25) for i in range(29))))
    last = wins[-1]
    assert [w.start for w in wins] == [0, 8, 16] and last.num_real == 13 and last.new_from == 8
    assert last.frames[:, 0, 0, 0].tolist() == [16 + (j % 13) for j in range(16)]
    assert last.ready_s == pytest.approx(28 / 25)


def _win(k: int, stride: int = 8, window: int = 16, fps: float = 25.0) -> Window:
    start = k * stride
    return Window(k, start, np.zeros((window, 1, 1, 3), np.uint8), window, 0, (start + window - 1) / fps)


def test_drop_policy_skips_windows_when_processing_is_slower_than_the_source() -> None:
    n, window, stride, fps = 200, 16, 8, 25.0
    for policy, cost in (("drop", 1.0), ("drop", 0.01), ("block", 1.0)):
        pacer = Pacer(policy, fps, num_frames=n)
        sw = SlidingWindow(window, stride)
        e2e = []
        for win in iter_windows(sw, ((np.zeros((1, 1, 3), np.uint8), i / fps) for i in range(n))):
            if pacer.should_explain(win, sw.next_end(win, n)):
                pacer.start(win)
                e2e.append(pacer.finish(win, cost))
            else:
                pacer.drop()
        total = count_windows(n, window, stride)
        assert pacer.explained + pacer.dropped == total
        if policy == "drop" and cost == 1.0:  # 1 s per window vs a window every 0.32 s: about 2 of 3 dropped
            assert pacer.dropped > total // 2
            assert max(e2e) < 2 * cost + stride / fps  # stays live: latency bounded
        elif policy == "drop":
            assert pacer.dropped == 0 and max(e2e) == pytest.approx(cost)
        else:  # block explains all and falls further and further behind
            assert pacer.dropped == 0 and e2e[-1] > 10 * cost


def test_live_pacer_uses_frames_arrived() -> None:
    arrived = [24]
    pacer = Pacer("drop", 25.0, live=True, arrived=lambda: arrived[0], clock=lambda: 5.0, t0=0.0)
    assert not pacer.should_explain(_win(0), next_end=24)  # the next window is complete: skip this one
    arrived[0] = 23
    assert pacer.should_explain(_win(0), next_end=24)
    assert pacer.finish(_win(0), 0.1) == pytest.approx(5.0 - 15 / 25)


def test_target_size_follows_the_checkpoint() -> None:
    assert target_size((240, 320), "auto", [128, 171], (112, 112)) == (128, 171)
    assert target_size((240, 320), "auto", None, (56, 56)) == (56, 75)
    assert target_size((1080, 1920), "auto", None, (56, 56)) == (56, 100)
    assert target_size((40, 60), "native", None, (56, 56)) == (56, 84)  # too small: scaled up to the crop
    assert target_size((64, 64), "native", None, (56, 56)) is None
    assert target_size((240, 320), 100, None, (56, 56)) == (100, 133)
    assert target_size((240, 320), [60, 80], None, (56, 56)) == (60, 80)


# ------------------------------------------------------------------------------------------------ sources
@pytest.mark.parametrize(("name", "fourcc"), [("v.avi", "MJPG"), ("v_ffv1.avi", "FFV1"), ("v.mp4", "mp4v"),
                                              ("v.mkv", "FFV1")])
def test_file_source_reads_containers_incrementally(videos: Path, name: str, fourcc: str) -> None:
    path = make_video(videos / name, 21, size=(30, 40), fps=12.0, fourcc=fourcc)
    with FileSource(path, crop_size=(16, 16), chunk=4) as src:
        assert src.num_frames == 21 and src.fps == pytest.approx(12.0)
        assert src.size == (16, 21)
        got = list(src.frames())
    assert len(got) == 21 and got[0][0].shape == (16, 21, 3) and got[0][0].dtype == np.uint8
    assert got[-1][1] == pytest.approx(20 / 12.0)


def test_file_source_step_keeps_every_other_frame(videos: Path) -> None:
    path = make_video(videos / "step.avi", 21)
    with FileSource(path, resize="native", step=2) as src:
        assert src.num_frames == 11 and src.fps == pytest.approx(12.5)
        assert len(list(src.frames())) == 11


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nope.mp4.*no such file"):
        open_source(tmp_path / "nope.mp4")


@pytest.mark.parametrize("content", [b"", b"this is not a video" * 50])
def test_corrupt_file_is_named(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(content)
    with pytest.raises(SourceError, match="bad.avi"):
        open_source(bad)


def test_zero_frame_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "zero.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (32, 32))
    writer.release()
    with pytest.raises(SourceError, match="zero.avi.*zero frames"):
        open_source(path)


def test_unopenable_camera_is_named() -> None:
    with pytest.raises(SourceError, match=r"camera 9999\) cannot be opened"):
        open_source("9999")


class FakeCapture:
    """Stands in for ``cv2.VideoCapture``: ``n`` BGR frames of a moving square, then end of stream."""

    def __init__(self, index: int, n: int = 20, size: tuple[int, int] = (48, 64), fps: float = 25.0) -> None:
        self.index, self.n, self.size, self.fps, self.i, self.released = index, n, size, fps, 0, False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.i >= self.n:
            return False, None
        frame = np.full((*self.size, 3), 20, np.uint8)
        frame[10:20, self.i % 40 : self.i % 40 + 10] = 255
        self.i += 1
        return True, frame

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


def test_camera_source_with_fake_capture() -> None:
    fake = FakeCapture(0, n=20)
    src = open_source(0, crop_size=(32, 32), capture_factory=lambda i: fake)
    assert isinstance(src, CameraSource) and src.live and src.num_frames is None and src.size == (32, 43)
    with src:
        got = list(src.frames())
    assert len(got) == 20 and src.arrived() == 20 and fake.released
    assert all(b[1] >= a[1] for a, b in zip(got, got[1:]))


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("explainer", sorted(p.stem for p in (CONFIG_DIR / "explainer").glob("*.yaml")))
def test_live_config_builds_every_explainer(tmp_path: Path, ckpt: Path, explainer: str) -> None:
    """live.yaml composes with every explainer; its data node comes from the checkpoint."""
    cfg = live_cfg(tmp_path, "clip.avi", ckpt, f"explainer={explainer}")
    OmegaConf.resolve(cfg.paths)
    fill_data_node(cfg, PRE)
    built = hydra.utils.instantiate(cfg.explainer)
    assert callable(built)
    if explainer == "dtd":
        assert built.lower.tolist() == pytest.approx([-0.29 / 0.16] * 3)


def test_live_file_end_to_end_outputs(tmp_path: Path, videos: Path, ckpt: Path) -> None:
    n = 29
    video = make_video(videos / "e2e.avi", n, size=(60, 80))
    cfg = live_cfg(tmp_path, video, ckpt, "explainer=dtd", "selective.sigma=4")
    metrics, objects = live_app.run(cfg)
    run = Path(cfg.paths.output_dir)
    rows = read_csv(run / "windows.csv")
    assert len(rows) == expected_windows(n, 16, 8) == metrics["live/windows"]
    assert [r["status"] for r in rows] == ["explained"] * len(rows)
    assert rows[-1]["padded"] == "True" and float(rows[-1]["end_s"]) == pytest.approx(n / 25)
    for r in rows:
        assert r["class"] in CLASSES and 0 <= float(r["confidence"]) <= 1 and 0 <= float(r["selectivity_mass"]) <= 1
        assert float(r["latency_ms"]) > 0 and float(r["e2e_latency_ms"]) >= float(r["latency_ms"]) * 0.99
    vr = decord.VideoReader(str(run / "overlay.mp4"))
    assert len(vr) == n == metrics["live/video_frames"]
    h, w = vr[0].shape[:2]
    assert h >= 224 and w > 3 * 224  # input | baseline | selective at >= 224 px (+ label and caption bars)
    assert (run / "timeline.png").stat().st_size > 0
    assert metrics["live/windows_dropped"] == 0 and metrics["live/policy"] == "block"
    assert metrics["live/windows_per_s"] > 0 and metrics["live/latency_ms_mean"] > 0
    assert cfg.data.mean == PRE["mean"]  # the explainer's ${data.*} came from the checkpoint
    # the suite's mean over the windows is the mean of the per-window column (one definition, one function)
    column = [float(r["selectivity_mass"]) for r in rows]
    assert metrics["live/selectivity_mass/dtd"] == pytest.approx(sum(column) / len(column), rel=1e-6)
    assert metrics["live/selectivity_mass_n/dtd"] == len(rows) and metrics["live/explained_clips"] == len(rows)


def test_short_video_gives_one_padded_window(tmp_path: Path, videos: Path, ckpt: Path) -> None:
    video = make_video(videos / "short.mp4", 10, size=(40, 52), fourcc="mp4v")  # below the 56 px crop
    cfg = live_cfg(tmp_path, video, ckpt, "explainer=gradcam", "outputs.video=overlay.avi")
    metrics, _ = live_app.run(cfg)
    rows = read_csv(Path(cfg.paths.output_dir) / "windows.csv")
    assert len(rows) == 1 and rows[0]["padded"] == "True" and rows[0]["status"] == "explained"
    assert len(decord.VideoReader(str(Path(cfg.paths.output_dir) / "overlay.avi"))) == 10


def test_drop_policy_end_to_end(tmp_path: Path, videos: Path, ckpt: Path) -> None:
    """A file played as a 2000 fps stream: explaining a window takes far longer than 8 frames last."""
    n = 64
    video = make_video(videos / "fast.avi", n)
    cfg = live_cfg(tmp_path, video, ckpt, "explainer=gradcam", "policy=drop", "fps=2000", "outputs.timeline=null")
    metrics, _ = live_app.run(cfg)
    rows = read_csv(Path(cfg.paths.output_dir) / "windows.csv")
    assert len(rows) == expected_windows(n, 16, 8)
    assert metrics["live/windows_dropped"] > 0 and "dropped" in {r["status"] for r in rows}
    assert rows[-1]["status"] == "explained"  # the newest window is always explained
    assert not metrics["live/keeps_up"]
    assert len(decord.VideoReader(str(Path(cfg.paths.output_dir) / "overlay.mp4"))) == n


def test_camera_end_to_end_with_fake_capture(tmp_path: Path, ckpt: Path) -> None:
    cfg = live_cfg(tmp_path, 0, ckpt, "explainer=gradcam", "policy=block", "max_windows=2", "outputs.video=null",
                   "logger=csv")
    metrics, _ = live_app.run(cfg, capture_factory=lambda i: FakeCapture(i, n=100))
    assert metrics["live/windows"] == 2 and metrics["live/windows_explained"] == 2
    run = Path(cfg.paths.output_dir)
    assert len(read_csv(run / "windows.csv")) == 2
    logged = read_csv(run / "csv" / "metrics.csv")  # per-window and summary metrics reached the logger
    assert any(r.get("live/confidence") for r in logged) and any(r.get("live/windows_per_s") for r in logged)


def test_checkpoint_without_preprocessing_is_refused(tmp_path: Path, videos: Path) -> None:
    video = make_video(videos / "any.avi", 20)
    partial = {k: v for k, v in PRE.items() if k not in ("mean", "std")}
    bad = save_checkpoint(tmp_path / "nopre.ckpt", preprocessing=partial)
    with pytest.raises(ValueError, match="lacks mean, std.*crop_size, mean, std, scale, channel_order"):
        live_app.run(live_cfg(tmp_path, video, bad))
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(ValueError, match="preprocessing"):
        live_app.run(live_cfg(tmp_path, video, bare))


def test_bad_window_and_camera_fail_clearly(tmp_path: Path, videos: Path, ckpt: Path) -> None:
    video = make_video(videos / "w.avi", 20)
    with pytest.raises(ValueError, match="window=8 .* 16 frames"):
        live_app.run(live_cfg(tmp_path, video, ckpt, "window=8"))
    with pytest.raises(SourceError, match="camera 9999"):
        live_app.run(live_cfg(tmp_path, 9999, ckpt))
    with pytest.raises(ValueError, match="data.mean|mean"):
        live_app.run(live_cfg(tmp_path, video, ckpt, "data.mean=[0.5,0.5,0.5]"))


def test_display_fails_clearly_without_gui(tmp_path: Path, videos: Path, ckpt: Path) -> None:
    video = make_video(videos / "d.avi", 20)
    with pytest.raises(RuntimeError, match="display"):
        live_app.run(live_cfg(tmp_path, video, ckpt, "display=true"))


UCF_CLIPS = sorted((SHARED_DATA / "ucf101_mini" / "UCF-101").glob("*/*.avi"))


@pytest.mark.skipif(not (UCF_CLIPS or REAL_VIDEOS), reason="shared real clips not available")
@pytest.mark.parametrize("video", UCF_CLIPS + REAL_VIDEOS, ids=[p.name for p in UCF_CLIPS + REAL_VIDEOS])
def test_real_clips_window_count(video: Path) -> None:
    """XVID AVI (UCF-101), H.264 MP4 and MKV: every frame decoded once, windows as the formula says."""
    n = len(decord.VideoReader(str(video)))
    with FileSource(video, crop_size=(56, 56)) as src:
        assert src.num_frames == n and min(src.size) == 56
        wins = list(iter_windows(SlidingWindow(16, 8), src.frames()))
    assert len(wins) == expected_windows(n, 16, 8)
    assert sum(w.num_real - w.new_from for w in wins) == n


@pytest.mark.slow
@pytest.mark.parametrize("video", REAL_VIDEOS, ids=[p.name for p in REAL_VIDEOS])
def test_real_videos_end_to_end(tmp_path: Path, ckpt: Path, video: Path) -> None:
    n = len(decord.VideoReader(str(video)))
    cfg = live_cfg(tmp_path, video, ckpt, "explainer=dtd")
    metrics, _ = live_app.run(cfg)
    run = Path(cfg.paths.output_dir)
    assert len(read_csv(run / "windows.csv")) == expected_windows(n, 16, 8)
    assert len(decord.VideoReader(str(run / "overlay.mp4"))) == n


@pytest.mark.slow
def test_cli_prints_run_folder_and_writes_metrics(tmp_path: Path, videos: Path, ckpt: Path) -> None:
    video = make_video(videos / "cli.avi", 20)
    env = {**os.environ, "MR_ROOT": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "motion_relevance.live", f"source={video}", f"ckpt_path={ckpt}", "logger=none",
         "progress=false", "extras.print_config=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run = Path(out.stdout.strip().splitlines()[-1].removeprefix("Run folder: "))
    assert (run / "metrics.json").exists() and (run / "windows.csv").exists()


# ------------------------------------------------------------------------------ structured config, before work
def _no_camera(index: int) -> object:
    raise AssertionError("the source was opened before the config was checked")


BAD_VALUES = [  # (override, the key the error names, the allowed values it states)
    ("window=0", "window=0", "an integer >= 1"),
    ("stride=-1", "stride=-1", "an integer >= 1"),
    ("policy=fast", "policy='fast'", "block, drop or null"),
    ("max_windows=-1", "max_windows=-1", "an integer >= 1 or null"),
    ("max_windows=0", "max_windows=0", "an integer >= 1 or null"),
    ("max_seconds=0", "max_seconds=0", "a number > 0"),
    ("fps=0", "fps=0", "a number > 0"),
    ("default_fps=-25", "default_fps=-25", "a number > 0"),
    ("target=-1", "target=-1", "a class index >= 0"),
    ("device=tpu", "device='tpu'", "auto, cpu, cuda, cuda:<index> or mps"),
    ("device=gpu", "device='gpu'", "auto, cpu, cuda"),
    ("threads=0", "threads=0", "null .*auto or an integer >= 1"),
    ("threads=many", "threads='many'", "auto or an integer >= 1"),
    ("resize=bigger", "resize='bigger'", "auto, native, an integer >= 1"),
    ("resize=0", "resize=0", "auto, native, an integer >= 1"),
    ("resize=[0,10]", r"resize=\[0,10\]", r"\[H, W\] with H, W >= 1"),
    ("resize=[1,2,3]", r"resize=\[1,2,3\]", r"\[H, W\]"),
    ("decode.chunk=0", "decode.chunk=0", "an integer >= 1"),
    ("decode.threads=-1", "decode.threads=-1", "an integer >= 0"),
    ("camera.max_queue=0", "camera.max_queue=0", "an integer >= 1"),
    ("outputs.video=overlay.mkv", "outputs.video='overlay.mkv'", r"\.mp4, \.avi or \.gif"),
    ("outputs.csv=''", "outputs.csv=''", "null or a file name"),
    ("outputs.timeline=timeline.xyz", "outputs.timeline='timeline.xyz'", r"image file name \(\.png"),
    ("outputs.min_height=0", "outputs.min_height=0", "an integer >= 1"),
    ("outputs.alpha=1.5", "outputs.alpha=1.5", r"a number in \[0, 1\]"),
    ("outputs.alpha=-0.1", "outputs.alpha=-0.1", r"a number in \[0, 1\]"),
    ("outputs.mode=rainbow", "outputs.mode='rainbow'", "signed or positive"),
    ("selective.padding=mirror", "selective.padding='mirror'", "replicate or zeros"),
    ("selective.sigma=[1,2]", r"selective.sigma=\[1,2\]", "one sigma, e.g. selective.sigma=4"),
    ("selective.sigma=-1", "selective.sigma", "non-negative number"),
    ("selective.sigma=abc", "selective.sigma", "non-negative number"),
    ("explainer._target_=torch.nn.Linear", "explainer._target_='torch.nn.Linear' is not an explainer",
     r"subclass of motion_relevance.explain.Explainer, e.g. explainer=attnlrp\|dtd\|gbp\|gradcam"),
    ("explainer._target_=no.such.Explainer", "explainer._target_='no.such.Explainer' cannot be imported",
     r"explainer=attnlrp\|dtd\|gbp\|gradcam"),
    ("+logger.bad._target_=no.such.Logger", "logger.bad._target_='no.such.Logger' cannot be imported", ""),
]


@pytest.mark.parametrize(("override", "key", "allowed"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_refused_before_the_checkpoint_and_the_source(tmp_path: Path, override: str, key: str,
                                                                    allowed: str) -> None:
    """Every bad value fails with a LiveConfigError naming the key and the allowed values; the checkpoint does not
    exist and the camera factory raises, so reading either first would fail differently."""
    from motion_relevance.live.config import LiveConfigError

    cfg = live_cfg(tmp_path, 0, tmp_path / "missing.ckpt", override)
    with pytest.raises(LiveConfigError, match=f"{key}.*{allowed}") as err:
        live_app.run(cfg, capture_factory=_no_camera)
    assert "missing.ckpt" not in str(err.value)


def test_unavailable_cuda_is_refused_before_work(tmp_path: Path) -> None:
    from motion_relevance.live.config import LiveConfigError

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cfg = live_cfg(tmp_path, 0, tmp_path / "missing.ckpt", f"device=cuda:{count}")
    with pytest.raises(LiveConfigError, match=f"device=cuda:{count}: (CUDA is not available|this machine has CUDA)"):
        live_app.run(cfg, capture_factory=_no_camera)


def test_explainer_that_is_no_config_and_missing_keys_are_refused(tmp_path: Path) -> None:
    from motion_relevance.live.config import LiveConfigError

    cfg = live_cfg(tmp_path, 0, tmp_path / "missing.ckpt")
    with open_dict(cfg):
        cfg.explainer = "bar"
    with pytest.raises(LiveConfigError,
                       match=r"explainer='bar' is not an explainer config.*explainer=attnlrp\|dtd\|gbp"):
        live_app.run(cfg, capture_factory=_no_camera)
    with pytest.raises(Exception, match="explainer/bar"):  # a group option that does not exist: Hydra names it
        live_cfg(tmp_path, 0, tmp_path / "missing.ckpt", "explainer=bar")
    cfg = compose_config("live", ["logger=none", "progress=false", f"ckpt_path={tmp_path / 'x.ckpt'}"], tmp_path)
    with pytest.raises(LiveConfigError, match="source is missing: give source=<video file>"):
        live_app.run(cfg)
    cfg = compose_config("live", ["logger=none", "source=0"], tmp_path)
    with pytest.raises(LiveConfigError, match="ckpt_path is missing"):
        live_app.run(cfg, capture_factory=_no_camera)


def test_missing_source_file_is_refused_before_the_checkpoint(tmp_path: Path) -> None:
    cfg = live_cfg(tmp_path, tmp_path / "nope.mp4", tmp_path / "missing.ckpt")
    with pytest.raises(SourceError, match="nope.mp4.*no such file"):
        live_app.run(cfg)


@pytest.mark.parametrize("override", ["window=abc", "outputs.alpha=x", "max_windows=1.5", "display=maybe",
                                      "data.foo=1"])
def test_wrong_types_fail_while_composing_naming_the_key(tmp_path: Path, override: str) -> None:
    """The schema in Hydra's ConfigStore types every key: a wrong type never reaches the run."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        live_cfg(tmp_path, 0, tmp_path / "missing.ckpt", override)
    assert override.split("=")[0] in f"{err.value} {err.value.__cause__}"


def test_schema_types_the_composed_config_and_every_key_has_a_rule(tmp_path: Path) -> None:
    from dataclasses import fields, is_dataclass

    from motion_relevance.live.config import RULES, LiveConfig, LiveSettings, check_config
    from motion_relevance.models.checkpoint import PREPROCESSING_KEYS

    cfg = live_cfg(tmp_path, 0, tmp_path / "missing.ckpt")
    assert OmegaConf.get_type(cfg) is LiveConfig
    assert sorted(cfg.data) == sorted(PREPROCESSING_KEYS) and all(v is None for v in cfg.data.values())

    def leaves(cls: type, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
            out |= leaves(type(default), f"{prefix}{f.name}.") if is_dataclass(default) else {prefix + f.name}
        return out

    assert leaves(LiveSettings) == set(RULES) | {"source", "ckpt_path", "selective.sigma"}
    settings = check_config(cfg)
    assert isinstance(settings, LiveSettings) and settings.window == 16 and settings.outputs.alpha == 0.85
    assert settings.source == 0 and settings.selective.sigma == 4.0


def test_differing_data_value_is_refused_with_both_values(tmp_path: Path, videos: Path, ckpt: Path) -> None:
    video = make_video(videos / "stride.avi", 20)
    with pytest.raises(ValueError, match=r"stride: checkpoint 1 vs data.\* \(command line\) 2.*data.stride=1"):
        live_app.run(live_cfg(tmp_path, video, ckpt, "data.stride=2"))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path, videos: Path) -> None:
    video = make_video(videos / "pickle.avi", 20)
    marker = tmp_path / "ran"
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, bad)
    with pytest.raises(ValueError, match="refused"):
        live_app.run(live_cfg(tmp_path, video, bad))
    assert not marker.exists()
    foreign = save_checkpoint(tmp_path / "foreign.ckpt")
    checkpoint = torch.load(foreign, weights_only=True)
    checkpoint["motion_relevance"]["model"]["_target_"] = "shutil.copyfile"
    torch.save(checkpoint, foreign)
    with pytest.raises(ValueError, match="shutil.copyfile"):
        live_app.run(live_cfg(tmp_path, video, foreign))


def test_live_package_loads_checkpoints_only_through_load_classifier() -> None:
    sources = sorted((ROOT / "src" / "motion_relevance" / "live").glob("*.py"))
    assert len(sources) >= 8
    for path in sources:
        text = path.read_text()
        assert "torch.load" not in text and "weights_only" not in text, path.name
        assert "from motion_relevance.explain_app" not in text, path.name


# ------------------------------------------------------------------------------------------------ the pieces
def test_live_explainer_calls_the_explainer_through_cached_explainer(tmp_path: Path, ckpt: Path) -> None:
    from motion_relevance.explain import GradCAM
    from motion_relevance.explain.cache import AttributionCache, CachedExplainer
    from motion_relevance.explain.selective import selective_relevance
    from motion_relevance.live.model import LiveExplainer, build_transform, live_preprocessing
    from motion_relevance.metrics.functional import selectivity
    from motion_relevance.models.checkpoint import load_classifier

    loaded = load_classifier(ckpt)
    pre = live_preprocessing(loaded, window=16)
    cache = AttributionCache(tmp_path / "cache")
    model = LiveExplainer(loaded.net, build_transform(pre), CachedExplainer(GradCAM(layer="conv5b"), cache),
                          sigma=1.0, class_names=loaded.class_names)
    frames = np.random.default_rng(0).integers(0, 255, (16, 60, 80, 3), dtype=np.uint8)
    first, second = model(frames), model(frames)
    assert cache.info()["writes"] == 1 and cache.info()["hits"] == 1
    assert torch.equal(first.relevance, second.relevance) and first.relevance.shape == (1, 16, 56, 56)
    expected = selective_relevance(first.relevance[None], 1.0)[0]
    assert torch.equal(first.selective, expected)
    assert first.selectivity_mass == pytest.approx(float(selectivity(first.relevance[None], expected[None])[1]))
    assert first.inputs.shape == (16, 56, 56, 3) and 0 <= first.confidence <= 1
    with pytest.raises(ValueError, match="window=8 .* 16 frames"):
        live_preprocessing(loaded, window=8)
    with pytest.raises(ValueError, match="target=8: the model has classes 0..7"):
        live_preprocessing(loaded, window=16, target=8)


def test_record_rows_csv_summary_and_captions(tmp_path: Path) -> None:
    from motion_relevance.live.record import CSV_COLUMNS, WindowResult, caption, summarise, write_csv

    rows = [WindowResult(0, 0.0, 0.64, "explained", False, "a", 0.5, 0.25, 100.0, 150.0),
            WindowResult(1, 0.32, 0.96, "dropped", False),
            WindowResult(2, 0.64, 1.0, "explained", True, "b", 0.9, 0.75, 300.0, 400.0)]
    path = write_csv(tmp_path / "w.csv", rows)
    back = read_csv(path)
    assert tuple(back[0]) == CSV_COLUMNS and "selectivity_mass" in CSV_COLUMNS and "motion_share" not in CSV_COLUMNS
    assert back[1]["selectivity_mass"] == "" and float(back[2]["selectivity_mass"]) == 0.75
    m = summarise(rows, wall_s=2.0, work_s=0.4, fps=25.0, stride=8, frames=25)
    assert m["live/windows"] == 3 and m["live/windows_explained"] == 2 and m["live/windows_dropped"] == 1
    assert m["live/windows_per_s"] == pytest.approx(1.0) and m["live/capacity_windows_per_s"] == pytest.approx(5.0)
    assert m["live/real_time_factor"] == pytest.approx(5.0 / (25 / 8)) and m["live/keeps_up"]
    assert m["live/latency_ms_mean"] == pytest.approx(200)
    assert not any("share" in k for k in m)  # the kept mass's mean is the metric suite's (LiveExplainer.results)
    assert m["live/e2e_latency_ms_max"] == 400.0 and "live/motion_share_mean" not in m
    assert caption(0.5, rows[0]) == "0.50s  a 50%  selective keeps 25%"
    assert caption(0.5, rows[1]) == "0.50s  dropped (behind real time)"


@pytest.mark.filterwarnings("ignore:no frames were written")
def test_overlay_sink_writes_every_frame_in_background_and_foreground(tmp_path: Path) -> None:
    from motion_relevance.live.sink import OverlaySink

    frames = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    maps = (np.random.default_rng(2).standard_normal((1, 5, 32, 32)).astype(np.float32),
            np.zeros((5, 32, 32), np.float32))
    for background in (True, False):
        path = tmp_path / f"o_{background}.avi"
        sink = OverlaySink(path, 25.0, ("base", "sel"), min_height=64, alpha=0.8, mode="signed", display=False,
                           window_title="t", background=background)
        for _ in range(3):
            sink.write(frames, maps, ["c"] * 5)
        sink.close()
        sink.close()  # idempotent
        assert sink.frames == 15 and len(decord.VideoReader(str(path))) == 15
    broken = OverlaySink(tmp_path / "b.avi", 25.0, ("base", "sel"), min_height=64, alpha=0.8, mode="signed",
                         display=False, window_title="t")
    broken.write(frames, (np.zeros((2, 2)), np.zeros((2, 2))), ["c"] * 5)  # maps of the wrong shape
    with pytest.raises(RuntimeError, match="writing the overlay video failed"):
        broken.close()


def test_file_source_without_decord_falls_back_to_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Platforms without a decord wheel (e.g. Intel macs) still stream files, through OpenCV."""
    import motion_relevance.data.video as video

    path = SHARED_DATA / "ucf101_mini" / "UCF-101" / "Basketball" / "v_Basketball_g01_c01.avi"
    if not path.exists():
        pytest.skip("no shared real data")
    with_decord = [f for f, _ in open_source(str(path), resize="native", crop_size=None).frames()]
    monkeypatch.setattr(video, "decord_available", lambda: False)
    without = [f for f, _ in open_source(str(path), resize="native", crop_size=None).frames()]
    assert len(without) == len(with_decord) and without[0].shape == with_decord[0].shape
    assert np.abs(without[0].astype(int) - with_decord[0].astype(int)).mean() < 2.0


def test_live_explainer_feeds_a_two_pathway_model_its_pathways(tmp_path: Path, ckpt: Path) -> None:
    """SlowFast gets net.pack_inputs(window) and the window shows the full-rate (fast) pathway's relevance,
    the same map as explaining the packed clip directly."""
    from motion_relevance.explain import GuidedBackprop
    from motion_relevance.live.model import LiveExplainer, build_transform, live_preprocessing
    from motion_relevance.models import SlowFast
    from motion_relevance.models.checkpoint import load_classifier

    pre = live_preprocessing(load_classifier(ckpt), window=16)
    torch.manual_seed(0)
    net = SlowFast(num_classes=8, width=0.25, clip_len=16, crop_size=56, head_pool="adaptive", dropout=0.0).eval()
    model = LiveExplainer(net, build_transform(pre), GuidedBackprop(), sigma=1.0)
    frames = np.random.default_rng(0).integers(0, 255, (16, 60, 80, 3), dtype=np.uint8)
    out = model(frames)
    clip = build_transform(pre).normalize(out.inputs).unsqueeze(0)
    slow, fast = GuidedBackprop()(net, net.pack_inputs(clip), torch.tensor([out.class_index]))
    assert out.relevance.shape == (3, 16, 56, 56) and torch.allclose(out.relevance, fast[0])
