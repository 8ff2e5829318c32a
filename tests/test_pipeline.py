"""Unit tests of the explanation pipeline's pieces: metric names, the metrics suite, the cached explainer, the
pipeline itself, the decoder fallback and rank-zero logging."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from motion_relevance.explain.cache import AttributionCache, CachedExplainer
from motion_relevance.metrics import functional, keys
from motion_relevance.metrics.suite import ExplanationMetrics
from motion_relevance.pipeline import ExplanationPipeline, reference_input


# ------------------------------------------------------------------------------------------- metric names
def test_metric_names_round_trip() -> None:
    assert keys.metric_key("validate", "precision", "dtd") == "val/precision/dtd"
    assert keys.metric_key("test", "overhead_ms", "dtd", "n_undefined") == "test/overhead_ms_n_undefined/dtd"
    for stat in keys.STATS:
        parsed = keys.parse_key(keys.metric_key("test", "selectivity_area", "dtd@s2", stat))
        assert parsed == keys.MetricKey("test", "selectivity_area", stat, "dtd@s2")
    assert keys.parse_key("test/acc") is None and keys.parse_key("objective") is None
    assert keys.selective("dtd", 2.0, multi=False) == "dtd_selective"
    assert keys.selective("dtd", 2.5, multi=True) == "dtd_selective_s2.5"
    assert keys.split_selective("guided_gradcam_selective_s0.5") == ("guided_gradcam", 0.5)
    assert keys.split_selective("dtd_selective") == ("dtd", None) and keys.split_selective("dtd") is None
    assert keys.at_sigma("dtd", 3.0, multi=True) == "dtd@s3" and keys.at_sigma("dtd", 3.0, multi=False) == "dtd"
    assert [m for m in ("dtd", "dtd_selective", "dtd~gradcam", "dtd@s2", "selective") if keys.is_baseline(m)] == ["dtd"]
    with pytest.raises(ValueError, match="stat"):
        keys.metric_key("test", "precision", "dtd", "median")


# ------------------------------------------------------------------------------------------- the suite
def _batch(seed: int = 0, b: int = 3, t: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rel = torch.randn(b, 1, t, 6, 6, generator=g)
    rel[0] = 0  # an all-zero map: undefined precision, counted
    sel = rel * (torch.rand(rel.shape, generator=g) > 0.5)
    moves = torch.rand(b, t, 6, 6, generator=g) > 0.6
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[:, -1] = False
    mask = torch.rand(b, t, 6, 6, generator=g) > 0.7
    return {"rel": rel, "sel": sel, "moves": moves, "valid": valid, "mask": mask}


def _mean_std(values: torch.Tensor, defined: torch.Tensor) -> tuple[float, float, int, int]:
    v = values[defined].double().numpy()
    return float(v.mean()), float(v.std(ddof=1)), int(defined.sum()), int((~defined).sum())


def test_suite_names_and_reduces_like_the_functional_reference() -> None:
    suite = ExplanationMetrics(["dtd", "gradcam"], [2.0], flow=True, counters=("explained_clips",))
    batches = [_batch(0), _batch(1)]
    for b in batches:
        suite.update_baseline("dtd", b["rel"], moves=b["moves"], valid=b["valid"], mask=b["mask"])
        suite.update_baseline("gradcam", b["sel"], moves=b["moves"], valid=b["valid"], mask=b["mask"])
        suite.update_selective("dtd", 2.0, b["rel"], b["sel"], moves=b["moves"], valid=b["valid"], mask=b["mask"])
        suite.update_agreement({"dtd": b["rel"], "gradcam": b["sel"]})
        suite.update_overhead("dtd", [10.0])
        suite.count("explained_clips", 3)
    out = suite.compute("test")
    cat = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    prec, defined = functional.motion_precision(cat["rel"], cat["moves"], cat["valid"])
    mean, std, n, undef = _mean_std(prec, defined)
    assert out["test/precision/dtd"] == pytest.approx(mean) and out["test/precision_std/dtd"] == pytest.approx(std)
    assert (out["test/precision_n/dtd"], out["test/precision_n_undefined/dtd"]) == (n, undef) == (4, 2)
    area, mass, sel_def = functional.selectivity(cat["rel"], cat["sel"])
    assert out["test/selectivity_area/dtd"] == pytest.approx(_mean_std(area, sel_def)[0])
    assert out["test/selectivity_mass/dtd"] == pytest.approx(_mean_std(mass, sel_def)[0])
    iou, iou_def = functional.agreement(cat["rel"], cat["sel"])
    assert out["test/agreement/dtd~gradcam"] == pytest.approx(_mean_std(iou, iou_def)[0])
    f1, f1_def = functional.f1(cat["sel"], cat["mask"])
    assert out["test/gt_f1/dtd_selective"] == pytest.approx(_mean_std(f1, f1_def)[0])
    assert out["test/overhead_ms/dtd"] == 10.0 and out["test/overhead_ms_n/dtd"] == 2
    assert out["test/explained_clips"] == 6
    assert "test/overhead_ms/gradcam" in out  # an explainer never timed still reports (NaN, n = 0)
    assert np.isnan(out["test/overhead_ms/gradcam"]) and out["test/overhead_ms_n/gradcam"] == 0


def test_suite_without_flow_or_masks_logs_neither_and_resets() -> None:
    suite = ExplanationMetrics(["dtd"], [1.0, 3.0], flow=False)
    b = _batch()
    suite.update_baseline("dtd", b["rel"])
    suite.update_selective("dtd", 1.0, b["rel"], b["sel"])
    out = suite.compute("validate")
    assert not any("/precision/" in k or "gt_" in k for k in out)
    assert "val/selectivity_area/dtd@s1" in out and "val/spatial_bias/dtd@s3" in out
    suite.reset()
    assert suite.compute("test")["test/explained_clips"] == 0
    with pytest.raises(KeyError, match="cache_hits"):
        suite.count("cache_hits", 1)


# ------------------------------------------------------------------------------------- cached explainer
class _Linear(nn.Module):
    """A linear "classifier" on the mean of each frame: its gradient explanation is known exactly."""

    explain_layer = "fc"

    def __init__(self, frames: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(frames, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(1, 3, 4)))


class _InputTimesWeight:
    """An explainer with a known answer: relevance = input x the target's weight of its frame; counts calls."""

    name = "ixw"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, model: nn.Module, clips, target):  # type: ignore[no-untyped-def]
        inputs = clips if isinstance(clips, (list, tuple)) else [clips]
        self.calls.append(inputs[0].shape[0])
        w = model.fc.weight.detach()[target]  # (B, T)
        out = tuple(x * w[:, None, : x.shape[2], None, None] for x in inputs)
        return out if isinstance(clips, (list, tuple)) else out[0]


def test_cached_explainer_serves_hits_bit_for_bit_and_times_fresh_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net, clips, target = _Linear(), torch.randn(3, 2, 4, 5, 5), torch.tensor([0, 2, 1])
    explainer = _InputTimesWeight()
    plain = CachedExplainer(explainer)(net, clips, target)
    assert torch.equal(plain.relevance, explainer(net, clips, target)) and plain.hits == 0
    assert len(plain.ms) == 3 and len(plain.timings) == 1  # one timed call for the batch
    cache = AttributionCache(tmp_path)
    cached = CachedExplainer(explainer, cache)
    first = cached(net, clips, target)
    explainer.calls.clear()
    second = cached(net, clips, target)
    assert explainer.calls == [] and second.hits == 3 and torch.equal(second.relevance, first.relevance)
    assert second.ms == first.ms  # the stored explanation time, not the file read
    explainer.calls.clear()
    mixed = cached(net, torch.cat([clips[:1], torch.randn(2, 2, 4, 5, 5)]), target)
    assert explainer.calls == [2] and mixed.hits == 1  # only the new clips are explained, in one call
    with torch.no_grad():
        net.fc.weight.add_(1.0)
    assert cached(net, clips, target).hits == 0  # changed weights: another key


def test_cached_explainer_handles_multi_pathway_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    net = _Linear()
    slow, fast = torch.randn(2, 2, 2, 5, 5), torch.randn(2, 2, 4, 5, 5)
    cached = CachedExplainer(_InputTimesWeight(), AttributionCache(tmp_path))
    out = cached(net, [slow, fast], torch.tensor([0, 1]))
    again = cached(net, [slow, fast], torch.tensor([0, 1]))
    assert isinstance(out.relevance, tuple) and [r.shape for r in out.relevance] == [slow.shape, fast.shape]
    assert again.hits == 2 and all(torch.equal(a, b) for a, b in zip(again.relevance, out.relevance))
    assert reference_input([slow, fast]) == 1 and reference_input(fast) == 0


def test_cached_explainer_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="callable"):
        CachedExplainer("dtd")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AttributionCache"):
        CachedExplainer(_InputTimesWeight(), cache="dir")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one class per clip"):
        CachedExplainer(_InputTimesWeight())(_Linear(), torch.randn(2, 2, 4, 5, 5), torch.tensor([0]))


# ------------------------------------------------------------------------------------------- the pipeline
def test_pipeline_measures_what_the_suite_measures_and_keeps_clips() -> None:
    torch.manual_seed(2)
    net = _Linear().eval()
    clips, labels = torch.randn(3, 3, 4, 5, 5), torch.tensor([0, 1, 2])
    pipe = ExplanationPipeline({"ixw": _InputTimesWeight()}, sigma=[1.0, 2.0], target="label", keep_clips=2)
    pipe.start(net)
    batch = pipe.explain(net, clips, labels)
    out = pipe.results("test")
    assert set(batch.selective) == {"ixw_selective_s1", "ixw_selective_s2"}
    ref = ExplanationMetrics(["ixw"], [1.0, 2.0], flow=False)
    rel_sum = batch.relevance["ixw"].sum(1, keepdim=True)
    for sigma in (1.0, 2.0):
        ref.update_selective("ixw", sigma, rel_sum, batch.selective[f"ixw_selective_s{sigma:g}"].sum(1, keepdim=True))
    for key, value in ref.compute("test").items():
        if "overhead" not in key and "explained" not in key:
            assert out[key] == pytest.approx(value, nan_ok=True), key
    assert out["test/explained_clips"] == 3 and len(pipe.kept) == 1 and pipe.kept[0].clips.device.type == "cpu"
    logits = torch.tensor([[0.0, 5.0, 1.0]] * 3)
    predicted = ExplanationPipeline({"ixw": _InputTimesWeight()}, sigma=None)
    assert predicted.targets(net, clips, labels, logits).tolist() == [1, 1, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "truth"}, "target"), ({"mode": "abs"}, "mode"), ({"padding": "reflect"}, "selective.padding"),
    ({"sigma": -1}, "selective.sigma"), ({"keep_clips": -1}, "keep_clips"),
])
def test_pipeline_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        ExplanationPipeline({"ixw": _InputTimesWeight()}, **kwargs)
    with pytest.raises(TypeError, match="explainers.foo"):
        ExplanationPipeline({"foo": "bar"})


# ------------------------------------------------------------------------------- platform and processes
def test_decord_missing_falls_back_to_opencv_once(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import motion_relevance.data.video as video

    monkeypatch.setattr(video, "decord_available", lambda: False)
    video._warn_fallback.cache_clear()
    assert video.resolve_decoder("decord") == "opencv" and video.resolve_decoder("decord") == "opencv"
    assert video.resolve_decoder("opencv") == "opencv"
    assert sum("decord is not installed" in r.getMessage() for r in caplog.records) == 1
    assert video.VideoDecoder("decord").backend == "opencv"
    with pytest.raises(ValueError, match="decoder"):
        video.resolve_decoder("ffmpeg")


def test_rank_zero_filter_keeps_warnings_off_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    from motion_relevance.utils.run import RankZeroFilter

    record = logging.LogRecord("motion_relevance.data", logging.WARNING, __file__, 1, "x", None, None)
    error = logging.LogRecord("motion_relevance.data", logging.ERROR, __file__, 1, "x", None, None)
    other = logging.LogRecord("pytorch_lightning", logging.WARNING, __file__, 1, "x", None, None)
    flt = RankZeroFilter()
    monkeypatch.setenv("RANK", "0")
    assert flt.filter(record)
    monkeypatch.setenv("RANK", "1")
    assert not flt.filter(record) and flt.filter(error) and flt.filter(other)


class _TwoPathway(_Linear):
    """Two inputs, like SlowFast: a slow clip (every other frame) and the full-rate clip."""

    pathway_names = ("slow", "fast")

    def forward(self, x):  # type: ignore[no-untyped-def]
        slow, fast = x
        return self.fc(fast.mean(dim=(1, 3, 4))) + self.fc(slow.repeat_interleave(2, dim=2).mean(dim=(1, 3, 4)))


def test_pipeline_measures_pathway_shares_at_their_own_frame_rates() -> None:
    torch.manual_seed(3)
    net = _TwoPathway(frames=4).eval()
    with torch.no_grad():
        net.fc.weight.copy_(torch.rand_like(net.fc.weight) + 0.1)  # positive relevance on both pathways
    fast = torch.rand(2, 3, 4, 5, 5) + 0.1
    slow = fast[:, :, ::2].clone()
    pipe = ExplanationPipeline({"ixw": _InputTimesWeight()}, sigma=1.0, target="label")
    pipe.start(net)
    batch = pipe.explain(net, [slow, fast], torch.tensor([0, 1]))
    out = pipe.results("test")
    assert batch.clips.shape[2] == 4  # the reference input is the full-rate pathway
    rel = _InputTimesWeight()(net, [slow, fast], torch.tensor([0, 1]))
    pos = [r.sum(1).clamp_min(0).flatten(1).sum(1).double() for r in rel]
    share_slow = (pos[0] / (pos[0] + pos[1])).mean()
    assert out["test/pathway_share_slow/ixw"] == pytest.approx(float(share_slow))
    assert out["test/pathway_share_slow/ixw"] + out["test/pathway_share_fast/ixw"] == pytest.approx(1.0)
    assert "test/pathway_share_fast/ixw_selective" in out


def test_pipeline_records_every_clip_value_it_reduces() -> None:
    torch.manual_seed(4)
    net = _Linear().eval()
    clips, labels = torch.randn(3, 3, 4, 5, 5), torch.tensor([0, 1, 2])
    pipe = ExplanationPipeline({"ixw": _InputTimesWeight()}, sigma=1.0, target="label", record_clips=True,
                               faithfulness={"steps": 2, "num_clips": 2, "references": ["freeze"]})
    pipe.start(net)
    pipe.explain(net, clips, labels, videos=["a.avi", "b.avi", "c.avi"])
    pipe.explain(net, clips[:1], labels[:1], videos=["d.avi"])
    rows, out = pipe.clip_rows(), pipe.results("test")
    bias = [r for r in rows if (r["metric"], r["method"]) == ("spatial_bias", "ixw")]
    assert [r["video"] for r in bias] == ["a.avi", "b.avi", "c.avi", "d.avi"] and [r["clip"] for r in bias] == [0, 1,
                                                                                                          2, 3]
    values = np.array([r["value"] for r in bias], dtype=float)
    assert np.nanmean(values) == pytest.approx(out["test/spatial_bias/ixw"])
    auc = [r["value"] for r in rows if (r["metric"], r["method"]) == ("deletion_auc_freeze", "ixw")]
    assert len(auc) == 2 and np.mean(auc) == pytest.approx(out["test/deletion_auc_freeze/ixw"])  # num_clips = 2
    pipe.start(net)
    assert pipe.clip_rows() == []


def test_random_floor_seed_follows_the_clip_not_its_position() -> None:
    """The random-order floor of a clip is seeded from its pixels: the same in any batch position or process."""
    from motion_relevance.pipeline.faithfulness import clip_seeds

    torch.manual_seed(0)
    clips = torch.randn(3, 3, 4, 8, 8)
    seeds = clip_seeds(clips, 5)
    assert clip_seeds(clips.flip(0), 5) == seeds[::-1]
    assert clip_seeds(clips[1:2], 5) == seeds[1:2]
    assert len(set(seeds)) == 3 and clip_seeds(clips, 6) == [s + 1 for s in seeds]


def test_a_map_only_on_another_pathway_is_refused_naming_the_layer() -> None:
    """Grad-CAM of a slow-pathway layer maps to the slow input; the metrics measure the full-rate one, where it
    would be all zero: refused with the layer and the fix named, not measured as zeros."""
    from motion_relevance.pipeline.core import _check_reference_relevance

    class _Cam:
        layer = "blocks.4.multipathway_blocks.0"

    slow, fast = torch.ones(1, 1, 2, 4, 4), torch.zeros(1, 1, 8, 4, 4)
    with pytest.raises(ValueError, match=r"'gradcam' \(layer 'blocks.4.multipathway_blocks.0'\).*'fast'"):
        _check_reference_relevance("gradcam", _Cam(), (slow, fast), 1, ("slow", "fast"))
    _check_reference_relevance("gradcam", _Cam(), (slow, fast + 1), 1, ("slow", "fast"))  # on the fast input: fine
    _check_reference_relevance("gradcam", _Cam(), (slow * 0, fast), 1, ("slow", "fast"))  # nothing anywhere: fine


def test_pipeline_records_each_clips_randomisation_correlations() -> None:
    """Per-clip rank correlations of the cascading randomisation are kept (``randomization_s<k>``) and average to
    the logged stage values, so study tables can be recomputed from per_clip.csv."""
    torch.manual_seed(5)
    net = _Linear().eval()
    clips, labels = torch.randn(3, 3, 4, 5, 5), torch.tensor([0, 1, 2])
    pipe = ExplanationPipeline({"ixw": _InputTimesWeight()}, sigma=1.0, target="label", record_clips=True,
                               randomization={"num_clips": 3, "layers": "all"})
    pipe.start(net)
    pipe.explain(net, clips, labels, videos=["a.avi", "b.avi", "c.avi"])
    rows, out = pipe.clip_rows(), pipe.results("test")
    stages = sorted({r["metric"] for r in rows if r["metric"].startswith("randomization_s")})
    assert stages == ["randomization_s0", "randomization_s1"]  # original, then fc randomised
    for stage in stages:
        for method in ("ixw", "ixw_selective"):
            values = [r["value"] for r in rows if (r["metric"], r["method"]) == (stage, method)]
            assert [r["video"] for r in rows if (r["metric"], r["method"]) == (stage, method)] == ["a.avi", "b.avi",
                                                                                                  "c.avi"]
            assert np.nanmean(values) == pytest.approx(out[f"test/{stage}/{method}"])
    assert [r["value"] for r in rows if (r["metric"], r["method"]) == ("randomization_s0", "ixw")] == [1.0] * 3
