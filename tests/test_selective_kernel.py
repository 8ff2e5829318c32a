"""The compiled CPU kernel of selective relevance: built, loaded, and equal to the tensor-op implementation.

Both implementations are also checked against the numpy reference of SPEC §1 in test_selective.py.
"""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from motion_relevance.explain import _selective_kernel, selective
from motion_relevance.explain.selective import selective_mask, selective_relevance, temporal_gradient
from tests.test_selective import structured


def test_compiled_kernel_is_built() -> None:
    """`make install` builds the CPU kernel wherever a C++ compiler exists (setup.py): CI must not silently test
    and benchmark the fallback only."""
    if sys.platform != "linux" or (shutil.which("c++") is None and shutil.which("g++") is None):
        pytest.skip("only Linux with a C++ compiler is sure to have OpenMP; elsewhere the tensor-op path may run")
    assert _selective_kernel.library() is not None, "reinstall with a C++ compiler: pip install -e ."


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("shape", [(1, 3, 16, 20, 24), (3, 2, 7, 9, 5), (2, 1, 1, 4, 4), (1, 3, 2, 1, 6)])
def test_kernel_agrees_with_tensor_ops_for_any_thread_count(shape: tuple[int, ...], threads: int) -> None:
    """The kernel splits clips into frame ranges per thread; the result must not depend on the split. float64
    on integer data is exact in both implementations; float32 agrees to rounding."""
    if _selective_kernel.library() is None:
        pytest.skip("the compiled CPU kernel is not built in this install (see test_compiled_kernel_is_built)")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        exact = torch.from_numpy(structured(shape, seed=threads))
        noisy = torch.randn(shape, generator=torch.Generator().manual_seed(threads))
        for padding in ("replicate", "zeros"):
            got = (temporal_gradient(exact, padding=padding), selective_relevance(exact, [0.5, 2.0], padding=padding))
            g32 = temporal_gradient(noisy, padding=padding)
            m32 = selective_mask(noisy, 1.0, padding=padding)
            with selective.tensor_ops():
                want = (
                    temporal_gradient(exact, padding=padding),
                    selective_relevance(exact, [0.5, 2.0], padding=padding),
                )
                g32_want = temporal_gradient(noisy, padding=padding)
                m32_want = selective_mask(noisy, 1.0, padding=padding)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            torch.testing.assert_close(g32, g32_want, rtol=1e-6, atol=1e-5)
            assert (m32 != m32_want).float().mean() < 1e-3
    finally:
        torch.set_num_threads(before)


@pytest.mark.gpu
def test_cuda_path_matches_cpu() -> None:
    """On a CUDA device (one padded conv3d, thresholds on the device, one deferred finiteness check): the same
    results as the CPU, exactly on float64 integer data; NaN still raises; constant relevance gives zeros."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    exact = torch.from_numpy(structured((3, 3, 9, 12, 10), seed=4))
    for padding in ("replicate", "zeros"):
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
