"""Faithfulness functions and metric classes vs a loop-by-loop transcription of the method, numpy and scipy, and
tiny models whose answers are known (docs/method.md, "Faithfulness and sanity checks")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch import nn

from motion_relevance.metrics.faithfulness import (
    curve_auc,
    deletion_curve,
    freeze_drop,
    kept_voxels,
    matched_budget_drops,
    matched_budget_masks,
    motion_reliance,
    random_curve,
    random_mask,
    random_ranks,
    reference,
    relevance_ranks,
    top_m_mask,
)
from motion_relevance.metrics.faithfulness_metrics import (
    DeletionAUC,
    FaithfulnessCurves,
    FreezeDrop,
    InsertionAUC,
    MotionReliance,
)

SHAPE = (2, 3, 4, 5, 6)  # B, C, T, H, W: N = 120 voxels per clip
CLASSES = 5


def make_clips(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class LinearModel(nn.Module):
    """Logits = W flatten(x) + b: every voxel matters, with its own weight."""

    def __init__(self, shape: tuple[int, ...] = SHAPE, classes: int = CLASSES, seed: int = 1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(math.prod(shape[1:]), classes).double()
        with torch.no_grad():
            self.fc.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class AppearanceMotionModel(nn.Module):
    """Logits = W_a flatten(x.mean(T)) + W_m flatten(x[:, :, 1:] - x[:, :, :-1]) + b."""

    def __init__(self, shape: tuple[int, ...] = SHAPE, classes: int = CLASSES, seed: int = 2) -> None:
        super().__init__()
        _, c, t, h, w = shape
        torch.manual_seed(seed)
        self.appearance = nn.Linear(c * h * w, classes).double()
        self.motion = nn.Linear(c * (t - 1) * h * w, classes, bias=False).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.appearance(x.mean(2).flatten(1)) + self.motion((x[:, :, 1:] - x[:, :, :-1]).flatten(1))


class CountingModel(nn.Module):
    """Counts forward calls (to show a check ran before any forward pass)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


# ------------------------------------------------------------------ loop-by-loop transcription of the method


def loop_reference(x: np.ndarray, kind: str, sigma: float = 5.0) -> np.ndarray:
    """Reference of one clip (C, T, H, W) by explicit loops."""
    c_, t_, h_, w_ = x.shape
    ref = np.empty_like(x)
    for c in range(c_):
        if kind == "mean":
            total = 0.0
            for t in range(t_):
                for h in range(h_):
                    for w in range(w_):
                        total += x[c, t, h, w]
            ref[c] = total / (t_ * h_ * w_)
            continue
        for h in range(h_):
            for w in range(w_):
                if kind == "freeze":
                    ref[c, :, h, w] = sum(x[c, t, h, w] for t in range(t_)) / t_
                    continue
                r = math.ceil(3 * sigma)
                k = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
                norm = sum(k)
                for t in range(t_):
                    acc = 0.0
                    for i in range(-r, r + 1):
                        for j in range(-r, r + 1):
                            hh, ww = min(max(h + i, 0), h_ - 1), min(max(w + j, 0), w_ - 1)  # replicate padding
                            acc += k[i + r] * k[j + r] * x[c, t, hh, ww]
                    ref[c, t, h, w] = acc / norm**2
    return ref


def loop_curve(
    model: nn.Module,
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: int,
    steps: int,
    kind: str,
    insertion: bool,
    sigma: float = 5.0,
) -> list[float]:
    """Deletion/insertion curve of one clip (C, T, H, W): python loops over steps and voxels."""
    xs = x.numpy()
    rel = relevance.numpy()
    c_, t_, h_, w_ = xs.shape
    n = t_ * h_ * w_
    a = []
    for t in range(t_):
        for h in range(h_):
            for w in range(w_):
                a.append(sum(float(rel[c, t, h, w]) for c in range(rel.shape[0])))
    order = sorted(range(n), key=lambda i: -a[i])  # largest first; sorted() is stable: ties keep flat order
    ref = loop_reference(xs, kind, sigma)
    scores = []
    for k in range(steps + 1):
        n_k = (k * n) // steps
        y, source = (ref.copy(), xs) if insertion else (xs.copy(), ref)
        for i in order[:n_k]:
            t, rest = divmod(i, h_ * w_)
            h, w = divmod(rest, w_)
            for c in range(c_):
                y[c, t, h, w] = source[c, t, h, w]
        with torch.no_grad():
            logits = model(torch.from_numpy(y)[None])
        scores.append(float(torch.softmax(logits, 1)[0, target]))
    return scores


@pytest.mark.parametrize("kind", ["freeze", "mean", "blur"])
@pytest.mark.parametrize("insertion", [False, True])
@pytest.mark.parametrize(("channels", "steps", "integer"), [(3, 4, False), (1, 7, False), (3, 5, True)])
def test_curve_matches_loop_transcription(kind, insertion, channels, steps, integer):
    clips, model = make_clips(), LinearModel()
    rel = torch.randn((2, channels, 4, 5, 6), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    if integer:  # many ties in A = R.sum(C): ordered by flat index
        rel = rel.round()
    target = [1, 3]
    sigma = 1.5
    got = deletion_curve(
        model, clips, rel, target, steps=steps, reference=kind, insertion=insertion, blur_sigma=sigma, batch_size=3
    )
    assert got.shape == (2, steps + 1)
    for b in range(2):
        want = loop_curve(model, clips[b], rel[b], target[b], steps, kind, insertion, sigma)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["freeze", "mean"])
def test_reference_matches_loops(kind):
    clips = make_clips()
    got = reference(clips, kind)
    assert got.shape == clips.shape
    for b in range(2):
        np.testing.assert_allclose(got[b].numpy(), loop_reference(clips[b].numpy(), kind), atol=1e-12)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0])
def test_blur_matches_loops_and_scipy(sigma):
    clips = make_clips()  # 5x6 frames: at sigma 5 the radius (15) is larger than the frame
    got = reference(clips, "blur", blur_sigma=sigma).numpy()
    r = math.ceil(3 * sigma)
    want = scipy.ndimage.gaussian_filter(
        clips.numpy(), sigma=(0, 0, 0, sigma, sigma), mode="nearest", radius=(0, 0, 0, r, r)
    )
    np.testing.assert_allclose(got, want, atol=1e-12)
    if sigma < 3:
        np.testing.assert_allclose(got[1], loop_reference(clips[1].numpy(), "blur", sigma), atol=1e-12)
    # a blur never mixes frames or channels: a clip that is constant per frame stays so
    flat = torch.arange(4, dtype=torch.float64).view(1, 1, 4, 1, 1).expand(1, 3, 4, 5, 6).contiguous()
    torch.testing.assert_close(reference(flat, "blur", blur_sigma=sigma), flat)


def test_curve_auc_trapezoid_vs_numpy():
    curve = torch.rand(6, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = [np.trapezoid(row, x=np.linspace(0, 1, 11)) for row in curve.numpy()]
    np.testing.assert_allclose(curve_auc(curve).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(curve_auc(torch.tensor([[0.2, 0.6]])).numpy(), [0.4], rtol=1e-6)
    with pytest.raises(ValueError, match="curve must be"):
        curve_auc(torch.ones(3, 1))


def test_insertion_mirrors_deletion_and_endpoints():
    clips, model = make_clips(), LinearModel()
    rel = torch.randn((2, 3, 4, 5, 6), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    k = 10  # divides N = 120, so removing the first n_k equals keeping the last N - n_k
    for kind in ("freeze", "mean", "blur"):
        dele = deletion_curve(model, clips, -rel, steps=k, reference=kind)
        ins = deletion_curve(model, clips, rel, steps=k, reference=kind, insertion=True)
        torch.testing.assert_close(ins, dele.flip(1), rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            target = model(clips).argmax(1)
            clean = torch.softmax(model(clips), 1).gather(1, target[:, None])[:, 0]
            ref = torch.softmax(model(reference(clips, kind)), 1).gather(1, target[:, None])[:, 0]
        torch.testing.assert_close(dele[:, 0].double(), clean, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(dele[:, -1].double(), ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ins[:, 0].double(), ref, rtol=1e-5, atol=1e-7)


class Recording(nn.Module):
    """Keeps every input it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.inner(x)


@pytest.mark.parametrize("insertion", [False, True])
def test_perturbed_inputs_are_exact_copies_of_clip_and_reference(insertion):
    clips = make_clips().float()
    model = Recording(LinearModel().float())
    rel = torch.randn((2, 1, 4, 5, 6), generator=torch.Generator().manual_seed(5))
    deletion_curve(model, clips, rel, steps=3, batch_size=1, insertion=insertion)
    seen = torch.cat(model.seen)  # 2 clean clips, then clip 0 steps, clip 1 steps
    ref = reference(clips, "freeze")
    ranks = relevance_ranks(rel)
    assert torch.equal(seen[:2], clips)
    ks = range(3) if insertion else range(1, 4)
    for b in range(2):
        for row, k in zip(seen[2 + 3 * b : 5 + 3 * b], ks):
            changed = (ranks[b] < (k * 120) // 3).view(1, 4, 5, 6)
            src_changed, src_kept = (clips[b], ref[b]) if insertion else (ref[b], clips[b])
            assert torch.equal(torch.where(changed, row, 0), torch.where(changed, src_changed, 0))
            assert torch.equal(torch.where(changed, 0, row), torch.where(changed, 0, src_kept))


def test_ties_are_ordered_by_flat_index():
    clips, model = make_clips(), LinearModel()
    constant = torch.zeros(2, 1, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(relevance_ranks(constant), torch.arange(120).expand(2, 120))
    descending = -torch.arange(120, dtype=torch.float64).view(1, 1, 4, 5, 6).expand(2, 1, 4, 5, 6)
    torch.testing.assert_close(
        deletion_curve(model, clips, constant, steps=6), deletion_curve(model, clips, descending, steps=6)
    )
    # ties inside one row are broken by flat index even after other voxels: [3, 1, 3, 1, ...]
    rel = torch.tensor([3.0, 1.0] * 60).view(1, 1, 4, 5, 6)
    ranks = relevance_ranks(rel)[0]
    assert ranks[0::2].tolist() == list(range(60)) and ranks[1::2].tolist() == list(range(60, 120))


def test_random_floor_seeded_and_consistent():
    clips, model = make_clips(), LinearModel()
    a = random_curve(model, clips, steps=6, seed=7)
    torch.testing.assert_close(a, random_curve(model, clips, steps=6, seed=7, batch_size=1))
    torch.testing.assert_close(a, random_curve(model, clips, steps=6, generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(a, random_curve(model, clips, steps=6, seed=8))
    ranks = random_ranks(2, 120, seed=7)
    assert all(sorted(row.tolist()) == list(range(120)) for row in ranks)
    as_relevance = -ranks.double().view(2, 1, 4, 5, 6)  # rank 0 is the largest: removed first
    torch.testing.assert_close(a, deletion_curve(model, clips, as_relevance, steps=6))
    ins = random_curve(model, clips, steps=6, seed=7, insertion=True, reference="mean")
    dele = deletion_curve(model, clips, torch.ones(2, 1, 4, 5, 6, dtype=torch.float64), steps=6, reference="mean")
    torch.testing.assert_close(ins[:, -1], dele[:, 0])  # same endpoints as any order
    torch.testing.assert_close(ins[:, 0], dele[:, -1])


def test_per_clip_seeds_make_the_floor_independent_of_batching():
    clips, model = make_clips(), LinearModel()
    both = random_curve(model, clips, steps=5, seed=[7, 8])
    torch.testing.assert_close(both[:1], random_curve(model, clips[:1], steps=5, seed=[7]))
    torch.testing.assert_close(both[1:], random_curve(model, clips[1:], steps=5, seed=torch.tensor([8])))
    torch.testing.assert_close(both[:1], random_curve(model, clips[:1], steps=5, seed=7))
    masks = random_mask((2, 4, 5, 6), 30, seed=[3, 4])
    torch.testing.assert_close(masks[1:], random_mask((1, 4, 5, 6), 30, seed=[4]))
    with pytest.raises(TypeError, match="seed must be an integer or 2 integers"):
        random_curve(model, clips, seed=[1, 2, 3])
    with pytest.raises(TypeError, match="seed must be an integer or 2 integers"):
        random_ranks(2, 10, seed=torch.tensor([1.0, 2.0]))


def test_batch_size_invariance():
    clips, model = make_clips(), LinearModel()
    rel = torch.randn((2, 1, 4, 5, 6), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sel = rel * (rel > 1)
    mask = rel[:, 0] > 0.5
    for kw in ({}, {"insertion": True, "reference": "blur"}, {"reference": "mean"}):
        one = deletion_curve(model, clips, rel, [0, 4], steps=5, batch_size=1, **kw)
        for bs in (2, 7, 100):
            torch.testing.assert_close(deletion_curve(model, clips, rel, [0, 4], steps=5, batch_size=bs, **kw), one)
    drop = freeze_drop(model, clips, mask, batch_size=1)
    rel_drop = motion_reliance(model, clips, batch_size=1)
    matched = matched_budget_drops(model, clips, rel, sel, batch_size=1)
    for bs in (2, 5):
        torch.testing.assert_close(freeze_drop(model, clips, mask, batch_size=bs), drop)
        torch.testing.assert_close(motion_reliance(model, clips, batch_size=bs), rel_drop)
        for key, v in matched_budget_drops(model, clips, rel, sel, batch_size=bs).items():
            torch.testing.assert_close(v, matched[key])


def _score(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), 1).gather(1, target[:, None])[:, 0]


def test_motion_reliance_on_a_model_of_appearance_and_motion():
    clips, model = make_clips(), AppearanceMotionModel()
    target = torch.tensor([2, 4])
    got = motion_reliance(model, clips, target).double()
    s = _score(model, clips, target)
    with torch.no_grad():  # freeze: frame differences vanish, the temporal mean (appearance) stays
        frozen_logits = model.appearance(clips.mean(2).flatten(1))
        channel_means = clips.mean((2, 3, 4))[:, :, None, None].expand(2, 3, 5, 6)
        mean_logits = model.appearance(channel_means.flatten(1))
    s_freeze = torch.softmax(frozen_logits, 1).gather(1, target[:, None])[:, 0]
    s_mean = torch.softmax(mean_logits, 1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(got[:, 0], s - s_freeze, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[:, 2], s - s_mean, rtol=1e-5, atol=1e-6)
    static = clips[:, :, :1].expand(2, 3, 4, 5, 6).contiguous()  # nothing moves: freezing changes nothing
    torch.testing.assert_close(motion_reliance(model, static, target)[:, 0], torch.zeros(2), atol=1e-6, rtol=0)


def test_freeze_drop_of_a_frame_difference_model_reaches_its_static_score():
    clips = make_clips()
    model = AppearanceMotionModel()
    with torch.no_grad():
        model.appearance.weight.zero_()  # only frame differences matter now
    target = torch.tensor([0, 3])
    everything = torch.ones(2, 4, 5, 6, dtype=torch.bool)
    s = _score(model, clips, target)
    static_score = _score(model, torch.zeros_like(clips), target)  # any static clip: logits = bias
    torch.testing.assert_close(
        freeze_drop(model, clips, everything, target).double(), s - static_score, atol=1e-6, rtol=0
    )
    drops = motion_reliance(model, clips, target).double()
    torch.testing.assert_close(drops[:, 0], drops[:, 2], atol=1e-6, rtol=0)  # no appearance to keep


def test_freeze_drop_matches_direct_replacement():
    clips, model = make_clips(), LinearModel()
    mask = torch.rand((2, 1, 4, 5, 6), generator=torch.Generator().manual_seed(9)) < 0.3
    target = torch.tensor([1, 1])
    for kind in ("freeze", "mean", "blur"):
        ref = torch.from_numpy(np.stack([loop_reference(c.numpy(), kind, 1.0) for c in clips]))
        replaced = torch.where(mask, ref, clips)
        want = _score(model, clips, target) - _score(model, replaced, target)
        got = freeze_drop(model, clips, mask, target, reference=kind, blur_sigma=1.0)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    nothing = torch.zeros(2, 4, 5, 6, dtype=torch.bool)
    torch.testing.assert_close(freeze_drop(model, clips, nothing, target), torch.zeros(2), atol=1e-7, rtol=0)


def test_matched_budget_masks_and_drops():
    clips, model = make_clips(), LinearModel()
    rel = torch.randn((2, 3, 4, 5, 6), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    sel = rel * (torch.rand((2, 1, 4, 5, 6), generator=torch.Generator().manual_seed(12)) < 0.2)
    masks = matched_budget_masks(rel, sel, seed=3)
    m = masks["budget"]
    for b in range(2):
        a = rel[b].sum(0).flatten().tolist()
        order = sorted(range(120), key=lambda i: -a[i])
        assert int(m[b]) == int((sel[b].sum(0) != 0).sum())
        assert sorted(masks["baseline"][b].flatten().nonzero()[:, 0].tolist()) == sorted(order[: int(m[b])])
        assert int(masks["random"][b].sum()) == int(m[b])
    torch.testing.assert_close(masks["selective"], kept_voxels(sel))
    torch.testing.assert_close(masks["random"], matched_budget_masks(rel, sel, seed=3)["random"])
    assert not torch.equal(masks["random"], matched_budget_masks(rel, sel, seed=4)["random"])
    torch.testing.assert_close(top_m_mask(rel, m), masks["baseline"])
    torch.testing.assert_close(random_mask((2, 4, 5, 6), m, seed=3), masks["random"])
    drops = matched_budget_drops(model, clips, rel, sel, seed=3)
    for key in ("selective", "baseline", "random"):
        torch.testing.assert_close(drops[key], freeze_drop(model, clips, masks[key]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(drops["budget"], m)


class TwoPathway(nn.Module):
    """A SlowFast-like model taking [slow, fast]; slow = every 2nd frame."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.slow = nn.Linear(3 * 2 * 5 * 6, CLASSES).double()
        self.fast = nn.Linear(3 * 4 * 5 * 6, CLASSES).double()

    def forward(self, pathways: list[torch.Tensor]) -> torch.Tensor:
        slow, fast = pathways
        return self.slow(slow.flatten(1)) + self.fast(fast.flatten(1))


def test_input_builder_perturbs_the_full_rate_clip():
    clips, model = make_clips(), TwoPathway()
    rel = torch.randn((2, 1, 4, 5, 6), generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def pathways(x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, :, ::2], x]

    got = deletion_curve(model, clips, rel, [0, 1], steps=4, input_builder=pathways, batch_size=3)

    class Single(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(pathways(x))

    for b in range(2):
        want = loop_curve(Single(), clips[b], rel[b], b, 4, "freeze", False)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-5, atol=1e-6)
    assert motion_reliance(model, clips, input_builder=pathways).shape == (2, 3)


def test_eval_mode_no_grad_and_training_flags_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(360, 16), nn.Dropout(0.5), nn.Linear(16, CLASSES)).double()
    model.train()
    model[1].eval()  # mixed flags must come back as they were
    clips = make_clips()
    rel = torch.randn((2, 1, 4, 5, 6), dtype=torch.float64)
    a = deletion_curve(model, clips, rel, steps=3)
    torch.testing.assert_close(a, deletion_curve(model, clips, rel, steps=3))  # dropout off: deterministic
    assert not a.requires_grad
    assert [m.training for m in model.modules()] == [True, True, False, True, True]
    with pytest.raises(ValueError, match="target"):
        deletion_curve(model, clips, rel, 99, steps=3)
    assert [m.training for m in model.modules()] == [True, True, False, True, True]


def test_works_with_the_small_c3d():
    from motion_relevance.models import C3D

    torch.manual_seed(0)
    model = C3D(num_classes=8, width=0.125, crop_size=56)
    clips = torch.randn(2, 3, 16, 56, 56)
    rel = torch.randn(2, 3, 16, 56, 56)
    curve = deletion_curve(model, clips, rel, steps=2, batch_size=4)
    assert curve.shape == (2, 3) and bool(((curve >= 0) & (curve <= 1)).all())
    assert model.training  # restored


# --------------------------------------------------------------------------------------------- bad input

_REL = torch.zeros(2, 1, 4, 5, 6, dtype=torch.float64)
_MASK = torch.zeros(2, 4, 5, 6, dtype=torch.bool)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, r"steps=0 out of range: allowed \[1, inf\]"),
        ({"steps": 2.5}, r"steps=2.5: expected an integer in \[1, inf\]"),
        ({"blur_sigma": 0.0}, "blur_sigma must be a positive"),
        ({"blur_sigma": -1.0}, "blur_sigma must be a positive"),
        ({"blur_sigma": float("nan")}, "blur_sigma must be a positive"),
        ({"reference": "zeros"}, r"reference='zeros': allowed values are \['freeze', 'mean', 'blur'\]"),
        ({"batch_size": 0}, r"batch_size=0 out of range: allowed \[1, inf\]"),
        ({"relevance": torch.zeros(2, 1, 3, 5, 6)}, r"relevance must have shape \(2, 1 or 3, 4, 5, 6\)"),
        ({"relevance": torch.zeros(2, 2, 4, 5, 6)}, "relevance must have 1 channel or as many as the clips"),
        ({"relevance": torch.zeros(1, 1, 4, 5, 6)}, "relevance must have shape"),
        ({"relevance": _REL.clone().index_fill_(2, torch.tensor([1]), float("nan"))}, "relevance contains 60 NaN"),
        ({"input_builder": 3}, "input_builder must be None or a callable"),
        ({"target": 2.0}, "target must hold 2 integer class indices"),
    ],
)
def test_bad_input_before_any_forward(kwargs, match):
    model = CountingModel(LinearModel())
    args = {"relevance": _REL, "target": None, **kwargs}
    relevance, target = args.pop("relevance"), args.pop("target")
    with pytest.raises((ValueError, TypeError), match=match):
        deletion_curve(model, make_clips(), relevance, target, **args)
    assert model.calls == 0


@pytest.mark.parametrize("target", [5, -1, [0, 7]])
def test_target_outside_classes_after_the_clean_forward_only(target):
    model = CountingModel(LinearModel())
    with pytest.raises(ValueError, match=r"target: class indices must lie in \[0, 5\)"):
        deletion_curve(model, make_clips(), _REL, target, steps=3, batch_size=8)
    assert model.calls == 1  # the clean pass; no perturbed pass
    model.calls = 0
    with pytest.raises(ValueError, match="target: class indices must lie in"):
        motion_reliance(model, make_clips(), target)
    assert model.calls == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x: freeze_drop(m, x, _MASK[:, :3]), r"mask must have shape \(2, 4, 5, 6\)"),
        (lambda m, x: freeze_drop(m, x, _MASK.float()), "mask must be a bool tensor"),
        (lambda m, x: freeze_drop(m, x, _MASK, reference="noise"), "reference=.*: allowed values are"),
        (lambda m, x: freeze_drop(m, x, _MASK, reference="blur", blur_sigma=0), "blur_sigma must be"),
        (lambda m, x: freeze_drop(m, x, _MASK, batch_size=0), "batch_size=-?[02] out of range"),
        (lambda m, x: motion_reliance(m, x, batch_size=-2), "batch_size=-?[02] out of range"),
        (lambda m, x: random_curve(m, x, steps=0), "steps=0 out of range"),
        (lambda m, x: random_curve(m, x, seed="a"), "seed must be an integer"),
        (lambda m, x: random_curve(m, x, generator=3), "generator must be a torch.Generator"),
        (lambda m, x: random_curve(m, x, reference="x"), "reference=.*: allowed values are"),
        (lambda m, x: matched_budget_drops(m, x, _REL, _REL[:, :, :2]), r"selective must have shape"),
        (lambda m, x: matched_budget_drops(m, x, _REL.clone().fill_(float("nan")), _REL), "relevance contains"),
        (lambda m, x: deletion_curve(m, x[0], _REL), r"clips must have shape \(B, C, T, H, W\)"),
        (lambda m, x: deletion_curve(m, x.clone().fill_(float("inf")), _REL), "clips contains"),
    ],
)
def test_bad_input_of_each_function(call, match):
    model = CountingModel(LinearModel())
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, make_clips())
    assert model.calls == 0


def test_bad_input_of_helpers():
    with pytest.raises(ValueError, match="reference=.*: allowed values are"):
        reference(make_clips(), "grey")
    with pytest.raises(ValueError, match="blur_sigma must be"):
        reference(make_clips(), "blur", blur_sigma=0)
    with pytest.raises(ValueError, match=r"m must be an int or 2 ints in \[0, 120\]"):
        top_m_mask(_REL, 121)
    with pytest.raises(ValueError, match="m must be"):
        random_mask((2, 4, 5, 6), [1, 2, 3])
    with pytest.raises(ValueError, match="model must return logits"):
        deletion_curve(lambda x: x.flatten(1)[:, 0], make_clips(), _REL)


# ------------------------------------------------------------------------------------------ metric classes


def np_stats(v: np.ndarray) -> tuple[float, float, int]:
    return float(v.mean()), float(v.std(ddof=1)), len(v)


def test_faithfulness_curves_metric_vs_numpy():
    g = torch.Generator().manual_seed(0)
    curves = torch.rand(9, 5, generator=g, dtype=torch.float64)
    curves[4, 2] = float("nan")
    metric = DeletionAUC(steps=4)
    for part in curves.split(4):
        metric.update(part)
    out = metric.compute()
    c = curves.numpy()
    auc = np.array([np.trapezoid(r, x=np.linspace(0, 1, 5)) for r in c])
    ok = np.isfinite(auc)
    mean, std, n = np_stats(auc[ok])
    assert math.isclose(out["auc_mean"].item(), mean, rel_tol=1e-12) and math.isclose(out["auc_std"].item(), std)
    assert out["auc_n"].item() == n == 8 and out["auc_n_undefined"].item() == 1
    col_ok = np.isfinite(c)
    for k in range(5):
        v = c[col_ok[:, k], k]
        assert math.isclose(out["curve_mean"][k].item(), v.mean(), rel_tol=1e-12)
        assert math.isclose(out["curve_std"][k].item(), v.std(ddof=1), rel_tol=1e-9)
        assert out["curve_n"][k].item() == len(v)
    assert DeletionAUC.higher_is_better is False and InsertionAUC.higher_is_better is True
    with pytest.raises(ValueError, match=r"curve must have shape \(B, steps \+ 1\) = \(B, 5\)"):
        metric.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="steps=0 out of range"):
        FaithfulnessCurves(steps=0)
    metric.reset()
    with pytest.warns(UserWarning, match="compute"):
        assert math.isnan(metric.compute()["auc_mean"].item())
    one = FaithfulnessCurves(steps=4)
    one.update(curves[:1])
    assert math.isnan(one.compute()["auc_std"].item()) and one.compute()["auc_n"].item() == 1


def test_freeze_drop_metric_vs_numpy():
    g = torch.Generator().manual_seed(1)
    sel, base, rnd = (torch.rand(10, generator=g, dtype=torch.float64) for _ in range(3))
    budget = torch.tensor([5, 0, 3, 8, 0, 1, 2, 9, 4, 6])
    metric = FreezeDrop()
    metric.update(sel[:6], base[:6], rnd[:6], budget[:6])
    metric.update(sel[6:], base[6:], rnd[6:], budget[6:])
    out = metric.compute()
    ok = (budget > 0).numpy()
    for key, v in (
        ("selective", sel),
        ("baseline", base),
        ("random", rnd),
        ("selective_minus_baseline", sel - base),
        ("selective_minus_random", sel - rnd),
    ):
        mean, std, n = np_stats(v.numpy()[ok])
        assert math.isclose(out[f"{key}_mean"].item(), mean, rel_tol=1e-12), key
        assert math.isclose(out[f"{key}_std"].item(), std, rel_tol=1e-9), key
        assert out[f"{key}_n"].item() == n == 8 and out[f"{key}_n_undefined"].item() == 2
    assert math.isclose(out["budget_mean"].item(), budget.double().mean().item()) and out["budget_n"].item() == 10
    with pytest.raises(ValueError, match="drops must have one shape"):
        metric.update(sel, base[:3], rnd)
    with pytest.raises(ValueError, match="budget must have shape"):
        metric.update(sel, base, rnd, budget[:3])


def test_motion_reliance_metric_share_of_clipped_sums():
    g = torch.Generator().manual_seed(2)
    drops = torch.rand(12, 3, generator=g, dtype=torch.float64)
    drops[:, 1] -= 0.2
    drops[3, 0] = float("nan")
    metric = MotionReliance()
    metric.update(drops[:5])
    metric.update(drops[5:])
    out = metric.compute()
    d = drops.numpy()
    paired = np.clip(d[np.isfinite(d[:, :2]).all(1), :2], 0, None)
    f, a = paired[:, 0], paired[:, 1]
    assert math.isclose(out["share"].item(), f.sum() / (f + a).sum(), rel_tol=1e-12)
    assert 0 <= out["share_lo"].item() <= out["share"].item() <= out["share_hi"].item() <= 1
    assert out["share_n"].item() == int(((f + a) > 0).sum())
    assert out["freeze_drop_n"].item() == 11 and out["freeze_drop_n_undefined"].item() == 1
    assert out["mean_drop_n"].item() == 12
    assert math.isclose(out["mean_drop_mean"].item(), d[:, 2].mean(), rel_tol=1e-12)
    neg = MotionReliance()
    neg.update(torch.tensor([[-0.1, -0.2, 0.3], [-0.1, 0.0, 0.1]], dtype=torch.float64))
    assert math.isnan(neg.compute()["share"].item())  # the model loses nothing either way
    with pytest.raises(ValueError, match=r"drops must have shape \(B, 3\)"):
        metric.update(drops[:, 0])


def test_metrics_fed_by_the_functions():
    clips, model = make_clips(), AppearanceMotionModel()
    rel = torch.randn((2, 3, 4, 5, 6), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sel = rel * (rel.abs() > 1.5)
    curves = FaithfulnessCurves(steps=4)
    curves.update(deletion_curve(model, clips, rel, steps=4))
    freeze = FreezeDrop()
    freeze.update(**matched_budget_drops(model, clips, rel, sel))
    reliance = MotionReliance()
    reliance.update(motion_reliance(model, clips))
    assert curves.compute()["auc_n"].item() == 2
    assert freeze.compute()["selective_n"].item() == 2
    assert torch.isfinite(reliance.compute()["freeze_drop_mean"])
