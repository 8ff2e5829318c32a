"""Selective relevance (docs/method.md, "Selective relevance") against an independent numpy/scipy transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from motion_relevance.explain import selective
from motion_relevance.explain.selective import (
    PADDINGS,
    SigmaTypeError,
    check_padding,
    check_sigma,
    selective_mask,
    selective_relevance,
    temporal_gradient,
)

_B = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64)
#: the 3x3x3 Sobel kernel h_t, index 0 = t-1
SOBEL_T = np.stack([_B, np.zeros((3, 3)), -_B])


def reference(relevance: np.ndarray, sigma: float, padding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The method written literally: channel sum, 3-D correlation with the kernel, |.|, per-clip threshold."""
    from scipy.ndimage import correlate  # here, so that other test modules can import `structured` without scipy

    mode = {"zeros": "constant", "replicate": "nearest"}[padding]
    s = relevance.sum(axis=1)
    g = np.stack([np.abs(correlate(clip, SOBEL_T, mode=mode, cval=0.0)) for clip in s])
    masks = []
    for clip in g:
        if clip.size > 1 and clip.max() > clip.min():
            masks.append(clip > sigma * clip.std(ddof=1))
        else:
            masks.append(np.zeros_like(clip, dtype=bool))
    mask = np.stack(masks)[:, None]
    return g[:, None], relevance * mask, mask


def structured(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Integer-valued relevance with smooth and sparse parts (exact in float64, so masks compare exactly)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-4, 5, size=shape).astype(np.float64)
    values[rng.random(shape) < 0.5] = 0.0
    return values + np.round(8 * np.sin(np.arange(shape[-1]) / 3.0))


SHAPES = [(2, 3, 8, 12, 10), (1, 1, 1, 5, 7), (3, 3, 2, 3, 3), (1, 1, 3, 1, 1), (2, 2, 5, 1, 9), (1, 3, 7, 9, 11)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_matches_reference_exactly_in_float64(shape: tuple[int, ...], padding: str) -> None:
    r = structured(shape, seed=sum(shape))
    for sigma in (0.0, 1.0, 2.5, 4.0):
        g_ref, sel_ref, mask_ref = reference(r, sigma, padding)
        rel = torch.from_numpy(r)
        np.testing.assert_array_equal(temporal_gradient(rel, padding=padding).numpy(), g_ref)
        np.testing.assert_array_equal(selective_relevance(rel, sigma, padding=padding).numpy(), sel_ref)
        np.testing.assert_array_equal(selective_mask(rel, sigma, padding=padding).numpy(), mask_ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_accelerator_conv_path_matches_reference(
    shape: tuple[int, ...], padding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conv3d path used on GPUs (forced here on the CPU) computes the same G and masks."""
    monkeypatch.setattr(selective, "_use_conv", lambda device: True)
    r = structured(shape, seed=sum(shape) + 1)
    for sigma in (0.0, 2.5):
        g_ref, sel_ref, mask_ref = reference(r, sigma, padding)
        rel = torch.from_numpy(r)
        np.testing.assert_array_equal(temporal_gradient(rel, padding=padding).numpy(), g_ref)
        np.testing.assert_array_equal(selective_relevance(rel, sigma, padding=padding).numpy(), sel_ref)
        np.testing.assert_array_equal(selective_mask(rel, sigma, padding=padding).numpy(), mask_ref)
    if shape[2] > 1:
        rel = torch.from_numpy(r).clone()
        rel.view(-1)[rel.numel() // 2] = math.nan
        with pytest.raises(ValueError, match="NaN or Inf"):
            selective_relevance(rel, 2.0, padding=padding)


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_float32_close_to_reference(padding: str) -> None:
    r = np.random.default_rng(1).standard_normal((2, 3, 16, 24, 20)).astype(np.float32)
    g_ref, sel_ref, _ = reference(r.astype(np.float64), 2.0, padding)
    g = temporal_gradient(torch.from_numpy(r), padding=padding).numpy()
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)
    sel = selective_relevance(torch.from_numpy(r), 2.0, padding=padding).numpy()
    assert np.mean((sel != 0) == (sel_ref != 0)) > 0.999  # only voxels within rounding of the threshold


def test_sigma_sequence_adds_leading_dim_and_matches_single_calls() -> None:
    rel = torch.from_numpy(structured((2, 3, 6, 8, 8), seed=3))
    many = selective_relevance(rel, [0.5, 1.0, 3.0])
    assert many.shape == (3, *rel.shape)
    for i, sigma in enumerate([0.5, 1.0, 3.0]):
        torch.testing.assert_close(many[i], selective_relevance(rel, sigma), rtol=0, atol=0)
    assert selective_mask(rel, (1.0, 2.0)).shape == (2, 2, 1, 6, 8, 8)
    assert selective_relevance(rel, torch.tensor([1.0, 2.0])).shape == (2, *rel.shape)


def test_batch_equals_clip_by_clip() -> None:
    """Statistics are per clip: a batch gives what its clips give one at a time (one clip scaled by 100, so a
    batch-wide std would change the others' masks)."""
    rel = torch.randn(5, 3, 6, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    rel[2] *= 100.0
    whole = selective_relevance(rel, [1.0, 2.0])
    g_whole = temporal_gradient(rel)
    split = torch.cat([selective_relevance(rel[i : i + 1], [1.0, 2.0]) for i in range(5)], dim=1)
    torch.testing.assert_close(split, whole, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.cat([temporal_gradient(rel[i : i + 1]) for i in range(5)]), g_whole, rtol=0, atol=0
    )


def test_static_relevance_is_not_motion_with_replicate_padding() -> None:
    frame = torch.randn(1, 3, 1, 16, 16)
    static = frame.expand(-1, -1, 8, -1, -1).contiguous()
    assert torch.count_nonzero(temporal_gradient(static, padding="replicate")) == 0
    assert torch.count_nonzero(selective_relevance(static, 1.0)) == 0
    # the authors' zero padding sees "motion" at the first and last frame only
    g = temporal_gradient(static, padding="zeros")
    assert torch.count_nonzero(g[:, :, 1:-1]) == 0 and torch.count_nonzero(g[:, :, [0, -1]]) > 0


def test_mask_follows_a_moving_blob() -> None:
    t, size = 10, 32
    rel = torch.zeros(1, 1, t, size, size)
    rel[0, 0, :, 4:10, 4:10] = 1.0  # static square: not motion
    for k in range(t):
        rel[0, 0, k, 20:24, 2 + 2 * k : 6 + 2 * k] = 1.0  # blob moving right, 2 px per frame
    mask = selective_mask(rel, 1.0)[0, 0]
    assert not mask[:, 4:10, 4:10].any()
    for k in range(1, t - 1):
        cols = mask[k].any(dim=0).nonzero().flatten()
        assert cols.numel() > 0
        # the mask sits at the blob's leading and trailing edges, which move with it
        assert cols.min() >= 2 * k - 2 and cols.max() <= 2 * k + 8
    assert (selective_relevance(rel, 1.0)[0, 0][~mask] == 0).all()


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_constant_and_zero_relevance_give_zeros_without_nan(padding: str) -> None:
    cases = [torch.zeros(2, 3, 4, 5, 5), torch.ones(1, 1, 1, 1, 1)]
    if padding == "replicate":  # zero padding turns the borders of a constant map into edges
        cases.append(torch.full((2, 1, 4, 5, 5), 3.0))
    for rel in cases:
        out = selective_relevance(rel, 0.0, padding=padding)
        assert torch.isfinite(out).all() and torch.count_nonzero(out) == 0
    # a constant but non-zero G (1x1 frames, T=2, zero padding: G = 4|S[1]| = 4|S[0]|) is still "no motion"
    rel = torch.tensor([1.0, -1.0]).view(1, 1, 2, 1, 1)
    g = temporal_gradient(rel, padding="zeros")
    assert torch.equal(g.flatten(), torch.tensor([4.0, 4.0]))
    assert torch.count_nonzero(selective_relevance(rel, 0.0, padding="zeros")) == 0


def test_output_dtype_device_and_input_untouched() -> None:
    rel = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    before = rel.clone()
    out = selective_relevance(rel)
    assert out.dtype == torch.float64 and out.shape == rel.shape
    assert torch.equal(rel, before)
    assert selective_relevance(rel.half().float()).dtype == torch.float32


def test_bad_inputs_raise_clear_errors() -> None:
    rel = torch.randn(1, 3, 4, 5, 5)
    with pytest.raises(ValueError, match="shape"):
        selective_relevance(rel[0])
    with pytest.raises(TypeError, match="floating"):
        selective_relevance(rel.long())
    with pytest.raises(TypeError, match="Tensor"):
        selective_relevance(rel.numpy())  # type: ignore[arg-type]
    for sigma in (-1.0, math.nan, [1.0, -0.5]):
        with pytest.raises(ValueError, match="sigma"):
            selective_relevance(rel, sigma)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sigma"):
        selective_relevance(rel, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="padding"):
        selective_relevance(rel, padding="reflect")
    for bad in (math.nan, math.inf):
        broken = rel.clone()
        broken[0, 1, 2, 3, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            selective_relevance(broken)
        with pytest.raises(ValueError, match="NaN or Inf"):
            selective_relevance(broken[:, :, 2:3], padding="zeros")


def test_non_contiguous_input() -> None:
    base = torch.from_numpy(structured((2, 3, 6, 9, 8), seed=11))
    view = base.transpose(3, 4)  # (2, 3, 6, 8, 9), not contiguous
    assert not view.is_contiguous()
    torch.testing.assert_close(
        selective_relevance(view, 1.0), selective_relevance(view.contiguous(), 1.0), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_runs_and_agrees_with_float32(dtype: torch.dtype) -> None:
    """Half precision keeps its dtype and the float32 mask to rounding."""
    rel = torch.randn(2, 3, 8, 20, 20, generator=torch.Generator().manual_seed(5))
    out = selective_relevance(rel.to(dtype), [1.0, 2.0])
    assert out.dtype == dtype and out.shape == (2, *rel.shape)
    agree = (selective_mask(rel.to(dtype), 1.0) == selective_mask(rel, 1.0)).float().mean()
    assert agree > 0.99


@pytest.mark.parametrize("padding", ["replicate", "zeros"])
def test_a_voxel_exactly_at_the_threshold_is_not_kept(padding: str) -> None:
    """The mask keeps G > sigma * std strictly. S = [-1, 5, -4] on 1x1 frames: with replicate padding G = 16 * [6, 3, 9]
    = [96, 48, 144], std = 48 exactly, so at sigma = 1 the middle frame sits on the threshold. Every path must
    round the std as sqrt(m2 / (n - 1)) (exact here), not as norm / sqrt(n - 1) (one ulp low)."""
    rel = torch.tensor([-1.0, 5.0, -4.0], dtype=torch.float64).view(1, 1, 3, 1, 1)
    _, sel_ref, mask_ref = reference(rel.numpy(), 1.0, padding)
    np.testing.assert_array_equal(selective_mask(rel, 1.0, padding=padding).numpy(), mask_ref)
    np.testing.assert_array_equal(selective_relevance(rel, 1.0, padding=padding).numpy(), sel_ref)
    if padding == "replicate":
        assert mask_ref.ravel().tolist() == [True, False, True]


def test_temporal_gradient_carries_nan_and_large_finite_values_pass() -> None:
    """temporal_gradient returns G with NaN where the relevance has NaN (it does not judge, on any path); a float32
    relevance with huge but finite values (sums of a row overflow float32) is still accepted."""
    rel = torch.randn(1, 3, 6, 8, 8)
    rel[0, 1, 2, 3, 3] = math.nan
    g = temporal_gradient(rel)
    assert torch.isnan(g).any() and torch.isfinite(g[:, :, 5]).all()
    huge = torch.randn(1, 1, 4, 8, 112, generator=torch.Generator().manual_seed(2)) * 1e36
    out = selective_relevance(huge, 1.0)
    assert torch.isfinite(out).all() and torch.count_nonzero(out) > 0


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(1, 3, 16, 20, 24), (3, 2, 7, 9, 5), (2, 1, 1, 4, 4), (1, 3, 2, 1, 6)])
def test_any_thread_count_matches_reference(shape: tuple[int, ...], threads: int) -> None:
    """Torch splits reductions across threads; float64 on integer data stays exact for any split, float32 agrees
    with the default thread count to rounding."""
    before = torch.get_num_threads()
    exact = structured(shape, seed=threads)
    noisy = torch.randn(shape, generator=torch.Generator().manual_seed(threads))
    want32 = (temporal_gradient(noisy), selective_mask(noisy, 1.0))
    torch.set_num_threads(threads)
    try:
        for padding in PADDINGS:
            g_ref, sel_ref, _ = reference(exact, 2.0, padding)
            np.testing.assert_array_equal(temporal_gradient(torch.from_numpy(exact), padding=padding).numpy(), g_ref)
            np.testing.assert_array_equal(
                selective_relevance(torch.from_numpy(exact), 2.0, padding=padding).numpy(), sel_ref
            )
        torch.testing.assert_close(temporal_gradient(noisy), want32[0], rtol=1e-6, atol=1e-5)
        assert (selective_mask(noisy, 1.0) != want32[1]).float().mean() < 1e-3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("conv", [False, True])
def test_non_finite_relevance_names_the_clip(conv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN/Inf raise ValueError naming the first bad clip, on the CPU path and the accelerator (conv3d) path, for
    T = 1 with zero padding (where G ignores R) too; later clips are not blamed for it."""
    monkeypatch.setattr(selective, "_use_conv", lambda device: conv)
    for t, padding in ((6, "replicate"), (6, "zeros"), (1, "replicate"), (1, "zeros")):
        for bad in (math.nan, math.inf, -math.inf):
            rel = torch.randn(3, 3, t, 8, 8)
            rel[1, 2, t // 2, 4, 4] = bad
            rel[2, 0, 0, 0, 0] = bad
            with pytest.raises(ValueError, match="clip 1 contains NaN or Inf"):
                selective_relevance(rel, [1.0, 2.0], padding=padding)
            with pytest.raises(ValueError, match="clip 1 contains NaN or Inf"):
                selective_mask(rel, 2.0, padding=padding)


@pytest.mark.parametrize("conv", [False, True])
def test_huge_finite_float32_does_not_overflow_the_statistics(conv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """G**2 overflows float32 for |R| ~ 1e36 (G itself fits): the std is then taken in float64, and the mask is the
    one of the same relevance in float64."""
    monkeypatch.setattr(selective, "_use_conv", lambda device: conv)
    huge = torch.randn(2, 3, 5, 9, 11, generator=torch.Generator().manual_seed(8)) * 1e36
    assert torch.isinf(temporal_gradient(huge).square()).any() and torch.isfinite(temporal_gradient(huge)).all()
    mask = selective_mask(huge, [0.5, 1.0])
    agree = (mask == selective_mask(huge.double(), [0.5, 1.0])).float().mean()
    assert agree > 0.999 and mask.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    """Half-precision relevance whose G exceeds the dtype's range (float16: 65504) still gets its mask: G and its
    statistics are taken in float32, and the mask is the float32 one of the same (rounded) values."""
    rel = (torch.randn(1, 3, 6, 10, 10, generator=torch.Generator().manual_seed(6)) * 1e4).to(dtype)
    wide = rel.float()
    assert torch.isfinite(wide).all() and temporal_gradient(wide).max() > torch.finfo(torch.float16).max
    assert torch.equal(selective_mask(rel, [1.0, 2.0]), selective_mask(wide, [1.0, 2.0]))
    out = selective_relevance(rel, 1.0)
    assert out.dtype == dtype and torch.equal(out, (wide * selective_mask(wide, 1.0)).to(dtype))
    assert temporal_gradient(rel).dtype == dtype


def test_constant_gradient_gives_an_all_zero_mask_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """A constant G whose float32 mean rounds away from the constant is still no motion, even at sigma = 0 (T = 2
    with replicate padding: G[0] = G[1] = 16 |S[0] - S[1]| everywhere); on the conv3d path as well."""
    rel = torch.empty(2, 3, 2, 12, 12)
    rel[:, :, 0], rel[:, :, 1] = 0.1, 0.2 / 3
    for conv in (False, True):
        monkeypatch.setattr(selective, "_use_conv", lambda device, conv=conv: conv)
        g = temporal_gradient(rel)
        assert g.max() == g.min() > 0 and g.mean() != g.max()  # the mean alone would see a tiny spread
        assert not selective_mask(rel, [0.0, 1.0]).any()
        assert torch.count_nonzero(selective_relevance(rel, 0.0)) == 0


def test_check_sigma_accepts_numbers_sequences_and_configs() -> None:
    assert check_sigma(4) == [4.0] and check_sigma(0.0) == [0.0] and check_sigma(np.float32(2.5)) == [2.5]
    assert check_sigma((1, 2.5)) == [1.0, 2.5] and check_sigma(torch.tensor([1.0, 3.0])) == [1.0, 3.0]
    assert check_sigma(OmegaConf.create({"s": [1, 2.5]}).s) == [1.0, 2.5]
    assert check_sigma(math.inf) == [math.inf]  # a valid, if useless, threshold: an all-zero mask


@pytest.mark.parametrize("bad", [-1.0, math.nan, [1.0, -0.5], [1.0, math.nan], [], ()])
def test_check_sigma_refuses_bad_values_naming_the_key(bad: object) -> None:
    with pytest.raises(ValueError, match=r"selective\.sigma must be a non-negative number") as err:
        check_sigma(bad)  # type: ignore[arg-type]
    assert not isinstance(err.value, TypeError)


@pytest.mark.parametrize("bad", ["4", "abc", True, None, [1.0, "2"], [1.0, [2.0]]])
def test_check_sigma_refuses_non_numbers_as_type_and_value_error(bad: object) -> None:
    """A non-number is a TypeError for code and a ValueError for config validation: one exception serves both."""
    with pytest.raises(SigmaTypeError, match=r"selective\.sigma must be a non-negative number") as err:
        check_sigma(bad)  # type: ignore[arg-type]
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)


def test_check_padding() -> None:
    assert PADDINGS == ("replicate", "zeros")
    assert [check_padding(p) for p in PADDINGS] == list(PADDINGS)
    with pytest.raises(ValueError, match=r"selective\.padding must be one of \('replicate', 'zeros'\), got 'reflect'"):
        check_padding("reflect")


def test_empty_relevance_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        selective_relevance(torch.zeros(0, 3, 4, 5, 5))
    with pytest.raises(ValueError, match="empty"):
        temporal_gradient(torch.zeros(1, 3, 0, 5, 5))


@pytest.mark.gpu
def test_cuda_path_matches_cpu() -> None:
    """On a CUDA device (one padded conv3d, statistics on the device): the same results as the CPU, exactly on
    float64 integer data; NaN still raises naming the clip; constant relevance gives zeros."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    exact = torch.from_numpy(structured((3, 3, 9, 12, 10), seed=4))
    for padding in PADDINGS:
        want = (temporal_gradient(exact, padding=padding), selective_relevance(exact, [0.0, 1.0, 2.5], padding=padding))
        got = (
            temporal_gradient(exact.cuda(), padding=padding),
            selective_relevance(exact.cuda(), [0.0, 1.0, 2.5], padding=padding),
        )
        torch.testing.assert_close(tuple(x.cpu() for x in got), want, rtol=0, atol=0)
        noisy = torch.randn(4, 3, 16, 56, 56)
        agree = selective_mask(noisy.cuda(), 2.0, padding=padding).cpu() == selective_mask(noisy, 2.0, padding=padding)
        assert agree.float().mean() > 0.9999
    broken = torch.randn(2, 3, 6, 8, 8, device="cuda")
    broken[1, 0, 3, 4, 4] = float("nan")
    with pytest.raises(ValueError, match="clip 1 contains NaN or Inf"):
        selective_relevance(broken, 2.0)
    assert torch.count_nonzero(selective_relevance(torch.ones(2, 3, 6, 8, 8, device="cuda"), 0.0)) == 0
