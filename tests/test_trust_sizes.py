"""Sizes a user sets are bounded by the data and by the memory at hand, refused before any forward pass; cached and
uncached runs differ only through the explainer's batch composition, by a bounded amount (docs/method.md,
"Faithfulness and sanity checks"; docs/safety.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from motion_relevance.metrics.faithfulness import curve_auc, deletion_curve, random_curve, relevance_ranks
from motion_relevance.metrics.faithfulness.scoring import batch_bytes
from motion_relevance.pipeline import faithfulness as stage_module
from motion_relevance.pipeline.faithfulness import FaithfulnessStage, RandomizationStage, available_memory


class Counting(nn.Module):
    """A linear classifier over the flattened clip that counts its forward passes."""

    def __init__(self, features: int, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(features, classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def stage(**kw) -> FaithfulnessStage:
    return FaithfulnessStage(["m"], [1.0], **{"references": ["freeze"], "matched_budget": False, "temporal": False,
                                               **kw})


# ------------------------------------------------------------------------------------------ data bounds


def test_steps_above_the_voxels_of_a_clip_refused_by_the_library_before_any_forward():
    model = Counting(3 * 2 * 3 * 4)
    clips = torch.randn(2, 3, 2, 3, 4)  # 24 voxels per clip
    with pytest.raises(ValueError, match=r"steps=25 exceeds the 24 voxels .*set steps <= 24"):
        deletion_curve(model, clips, torch.randn(2, 1, 2, 3, 4), steps=25)
    with pytest.raises(ValueError, match=r"steps=100000000 exceeds the 24 voxels"):
        random_curve(model, clips, steps=100_000_000)
    assert model.calls == 0
    assert deletion_curve(model, clips, torch.randn(2, 1, 2, 3, 4), steps=24).shape == (2, 25)  # the bound itself


def test_the_testers_steps_refused_from_the_clip_shape_alone():
    """faithfulness.steps=1e8 on 16x112x112 clips: refused from the shape, nothing allocated, naming key and bound."""
    with pytest.raises(ValueError, match=r"faithfulness\.steps=100000000 exceeds the 200704 voxels \(T\*H\*W = "
                                         r"16x112x112\).*faithfulness\.steps <= 200704"):
        stage(steps=100_000_000).check_data((3, 16, 112, 112), available=2**40)


def test_stage_refuses_at_the_first_batch_before_any_forward():
    model = Counting(3 * 2 * 3 * 4)
    s = stage(steps=30, num_clips=2)
    s.start()
    clips = torch.randn(2, 3, 2, 3, 4)
    with pytest.raises(ValueError, match=r"faithfulness\.steps=30 exceeds the 24 voxels"):
        s.update(model, clips, torch.tensor([0, 1]), {"m": torch.randn(2, 1, 2, 3, 4)}, {})
    assert model.calls == 0


def test_batch_size_bounded_by_the_inputs_one_update_builds():
    with pytest.raises(ValueError, match=r"faithfulness\.batch_size=1000 exceeds the 40 perturbed inputs one update "
                                         r"builds .*faithfulness\.batch_size <= 40"):
        stage(num_clips=4, steps=10, batch_size=1000).check_data((3, 4, 8, 8), available=2**40)
    stage(num_clips=4, steps=10, batch_size=40).check_data((3, 4, 8, 8), available=2**40)
    stage(num_clips=1, steps=2, batch_size=16).check_data((3, 4, 8, 8), available=2**40)  # the default always fits


@pytest.mark.parametrize("cls", ["faithfulness", "randomization"])
def test_clip_count_bounded_by_the_data(cls):
    model = Counting(10)
    if cls == "faithfulness":
        s, check = stage(num_clips=16), lambda n: stage(num_clips=16).check_data((3, 4, 8, 8), available_clips=n,
                                                                                    available=2**40)
    else:
        s = RandomizationStage({"m": None}, sigma=1.0, num_clips=16)
        check = lambda n: s.check_data((3, 4, 8, 8), model, available_clips=n, available=2**40)  # noqa: E731
    with pytest.raises(ValueError, match=rf"{cls}\.num_clips=16 exceeds the 10 clips the data holds .*<= 10"):
        check(10)
    check(16)
    assert s.num_clips == 16


# ------------------------------------------------------------------------------------------ memory


def test_batch_bytes_by_hand():
    # 2 clips (3, 4, 5, 6): 120 voxels; rows = min(8, 2 * 10) = 8
    need = batch_bytes((3, 4, 5, 6), 4, 2, 10, 8)
    assert need == {"batch_size": 8 * (3 * 120 + 2 * 120) * 4, "steps": 2 * 10 * 28, "clips": 2 * 3 * 30 * 4 + 16}
    blur = batch_bytes((3, 4, 5, 6), 4, 2, 10, 8, blur=True)
    assert blur["clips"] == 3 * 2 * 3 * 120 * 4 + 16
    assert batch_bytes((3, 4, 5, 6), 4, 1, 1, 100)["batch_size"] == 3 * (3 * 120 + 2 * 120) * 4  # rows <= inputs


def test_memory_estimate_refused_naming_the_key_to_lower():
    shape = (3, 16, 112, 112)
    s = stage(num_clips=16, steps=10, batch_size=160)
    need = sum(batch_bytes(shape, 4, 16, 10, 160, full_copy=True).values())  # motion reliance is on
    with pytest.raises(ValueError, match=r"faithfulness needs about .* MiB .* available; lower "
                                         r"faithfulness\.batch_size \(now 160\)"):
        s.check_data(shape, available=need - 1)
    s.check_data(shape, available=need)
    many = stage(num_clips=16, steps=200_000, batch_size=1)
    with pytest.raises(ValueError, match=r"lower faithfulness\.steps \(now 200000\)"):
        many.check_data(shape, available=sum(batch_bytes(shape, 4, 16, 200_000, 1, full_copy=True).values()) - 1)


def test_memory_refusal_at_the_first_batch_before_any_forward(monkeypatch):
    monkeypatch.setattr(stage_module, "available_memory", lambda device: 1000)
    model = Counting(3 * 2 * 3 * 4)
    s = stage(steps=4, num_clips=2)
    s.start()
    with pytest.raises(ValueError, match=r"lower faithfulness\.batch_size"):
        s.update(model, torch.randn(2, 3, 2, 3, 4), torch.tensor([0, 1]), {"m": torch.randn(2, 1, 2, 3, 4)}, {})
    assert model.calls == 0
    r = RandomizationStage({"m": lambda m, x, t: x}, sigma=1.0, num_clips=2)
    r.start()
    with pytest.raises(ValueError, match=r"randomization needs about .* lower randomization"):
        r.update(model, torch.randn(2, 3, 2, 3, 4), torch.tensor([0, 1]))
    assert model.calls == 0


def test_randomization_estimate_names_the_model_copy_or_the_clips():
    model = Counting(3 * 4 * 8 * 8)
    copy = sum(p.numel() * p.element_size() for p in model.parameters())
    s = RandomizationStage({"m": None}, sigma=1.0, num_clips=4)
    with pytest.raises(ValueError, match=r"lower randomization \(enabled=false: the model copy alone\)"):
        s.check_data((3, 1, 1, 1), model, available=copy // 2)
    with pytest.raises(ValueError, match=r"lower randomization\.num_clips \(now 4\)"):
        s.check_data((3, 4, 64, 64), model, available=copy + 10)
    s.check_data((3, 4, 8, 8), model, available=2**40)


def test_available_memory_of_the_host():
    free = available_memory("cpu")
    assert free is None or free > 0
    assert available_memory(None) == free or free is None or available_memory(None) > 0


# ------------------------------------------------------------------------------------------ cached vs uncached


def _c3d_gradcam():
    from motion_relevance.explain import GradCAM
    from motion_relevance.models import C3D

    torch.manual_seed(0)
    return C3D(num_classes=5, width=0.125, crop_size=32).eval(), GradCAM(layer="conv5b")


def test_cache_round_trip_is_bitwise_so_faithfulness_values_are_equal(tmp_path):
    """Same batch composition: the float32 cache gives back exactly what the explainer gave, so every faithfulness
    value of a cached run equals the uncached one bit for bit."""
    from motion_relevance.explain.cache import AttributionCache, CachedExplainer

    net, gradcam = _c3d_gradcam()
    x, t = torch.randn(3, 3, 16, 32, 32), torch.tensor([0, 1, 4])
    fresh = CachedExplainer(gradcam)(net, x, t).relevance
    cached = CachedExplainer(gradcam, AttributionCache(tmp_path / "c"))
    cached(net, x, t)  # fills the cache
    hit = cached(net, x, t)
    assert hit.hits == 3 and torch.equal(hit.relevance, fresh)
    assert torch.equal(deletion_curve(net, x, hit.relevance, t, steps=5),
                       deletion_curve(net, x, fresh, t, steps=5))


def test_cache_batch_composition_changes_relevance_by_rounding_and_faithfulness_by_a_bounded_amount(tmp_path):
    """A partial hit explains only the missing clips, in a smaller batch: the backend's kernels differ with the batch
    size, so the relevance differs at float32 rounding; near-tied voxels (Grad-CAM is upsampled from a coarse grid)
    can then swap places in the removal order. The bound: relevance within 64 float32 ulps of its largest value, the
    sorted voxel scores within that too (sorting is 1-Lipschitz in the max norm), AUCs within 1e-3."""
    from motion_relevance.explain.cache import AttributionCache, CachedExplainer

    net, gradcam = _c3d_gradcam()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 3, 16, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    uncached = CachedExplainer(gradcam)(net, x, t).relevance
    cached = CachedExplainer(gradcam, AttributionCache(tmp_path / "c"))
    cached(net, x[[0, 2]], t[[0, 2]])  # an earlier run explained clips 0 and 2
    out = cached(net, x, t)  # clips 1 and 3 are explained as a batch of 2
    assert out.hits == 2
    rel = out.relevance
    eps = torch.finfo(torch.float32).eps
    scale = uncached.abs().flatten(1).amax(1)
    diff = (rel - uncached).abs().flatten(1).amax(1)
    assert bool((diff <= 64 * eps * scale).all()), (diff / scale).tolist()
    a, b = rel.sum(1).flatten(1), uncached.sum(1).flatten(1)
    sorted_gap = (a.sort(1).values - b.sort(1).values).abs().amax(1)
    assert bool((sorted_gap <= 64 * eps * scale).all())
    auc_cached = curve_auc(deletion_curve(net, x, rel, t, steps=10))
    auc_uncached = curve_auc(deletion_curve(net, x, uncached, t, steps=10))
    assert float((auc_cached - auc_uncached).abs().max()) <= 1e-3
    # where the explanations are equal bit for bit, so are the orders and the values
    same = [i for i in range(4) if torch.equal(rel[i], uncached[i])]
    if same:
        assert torch.equal(relevance_ranks(rel[same]), relevance_ranks(uncached[same]))
        assert torch.equal(auc_cached[same], auc_uncached[same])


def test_huge_steps_are_refused_from_the_config_before_any_data(tmp_path) -> None:
    """``faithfulness.steps=100000000`` is refused by the config checks (no data read, no model built), naming the
    key and the bound from ``data.clip_len`` x ``data.crop_size``; a value inside the bound passes."""
    from motion_relevance.utils.validation import validate_run_config
    from tests.conftest import compose_config

    cfg = compose_config("explain", ["faithfulness.steps=100000000", "data.clip_len=16", "data.crop_size=32"],
                         tmp_path)
    with pytest.raises(ValueError, match=r"faithfulness.steps=100000000 exceeds the 16384 voxels \(T\*H\*W = 16x32x32"):
        validate_run_config(cfg)
    validate_run_config(compose_config("explain", ["faithfulness.steps=16384", "data.clip_len=16",
                                                   "data.crop_size=32"], tmp_path))


def test_a_batch_that_cannot_fit_in_memory_is_refused_from_the_config(tmp_path) -> None:
    """``data.batch_size`` whose clips alone exceed the memory at hand is refused before any data is read, naming
    the key and a size that fits; the default passes."""
    from motion_relevance.utils.validation import check_batch_fits_memory
    from tests.conftest import compose_config

    cfg = compose_config("train", ["data.batch_size=1000", "data.clip_len=16", "data.crop_size=112"], tmp_path)
    per_clip = 3 * 16 * 112 * 112 * 4
    with pytest.raises(ValueError, match=r"data.batch_size=1000 needs at least .* set data.batch_size <= 10 "):
        check_batch_fits_memory(cfg, available=10 * per_clip + 1)
    check_batch_fits_memory(cfg, available=1000 * per_clip)
    check_batch_fits_memory(compose_config("train", [], tmp_path))  # the defaults fit this machine
