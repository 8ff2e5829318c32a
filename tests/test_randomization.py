"""Cascading model-parameter randomisation vs scipy's Spearman, model-independent and gradient explainers, and the
caller's model left as it was (docs/method.md, "Faithfulness and sanity checks")."""

from __future__ import annotations

import functools
import math
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from motion_relevance.explain.selective import selective_relevance
from motion_relevance.metrics.faithfulness_metrics import RandomizationCorrelation
from motion_relevance.metrics.randomization import (
    RandomizationResult,
    cascading_randomization,
    randomization_stages,
    spearman,
)

SELECT = functools.partial(selective_relevance, sigma=1.0)  # the selective step is passed in


def tiny_model(batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: dict[str, nn.Module] = {"conv1": nn.Conv3d(3, 4, 3, padding=1)}
    if batchnorm:
        layers["bn1"] = nn.BatchNorm3d(4)
    layers.update(relu1=nn.ReLU(), conv2=nn.Conv3d(4, 4, 3, padding=1), relu2=nn.ReLU(), flatten=nn.Flatten())
    layers.update(fc1=nn.Linear(4 * 4 * 6 * 6, 8), relu3=nn.ReLU(), fc2=nn.Linear(8, 5))
    model = nn.Sequential(OrderedDict(layers))
    if batchnorm:  # running statistics that a reset visibly changes
        model.bn1.running_mean.fill_(0.3)
        model.bn1.running_var.fill_(2.0)
    return model


def clips(seed: int = 0) -> torch.Tensor:
    return torch.randn((3, 3, 4, 6, 6), generator=torch.Generator().manual_seed(seed))


def gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain input gradient of the target logit (a model-dependent explainer)."""
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(out, x)
    return g


def the_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """An "explainer" that ignores the model."""
    return x.clone()


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, 5, 5, generator=g).mul(2).round()  # many ties
    b = torch.randn(6, 4, 5, 5, generator=g).mul(2).round()
    b[2] = a[2] * 3 + 1  # perfectly monotone
    b[3] = -a[3]
    got = spearman(a, b)
    for i in range(6):
        want = scipy.stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert math.isclose(got[i].item(), want, rel_tol=1e-12, abs_tol=1e-12), i
    assert got[2].item() == pytest.approx(1.0) and got[3].item() == pytest.approx(-1.0)
    const = spearman(torch.zeros(2, 10), torch.randn(2, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(scipy.stats.spearmanr(np.zeros(10), np.arange(10)).statistic)
    assert bool(torch.isnan(const).all())
    with pytest.raises(ValueError, match="same shape"):
        spearman(torch.zeros(2, 10), torch.zeros(2, 9))
    with pytest.raises(ValueError, match="NaN"):
        spearman(torch.full((1, 3), float("nan")), torch.zeros(1, 3))


def test_stages_follow_the_forward_pass_from_output_to_input():
    model = tiny_model(batchnorm=True)
    x = clips()
    assert randomization_stages(model, x) == [
        ["fc2"],
        ["fc1"],
        ["conv2"],
        ["conv1", "bn1"],
    ]  # BatchNorm reset with its conv
    assert randomization_stages(model, x, 2) == [["fc2"], ["fc1"]]
    assert randomization_stages(model, x, "top-3") == [["fc2"], ["fc1"], ["conv2"]]
    assert randomization_stages(model, x, ["conv2", "fc2"]) == [["conv2"], ["fc2"]]

    class Reordered(nn.Module):  # registered input-first, called output-last: order comes from the trace
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.body = nn.Linear(3 * 4 * 6 * 6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x.flatten(1)))

    assert randomization_stages(Reordered(), x) == [["head"], ["body"]]
    with pytest.raises(ValueError, match=r"layers must be 'all', 1..4"):
        randomization_stages(model, x, 5)
    with pytest.raises(ValueError, match=r"not weighted layers of the model; available \(output first\)"):
        randomization_stages(model, x, ["fc9"])
    with pytest.raises(ValueError, match="layers must be"):
        randomization_stages(model, x, "some")
    with pytest.raises(ValueError, match="nothing to randomise"):
        randomization_stages(nn.Sequential(nn.Flatten()), x)


def test_model_independent_explainer_keeps_correlation_one():
    result = cascading_randomization(tiny_model(), clips(), the_input, selective=SELECT)
    assert result.stages == ["original", "fc2", "fc1", "conv2", "conv1"]
    assert result.baseline.shape == result.selective.shape == (5, 3)
    torch.testing.assert_close(result.baseline, torch.ones(5, 3, dtype=torch.float64))
    torch.testing.assert_close(result.selective, torch.ones(5, 3, dtype=torch.float64))


def test_gradient_explainer_decorrelates_and_stage_zero_is_one():
    model, x = tiny_model(), clips()
    result = cascading_randomization(model, x, gradient, selective=SELECT)
    torch.testing.assert_close(result.baseline[0], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(result.selective[0], torch.ones(3, dtype=torch.float64))
    means = result.mean()
    assert means["baseline_mean"][-1] < 0.3 and means["selective_mean"][-1] < 0.3
    assert means["baseline_mean"][-1] < means["baseline_mean"][0]
    with torch.no_grad():
        torch.testing.assert_close(result.target, model(x).argmax(1))  # the original model's predictions
    again = cascading_randomization(model, x, gradient, selective=SELECT)
    torch.testing.assert_close(again.baseline, result.baseline)  # fixed seed: reproducible
    other = cascading_randomization(model, x, gradient, selective=SELECT, seed=5)
    assert not torch.allclose(other.baseline[1:], result.baseline[1:])


def test_callers_model_untouched():
    model = tiny_model(batchnorm=True)
    model.train()
    model.conv2.eval()
    model.conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.random.get_rng_state()
    cascading_randomization(model, clips(), gradient, target=[0, 1, 2], selective=SELECT)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == flags
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert torch.equal(torch.random.get_rng_state(), rng)  # seeded resets do not move the global generator


def test_each_stage_resets_one_more_layer_under_its_seed():
    model, x = tiny_model(batchnorm=True), clips()
    seen: list[dict[str, torch.Tensor]] = []
    targets: list[torch.Tensor] = []

    def recording(m: nn.Module, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        targets.append(t.clone())
        return gradient(m, c, t)

    result = cascading_randomization(model, x, recording, target=2, seed=10, selective=SELECT)
    assert result.reset == [[], ["fc2"], ["fc1"], ["conv2"], ["conv1", "bn1"]]
    original = model.state_dict()
    # seen[0]: the original explanation; seen[1]: stage "original" (unchanged); seen[2 + j]: after j + 1 resets
    for k in original:
        assert torch.equal(seen[0][k], original[k]) and torch.equal(seen[1][k], original[k])
    cascade = ["fc2", "fc1", "conv2", "conv1"]
    for j, name in enumerate(cascade[:3], start=1):
        layer = dict(model.named_modules())[name]
        fresh = nn.Linear(layer.in_features, layer.out_features) if isinstance(layer, nn.Linear) else nn.Conv3d(4, 4, 3)
        torch.manual_seed(10 + j)
        fresh.reset_parameters()
        assert torch.equal(seen[1 + j][f"{name}.weight"], fresh.weight), name
        assert not torch.equal(seen[1 + j][f"{name}.weight"], original[f"{name}.weight"])
        for keep in cascade[j:]:  # layers nearer the input are still the original ones at this stage
            assert torch.equal(seen[1 + j][f"{keep}.weight"], original[f"{keep}.weight"]), (name, keep)
    last = seen[-1]
    assert torch.equal(last["bn1.running_mean"], torch.zeros(4)) and torch.equal(last["bn1.running_var"], torch.ones(4))
    assert torch.equal(seen[-2]["bn1.running_mean"], original["bn1.running_mean"])  # BatchNorm goes with conv1 only
    assert all(torch.equal(t, torch.full((3,), 2)) for t in targets)


def test_top_k_layers_and_progress_bar():
    result = cascading_randomization(
        tiny_model(), clips(), gradient, layers=2, include_original=False, progress=True, selective=SELECT
    )
    assert result.stages == ["fc2", "fc1"] and result.baseline.shape == (2, 3)


def test_with_a_project_explainer_on_the_small_c3d():
    from motion_relevance.explain.explainers import GuidedBackprop
    from motion_relevance.models import C3D

    torch.manual_seed(0)
    model = C3D(num_classes=4, width=0.125, crop_size=32)
    x = torch.randn(2, 3, 16, 32, 32)
    result = cascading_randomization(model, x, GuidedBackprop(), layers=2, selective=SELECT)
    assert result.stages == ["original", "fc8", "fc7"]
    torch.testing.assert_close(result.baseline[0], torch.ones(2, dtype=torch.float64))
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"explainer": 3}, "explainer must be a callable"),
        ({"selective": 4.0}, "selective must be a callable"),
        ({"layers": 0}, "layers must be"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"target": 1.5}, "target must hold 3 integer class indices"),
        ({"target": 5}, r"target: class indices must lie in \[0, 5\)"),
    ],
)
def test_bad_input(kwargs, match):
    calls = []

    def explainer(m, c, t):
        calls.append(1)
        return c

    args = {"explainer": explainer, "selective": SELECT, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        cascading_randomization(tiny_model(), clips(), **args)
    assert not calls


def test_randomization_correlation_metric_vs_numpy():
    g = torch.Generator().manual_seed(3)
    base = torch.rand(4, 7, generator=g, dtype=torch.float64)
    sel = torch.rand(4, 7, generator=g, dtype=torch.float64)
    sel[2, 3] = float("nan")
    names = ["original", "fc8", "fc7", "fc6"]
    metric = RandomizationCorrelation(names)
    metric.update(RandomizationResult(names, [[]] * 4, base[:, :3], sel[:, :3], torch.zeros(3)))
    metric.update(base[:, 3:], sel[:, 3:])
    out = metric.compute()
    for key, v in (("baseline", base.numpy()), ("selective", sel.numpy())):
        assert out[f"{key}_mean"].shape == (4,)
        for s in range(4):
            row = v[s][np.isfinite(v[s])]
            assert math.isclose(out[f"{key}_mean"][s].item(), row.mean(), rel_tol=1e-12)
            assert math.isclose(out[f"{key}_std"][s].item(), row.std(ddof=1), rel_tol=1e-9)
            assert out[f"{key}_n"][s].item() == len(row)
    assert out["selective_n_undefined"].tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"baseline must have shape \(stages, B\) = \(4, B\)"):
        metric.update(base[:3], sel[:3])
    with pytest.raises(ValueError, match="differ from this metric's"):
        metric.update(RandomizationResult(["a", "b", "c", "d"], [[]] * 4, base, sel, torch.zeros(7)))
    with pytest.raises(ValueError, match="stages must"):
        RandomizationCorrelation([])
