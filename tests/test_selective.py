"""Selective relevance (SPEC §1) against an independent numpy/scipy implementation of the specification."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from motion_relevance.explain import _selective_kernel, selective
from motion_relevance.explain.selective import selective_mask, selective_relevance, temporal_gradient


@pytest.fixture(params=["kernel", "tensor_ops"], autouse=True)
def cpu_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both CPU implementations: the compiled kernel and the tensor-op one."""
    if request.param == "tensor_ops":
        with selective.tensor_ops():
            yield request.param
        return
    if _selective_kernel.library() is None:
        pytest.skip("the compiled CPU kernel is not built in this install (see test_compiled_kernel_is_built)")
    yield request.param


_B = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64)
#: the 3x3x3 Sobel kernel of SPEC §1, index 0 = t-1
SOBEL_T = np.stack([_B, np.zeros((3, 3)), -_B])


def reference(relevance: np.ndarray, sigma: float, padding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SPEC §1 written literally: channel sum, 3-D correlation with the kernel, |.|, per-clip threshold."""
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
    monkeypatch.setattr(selective, "_use_kernel", lambda relevance: False)
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


def test_chunked_batches_equal_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    rel = torch.randn(5, 3, 6, 10, 12)
    whole = selective_relevance(rel, [1.0, 2.0])
    g_whole = temporal_gradient(rel)
    monkeypatch.setattr(selective, "_CHUNK_VOXELS", 2 * 6 * 12 * 14)  # two clips per chunk
    monkeypatch.setattr(selective, "_KERNEL_CHUNK_VOXELS", 2 * 6 * 10 * 12)
    torch.testing.assert_close(selective_relevance(rel, [1.0, 2.0]), whole, rtol=0, atol=0)
    torch.testing.assert_close(temporal_gradient(rel), g_whole, rtol=0, atol=0)


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


def test_non_contiguous_input(cpu_backend: str) -> None:
    base = torch.from_numpy(structured((2, 3, 6, 9, 8), seed=11))
    view = base.transpose(3, 4)  # (2, 3, 6, 8, 9), not contiguous
    assert not view.is_contiguous()
    torch.testing.assert_close(
        selective_relevance(view, 1.0), selective_relevance(view.contiguous(), 1.0), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_runs_and_agrees_with_float32(dtype: torch.dtype) -> None:
    """Half precision (no compiled kernel: the tensor-op path) keeps its dtype and the float32 mask to rounding."""
    rel = torch.randn(2, 3, 8, 20, 20, generator=torch.Generator().manual_seed(5))
    out = selective_relevance(rel.to(dtype), [1.0, 2.0])
    assert out.dtype == dtype and out.shape == (2, *rel.shape)
    agree = (selective_mask(rel.to(dtype), 1.0) == selective_mask(rel, 1.0)).float().mean()
    assert agree > 0.99


@pytest.mark.parametrize("padding", ["replicate", "zeros"])
def test_a_voxel_exactly_at_the_threshold_is_not_kept(padding: str) -> None:
    """SPEC §1 keeps G > sigma * std strictly. S = [-1, 5, -4] on 1x1 frames: with replicate padding G = 16 * [6, 3, 9]
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
