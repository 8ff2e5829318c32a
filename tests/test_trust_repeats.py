"""A repeated element of a list setting (sigma, layer, reference, stage, class) is refused before any work.

Each repeat is fed through the real config composition and the pre-work checks of the entry points
(:func:`validate_train_config`, :func:`validate_run_config`), and through the library constructor that takes the
list, so a repeat can neither run an element twice nor count it twice.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from motion_relevance.callbacks.explanations import ExplanationCallback
from motion_relevance.data import MotionShapesConfig
from motion_relevance.explain import DeepTaylor
from motion_relevance.explain.selective import check_sigma, selective_relevance
from motion_relevance.metrics.randomization import cascading_randomization, randomization_stages
from motion_relevance.pipeline import ExplanationPipeline
from motion_relevance.pipeline.faithfulness import FaithfulnessStage, RandomizationStage
from motion_relevance.train import train
from motion_relevance.utils.validation import validate_run_config, validate_train_config
from tests.conftest import compose_config
from tests.tiny_models import clips as tiny_clips
from tests.tiny_models import tiny_chain


def _dtd() -> DeepTaylor:
    return DeepTaylor(lower=-10.0, upper=10.0)


# (override, key and repeated value the message names)
REPEATS = [
    (["selective.sigma=[2,2,4]"], r"selective\.sigma: 2 appears more than once"),
    (["selective.sigma=[2,4,2.0]"], r"selective\.sigma: 2\.0 appears more than once"),
    (["randomization=default", "randomization.layers=[fc8,fc8]"], r"randomization\.layers: 'fc8' appears more"),
    (["faithfulness.references=[freeze,mean,freeze]"], r"faithfulness\.references: 'freeze' appears more"),
    (["callbacks=explain", "callbacks.explanations.stages=[test,test]"],
     r"callbacks\.explanations\.stages: 'test' appears more"),
    (["data.generator.classes=[right,left,right]"], r"data\.generator\.classes: 'right' appears more"),
]


@pytest.mark.parametrize(("overrides", "message"), REPEATS)
def test_train_config_refuses_a_repeat(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_config("train", overrides, tmp_path)
    with pytest.raises(ValueError, match=message):
        validate_train_config(cfg)


@pytest.mark.parametrize(("overrides", "message"), [r for r in REPEATS if "callbacks=explain" not in r[0]])
def test_explain_config_refuses_a_repeat(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_config("explain", [*overrides, "ckpt_path=missing.ckpt"], tmp_path)
    with pytest.raises(ValueError, match=message):
        validate_run_config(cfg)


def test_repeat_refused_before_any_data_is_made(tmp_path: Path) -> None:
    cfg = compose_config("train", ["selective.sigma=[2,2,4]", "callbacks=explain"], tmp_path)
    with open_dict(cfg):
        cfg.data.root = str(tmp_path / "never_generated")
    with pytest.raises(ValueError, match=r"selective\.sigma: 2 appears more than once"):
        train(cfg)
    assert not (tmp_path / "never_generated").exists()


def test_distinct_lists_pass(tmp_path: Path) -> None:
    cfg = compose_config("train", ["selective.sigma=[2,4]", "faithfulness.references=[freeze,blur]",
                                   "randomization=default", "randomization.layers=[fc8,fc7]",
                                   "callbacks=explain", "callbacks.explanations.stages=[validate,test]"], tmp_path)
    validate_train_config(cfg)


# ------------------------------------------------------------------------------------- library constructors
def test_sigma_list_repeat_is_refused_by_the_library() -> None:
    assert check_sigma([2, 4]) == [2.0, 4.0]
    rel = torch.rand(1, 3, 4, 8, 8)
    for sigma in ([2, 2], [2.0, 4.0, 2]):
        with pytest.raises(ValueError, match=r"selective\.sigma: 2(\.0)? appears more than once"):
            check_sigma(sigma)
        with pytest.raises(ValueError, match="selective.sigma"):
            selective_relevance(rel, sigma)
    with pytest.raises(ValueError, match="selective.sigma"):
        check_sigma(torch.tensor([3.0, 3.0]))
    with pytest.raises(ValueError, match="selective.sigma"):
        ExplanationPipeline({"dtd": _dtd()}, sigma=[2, 2, 4])
    assert ExplanationPipeline({"dtd": _dtd()}, sigma=[2, 4]).sigmas == [2.0, 4.0]


def test_reference_repeat_is_refused_by_the_stage() -> None:
    stage = FaithfulnessStage(["dtd"], [4.0], references=["freeze", "blur"])
    assert stage.references == ["freeze", "blur"]
    with pytest.raises(ValueError, match=r"faithfulness\.references: 'freeze' appears more than once"):
        FaithfulnessStage(["dtd"], [4.0], references=["freeze", "blur", "freeze"])


def test_layer_repeat_is_refused_by_the_stage_and_the_metric() -> None:
    with pytest.raises(ValueError, match=r"randomization\.layers: 'fc2' appears more than once"):
        RandomizationStage({"dtd": _dtd()}, sigma=4.0, layers=["fc2", "fc2"])
    assert RandomizationStage({"dtd": _dtd()}, sigma=4.0, layers="all").layers == "all"
    net, x = tiny_chain(), tiny_clips()
    assert [s[0] for s in randomization_stages(net, x, ["fc2", "conv1"])] == ["fc2", "conv1"]
    with pytest.raises(ValueError, match=r"randomization\.layers: 'fc2' appears more than once"):
        randomization_stages(net, x, ["fc2", "conv1", "fc2"])
    with pytest.raises(ValueError, match=r"randomization\.layers: 'conv1'"):
        cascading_randomization(net, x, _dtd(), layers=["conv1", "conv1"],
                                selective=functools.partial(selective_relevance, sigma=4.0))


def test_stage_and_class_repeats_are_refused_by_their_constructors() -> None:
    with pytest.raises(ValueError, match=r"callbacks\.explanations\.stages: 'test' appears more than once"):
        ExplanationCallback({"dtd": _dtd()}, stages=["test", "test"])
    with pytest.raises(ValueError, match=r"classes: 'up' appears more than once"):
        MotionShapesConfig(classes=["up", "down", "up"])


def test_metric_suite_and_faithfulness_refuse_a_repeated_name_or_sigma() -> None:
    from motion_relevance.metrics.suite import ExplanationMetrics

    suite = ExplanationMetrics(["dtd", "gbp"], [2.0, 4.0])
    assert suite.methods == ["dtd", "gbp"] and suite.sigmas == [2.0, 4.0]
    with pytest.raises(ValueError, match=r"selective\.sigma: 2\.0 appears more than once"):
        ExplanationMetrics(["dtd"], [2, 2.0])  # would count every clip twice under dtd_selective_s2
    with pytest.raises(ValueError, match=r"explainers: 'dtd' appears more than once"):
        ExplanationMetrics(["dtd", "dtd"], [4.0])
    with pytest.raises(ValueError, match=r"explainers: 'dtd' appears more than once"):
        FaithfulnessStage(["dtd", "dtd"], [4.0])
