"""mr-live explains each window through the project's ExplanationPipeline: the layer/pathway check (one function
for mr-explain and mr-live) refuses at start-up, the live number is the suite's selectivity_mass, and the explained
class follows the pipeline's target rule."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch

from motion_relevance.explain import GradCAM, GuidedBackprop
from motion_relevance.live import app as live_app
from motion_relevance.live.model import LiveExplainer, build_transform
from motion_relevance.models import SlowFast
from motion_relevance.pipeline import ExplanationPipeline, core
from tests.test_live import NET, PRE, live_cfg, make_video, read_csv, save_checkpoint

SLOWFAST = {"_target_": "motion_relevance.models.SlowFast", "num_classes": 8, "width": 0.25, "clip_len": 16,
            "crop_size": 56, "head_pool": "adaptive", "dropout": 0.0}
SLOW, FAST = "blocks.4.multipathway_blocks.0", "blocks.4.multipathway_blocks.1"


@pytest.fixture(scope="module")
def slowfast_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("live_sf") / "slowfast.ckpt", net_config=SLOWFAST)


@pytest.fixture(scope="module")
def slowfast() -> SlowFast:
    torch.manual_seed(0)
    return SlowFast(num_classes=8, width=0.25, clip_len=16, crop_size=56, head_pool="adaptive", dropout=0.0).eval()


@pytest.fixture(scope="module")
def c3d() -> torch.nn.Module:
    torch.manual_seed(0)
    return hydra.utils.instantiate(NET).eval()


def _frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (16, 60, 80, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ the layer/pathway check
def test_slow_pathway_layer_is_refused_at_startup_before_the_source_opens(
        tmp_path: Path, slowfast_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grad-CAM of a SlowFast slow-pathway layer maps onto the slow input; the full-rate map mr-live shows would be
    all zero (blank kept mass): refused at start-up naming explainer.layer and the fix, before any window."""
    video = make_video(tmp_path / "v.avi", 20)

    def no_source(*args: object, **kwargs: object) -> None:
        raise AssertionError("the source was opened: the check did not run before work")

    monkeypatch.setattr(live_app, "open_source", no_source)
    cfg = live_cfg(tmp_path, video, slowfast_ckpt, "explainer=gradcam", f"explainer.layer={SLOW}")
    with pytest.raises(ValueError, match=rf"^explainer\.layer='{SLOW}' .*'slow' input only.*the 'fast' one.*"
                                         rf"explainer\.layer={FAST}$"):
        live_app.run(cfg)


@pytest.mark.slow
def test_fast_pathway_layer_runs_end_to_end_with_the_kept_mass(tmp_path: Path, slowfast_ckpt: Path) -> None:
    video = make_video(tmp_path / "v.avi", 24)
    cfg = live_cfg(tmp_path, video, slowfast_ckpt, "explainer=gradcam", f"explainer.layer={FAST}", "max_windows=2",
                   "outputs.video=null", "outputs.timeline=null")
    metrics, _ = live_app.run(cfg)
    rows = read_csv(Path(cfg.paths.output_dir) / "windows.csv")
    assert len(rows) == 2 and all(r["selectivity_mass"] != "" for r in rows)
    assert math.isfinite(metrics["live/selectivity_mass/gradcam"]) and metrics["live/selectivity_mass_n/gradcam"] == 2


def test_one_check_function_for_mr_explain_and_mr_live(slowfast: SlowFast, monkeypatch: pytest.MonkeyPatch) -> None:
    """mr-explain's pipeline (first batch) and mr-live's start-up call the same check_explainer_input, and both
    refuse before any explanation runs; each names its own config key."""
    seen: list[str] = []
    original = core.check_explainer_input

    def spy(key: str, *args: object, **kwargs: object) -> None:
        seen.append(key)
        original(key, *args, **kwargs)

    monkeypatch.setattr(core, "check_explainer_input", spy)
    monkeypatch.setattr(GradCAM, "_explain", lambda *a, **k: pytest.fail("explained before the check refused"))
    pipe = ExplanationPipeline({"gradcam": GradCAM(layer=SLOW)}, sigma=4.0)
    pipe.start(slowfast)
    clips = slowfast.pack_inputs(torch.randn(1, 3, 16, 56, 56))
    with pytest.raises(ValueError, match=rf"^explainers\.gradcam\.layer='{SLOW}' .*explainers\.gradcam\.layer={FAST}"):
        pipe.explain(slowfast, clips, torch.tensor([0]))
    live = LiveExplainer(slowfast, build_transform(PRE), GradCAM(layer=SLOW), sigma=4.0)
    with pytest.raises(ValueError, match=rf"^explainer\.layer='{SLOW}'"):
        live.check(16)
    assert seen == ["explainers.gradcam", "explainer"]


def test_pathway_check_cases(slowfast: SlowFast, c3d: torch.nn.Module) -> None:
    clips = slowfast.pack_inputs(torch.randn(1, 3, 16, 56, 56))
    check = core.check_explainer_input
    with pytest.raises(ValueError, match=r"^e\.input_index=0 .*'slow' input.*set e\.input_index=1 or null$"):
        check("e", GradCAM(layer=FAST, input_index=0), slowfast, clips, ("slow", "fast"))
    check("e", GradCAM(layer=SLOW, input_index=1), slowfast, clips, ("slow", "fast"))  # mapped onto the fast input
    check("e", GradCAM(layer=FAST), slowfast, clips, ("slow", "fast"))
    check("e", GradCAM(), slowfast, clips, ("slow", "fast"))  # the model's explain_layer: the fast pathway's
    check("e", GuidedBackprop(), slowfast, clips, ("slow", "fast"))  # maps onto every input
    check("e", GradCAM(layer="conv5b"), c3d, torch.randn(1, 3, 16, 56, 56))  # one input
    with pytest.raises(ValueError, match=r"^e\.layer=.*'input 0' input only"):  # unnamed pathways: numbered
        check("e", GradCAM(layer=SLOW), slowfast, clips)


# ------------------------------------------------------------------------------------------- the kept mass
def test_live_number_is_the_suites_selectivity_mass(c3d: torch.nn.Module) -> None:
    """The window's number equals a hand computation ΣR_sel⁺ / ΣR⁺ on its maps and the value the metric suite of an
    mr-explain pipeline gives for the same clip; it is not the absolute-mass ratio Σ|R_sel| / Σ|R|."""
    transform = build_transform(PRE)
    live = LiveExplainer(c3d, transform, GuidedBackprop(), sigma=1.0)
    out = live(_frames())
    r = out.relevance.numpy().astype(np.float64)  # (C, T, H, W), signed (Guided Backprop, C = 3)
    s = out.selective.numpy().astype(np.float64)
    hand = np.maximum(s.sum(axis=0), 0).sum() / np.maximum(r.sum(axis=0), 0).sum()
    assert out.selectivity_mass == pytest.approx(hand, rel=1e-9)
    assert abs(hand - np.abs(s).sum() / np.abs(r).sum()) > 1e-3  # the old formula would fail the line above

    pipe = ExplanationPipeline({"gbp": GuidedBackprop()}, sigma=1.0)  # mr-explain's pipeline, target predicted
    pipe.start(c3d)
    pipe.explain(c3d, transform.normalize(out.inputs).unsqueeze(0), torch.tensor([0]), stage="test")
    assert pipe.results("test")["test/selectivity_mass/gbp"] == pytest.approx(out.selectivity_mass, rel=1e-12)
    assert live.results()["live/selectivity_mass/gbp"] == pytest.approx(out.selectivity_mass, rel=1e-12)


def test_windows_hold_no_growing_records_and_the_suite_averages_them(c3d: torch.nn.Module) -> None:
    live = LiveExplainer(c3d, build_transform(PRE), GuidedBackprop(), sigma=1.0)
    values = [live(_frames(seed)).selectivity_mass for seed in range(3)]
    assert live.pipeline.metrics.records.rows == [] and live.pipeline.clips_info == [] and live.pipeline.kept == []
    results = live.results()
    assert results["live/selectivity_mass_n/gbp"] == 3 and results["live/explained_clips"] == 3
    assert results["live/selectivity_mass/gbp"] == pytest.approx(sum(values) / 3, rel=1e-9)
    assert not any("precision" in k or "faithfulness" in k for k in results)  # no flow or faithfulness work


# ------------------------------------------------------------------------------------------- the target rule
def test_explained_class_follows_the_pipelines_target_rule(c3d: torch.nn.Module,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """target=null: the predicted class (argmax of the logits, by hand), chosen by ExplanationPipeline.targets;
    target=k: class k, even when the model predicts another, explained as the explainer explains class k."""
    transform = build_transform(PRE)
    calls: list[str] = []
    original = ExplanationPipeline.targets

    def spy(self: ExplanationPipeline, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(self.target)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ExplanationPipeline, "targets", spy)
    frames = _frames()
    out = LiveExplainer(c3d, transform, GradCAM(layer="conv5b"), sigma=1.0)(frames)
    clip = transform.normalize(out.inputs).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(c3d(clip), dim=1)[0].numpy()
    predicted = int(np.argmax(probs))
    assert out.class_index == predicted and out.confidence == pytest.approx(float(probs[predicted]), rel=1e-5)

    other = (predicted + 1) % len(probs)
    fixed = LiveExplainer(c3d, transform, GradCAM(layer="conv5b"), sigma=1.0, target=other)
    got = fixed(frames)
    assert got.class_index == other and got.confidence == pytest.approx(float(probs[other]), rel=1e-5)
    direct = GradCAM(layer="conv5b")(c3d, clip, torch.tensor([other]))
    assert torch.allclose(got.relevance, direct[0])
    assert calls == ["predicted", "label"]


def test_explain_window_refuses_what_it_cannot_do(c3d: torch.nn.Module) -> None:
    clip = torch.randn(1, 3, 16, 56, 56)
    with pytest.raises(ValueError, match="record_clips=True"):
        ExplanationPipeline({"gbp": GuidedBackprop()}, sigma=1.0).explain_window(c3d, clip)
    labelled = ExplanationPipeline({"gbp": GuidedBackprop()}, sigma=1.0, target="label", record_clips=True)
    with pytest.raises(ValueError, match="target='label' .* pass labels"):
        labelled.explain_window(c3d, clip)


def test_startup_check_of_a_checkpoint_without_a_crop_needs_the_source_size(c3d: torch.nn.Module) -> None:
    live = LiveExplainer(c3d, build_transform({**PRE, "crop_size": None}), GradCAM(layer="conv5b"), sigma=1.0)
    with pytest.raises(ValueError, match="no crop_size; pass the source's size"):
        live.check(16)
    live.check(16, (56, 56))
