"""A trained transformers checkpoint (model=hf_timesformer_tiny) through mr-live, a sigma sweep and the attribution
cache: the same paths the zoo's checkpoints take."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
cv2 = pytest.importorskip("cv2")

from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from motion_relevance.explain_app import main as explain_main  # noqa: E402
from motion_relevance.live import app as live_app  # noqa: E402
from tests.conftest import TINY_DATA, compose_config  # noqa: E402

FAST = ["~explainer@explainers.dtd", "~explainer@explainers.guided_gradcam", "~explainer@explainers.gbp",
        "objective.method=gradcam", "faithfulness=none", "randomization=none", "flow=none", "num_clips=2",
        "~callbacks.progress_bar", "extras.print_config=false"]


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """hf_timesformer_tiny trained for one epoch on the tiny data (as tests/test_hf_models.py trains it)."""
    from motion_relevance.train import train

    tmp = tmp_path_factory.mktemp("hf_ckpt")
    cfg = compose_config("train", ["model=hf_timesformer_tiny", f"paths.data_dir={data_root}",
                                   f"paths.cache_dir={data_root}/cache", "logger=csv", "callbacks=default",
                                   "~callbacks.progress_bar", "trainer.max_epochs=1", "test=false", *TINY_DATA], tmp)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def _video(path: Path, frames: int, size: tuple[int, int] = (40, 48)) -> Path:
    """A bright square moving right on a dark background."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
    for i in range(frames):
        frame = torch.full((h, w, 3), 30, dtype=torch.uint8).numpy()
        frame[12:22, 2 + 2 * i: 12 + 2 * i] = 220
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.parametrize("explainer", ["gradcam", "dtd", "attnlrp"])
def test_live_explains_a_transformers_checkpoint(tmp_path: Path, hf_checkpoint: Path, explainer: str) -> None:
    clip_len = torch.load(hf_checkpoint, weights_only=True)["motion_relevance"]["preprocessing"]["clip_len"]
    frames = clip_len + clip_len // 2  # exactly two windows at stride clip_len / 2
    video = _video(tmp_path / "clip.avi", frames)
    cfg = compose_config("live", [f"source={video}", f"ckpt_path={hf_checkpoint}", "logger=none", "progress=false",
                                  f"explainer={explainer}", f"window={clip_len}", f"stride={clip_len // 2}",
                                  "selective.sigma=4", "outputs.video=null"], tmp_path)
    metrics, _ = live_app.run(cfg)
    with open(Path(cfg.paths.output_dir) / "windows.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 == metrics["live/windows"]
    assert [r["status"] for r in rows] == ["explained", "explained"]
    assert metrics["live/explained_clips"] == 2
    assert 0 <= metrics[f"live/selectivity_mass/{explainer}"] <= 1


def test_sigma_sweep_with_the_attribution_cache(tmp_path: Path, data_root: Path, hf_checkpoint: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "selective.sigma=2,4", f"hydra.sweep.dir={sweep}", "logger=csv", "cache=attribution",
            f"cache.dir={tmp_path / 'attr'}", f"ckpt_path={hf_checkpoint}", f"paths.data_dir={data_root}",
            f"paths.cache_dir={data_root}/cache", *FAST, *TINY_DATA]
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["mr-explain", *args])
    explain_main()
    GlobalHydra.instance().clear()
    first, second = (json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2))
    assert first["test/cache_misses"] == 2 and first["test/cache_hits"] == 0  # 2 clips x Grad-CAM
    assert second["test/cache_hits"] == 2 and second["test/cache_misses"] == 0
    assert second["test/gt_precision/gradcam"] == first["test/gt_precision/gradcam"]  # the cached relevance
    assert [m["objective_sigma"] for m in (first, second)] == [2.0, 4.0]
    assert first["test/gt_precision/gradcam_selective"] != second["test/gt_precision/gradcam_selective"] or \
        first["test/gt_f1/gradcam_selective"] != second["test/gt_f1/gradcam_selective"]


def test_attnlrp_on_timesformer_with_more_frames_than_patches_per_frame() -> None:
    """8 frames of 2x2 patches: the tiny configs elsewhere (4 frames of 2x2, 16 of 4x4) hid a canonization bug
    (one recorded call per module: TimeSformer's drop_path runs twice with other shapes), fixed by tracing each call
    with its own recorded shapes."""
    import transformers

    from motion_relevance.explain import AttnLRP
    from motion_relevance.models import from_transformers

    torch.manual_seed(0)
    config = transformers.TimesformerConfig(image_size=16, patch_size=8, num_frames=8, hidden_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                            num_labels=3)
    net = from_transformers(transformers.TimesformerForVideoClassification(config).eval())
    x = torch.rand(1, 3, 8, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    relevance = AttnLRP(lower=-1.0, upper=1.0)(net, x, torch.tensor([1]))
    assert relevance.shape == x.shape and bool(torch.isfinite(relevance).all())
