"""temporal_share as a run metric: the explanation pipeline measures it inside its own AttnLRP call (no second
pass) and reports ``<stage>/temporal_share/<method>`` equal to the function called independently; the key is
absent for other explainers and for models without a token -> frame map; cache hits count as undefined."""

from __future__ import annotations

import pytest
import torch

from motion_relevance.explain import AttnLRP, GradCAM, temporal_share
from motion_relevance.explain.cache import AttributionCache
from motion_relevance.explain.transformer import TokenGradCAM
from motion_relevance.metrics import keys
from motion_relevance.metrics.suite import ExplanationMetrics
from motion_relevance.models import C3D
from motion_relevance.pipeline import ExplanationPipeline
from tests.test_videomae import clips, small


def _attnlrp() -> AttnLRP:
    return AttnLRP(lower=-6.0, upper=6.0)


def _run(pipe: ExplanationPipeline, model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, float]:
    pipe.start(model)
    for i, x in enumerate(batches):
        pipe.explain(model, x, torch.arange(x.shape[0]) % 3 + i)
    return pipe.results("test")


def test_pipeline_reports_the_mean_of_temporal_share_over_the_same_clips() -> None:
    model = small()
    batches = [clips(batch=2, seed=1), clips(batch=3, seed=2)]
    pipe = ExplanationPipeline({"attnlrp": _attnlrp(), "gradcam": TokenGradCAM()}, sigma=None,
                               target="label", keep_clips=0)
    values = _run(pipe, model, batches)
    expected = torch.cat([temporal_share(model, x, torch.arange(x.shape[0]) % 3 + i, explainer=_attnlrp())
                          for i, x in enumerate(batches)]).double()
    assert values["test/temporal_share/attnlrp"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert values["test/temporal_share_std/attnlrp"] == pytest.approx(float(expected.std()), rel=1e-4)
    assert values["test/temporal_share_n/attnlrp"] == 5 and values["test/temporal_share_n_undefined/attnlrp"] == 0
    assert 0 < values["test/temporal_share/attnlrp"] < 1
    assert not any("temporal_share" in k and k.endswith("/gradcam") for k in values)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_absent_for_a_model_without_a_token_frame_map() -> None:
    net = C3D(num_classes=4, width=0.125, crop_size=32).eval()
    pipe = ExplanationPipeline({"attnlrp": _attnlrp(), "gradcam": GradCAM(layer="conv5b")}, sigma=None,
                               target="label", keep_clips=0)
    values = _run(pipe, net, [torch.randn(2, 3, 16, 32, 32)])
    assert pipe.temporal_share == [] and not any("temporal_share" in k for k in values)
    assert "test/precision/attnlrp" not in values and "test/overhead_ms/attnlrp" in values


def test_cached_clips_count_as_undefined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, x = small(), clips(batch=3, seed=4)
    cache = AttributionCache(tmp_path)
    first = ExplanationPipeline({"attnlrp": _attnlrp()}, sigma=None, target="label", keep_clips=0, cache=cache)
    _run(first, model, [x[:1]])  # clip 0 is cached
    pipe = ExplanationPipeline({"attnlrp": _attnlrp()}, sigma=None, target="label", keep_clips=0, cache=cache)
    values = _run(pipe, model, [x])
    expected = temporal_share(model, x[1:], torch.tensor([1, 2]), explainer=_attnlrp()).double()
    assert values["test/temporal_share_n/attnlrp"] == 2 and values["test/temporal_share_n_undefined/attnlrp"] == 1
    assert values["test/temporal_share/attnlrp"] == pytest.approx(float(expected.mean()), rel=1e-5)


def test_suite_refuses_an_unknown_temporal_share_method() -> None:
    with pytest.raises(KeyError, match="temporal_share names \\['dtd'\\]"):
        ExplanationMetrics(["attnlrp"], temporal_share=["dtd"])
    assert keys.parse_key("test/temporal_share_n/attnlrp") == keys.MetricKey("test", "temporal_share", "n",
                                                                            "attnlrp")


def test_table9_has_a_row_per_measured_explainer_after_table8() -> None:
    from motion_relevance.pipeline.tables import build_tables

    metrics = {keys.metric_key("test", "temporal_share", "attnlrp"): 0.6,
               keys.metric_key("test", "temporal_share", "attnlrp", "n"): 4.0,
               keys.metric_key("test", "overhead_ms", "gradcam"): 1.0}
    tables = build_tables(metrics)
    assert list(tables)[-1] == "table9_temporal_share"
    assert [(r["method"], r["temporal_share"], r["temporal_share_n"]) for r in tables["table9_temporal_share"]] == [
        ("attnlrp", 0.6, 4.0)]


@pytest.mark.slow  # trains its own videomae_tiny checkpoint: about 12 s of the file's 35
def test_mr_explain_on_videomae_tiny_logs_temporal_share_for_attnlrp_only(tmp_path, data_root) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from motion_relevance.explain_app import explain
    from motion_relevance.train import train
    from tests.conftest import TINY_DATA, compose_config

    common = [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", "logger=csv",
              "~callbacks.progress_bar", *TINY_DATA]
    train_cfg = compose_config("train", [*common, "model=videomae_tiny", "callbacks=default", "trainer.max_epochs=1",
                                         "test=false"], tmp_path / "train")
    train(train_cfg)
    ckpt = Path(train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = compose_config("explain", [*common, f"ckpt_path={ckpt}", "num_clips=3", "~explainers.dtd", "~explainers.gbp",
                                     "~explainers.guided_gradcam", "~explainers.gradcam",
                                     "+explainer@explainers.attnlrp=attnlrp",
                                     "+explainer@explainers.token_gradcam=token_gradcam", "objective.method=attnlrp",
                                     "faithfulness.enabled=false", "randomization.enabled=false", "cache=none"],
                         tmp_path / "explain")
    metrics, _ = explain(cfg)
    share = float(metrics["test/temporal_share/attnlrp"])
    assert 0.0 < share < 1.0 and int(metrics["test/temporal_share_n/attnlrp"]) == 3
    assert not any("temporal_share" in k and k.endswith("/token_gradcam") for k in metrics)
    assert (Path(cfg.paths.output_dir) / "tables" / "table9_temporal_share.md").exists()


def test_mr_train_explain_callback_logs_temporal_share(train_cfg) -> None:  # type: ignore[no-untyped-def]
    from motion_relevance.train import train

    cfg = train_cfg("model=videomae_tiny", "callbacks=explain", "trainer.fast_dev_run=true", "num_clips=2",
                    "~explainers.dtd", "~explainers.gbp", "~explainers.guided_gradcam", "~explainers.gradcam",
                    "+explainer@explainers.attnlrp=attnlrp", "+explainer@explainers.rollout=rollout",
                    "faithfulness.enabled=false", "randomization.enabled=false")
    metrics, _ = train(cfg)
    assert 0.0 < float(metrics["test/temporal_share/attnlrp"]) < 1.0
    assert int(metrics["test/temporal_share_n/attnlrp"]) + int(metrics["test/temporal_share_n_undefined/attnlrp"]) == 2
    assert not any("temporal_share" in k and k.endswith("/rollout") for k in metrics)
