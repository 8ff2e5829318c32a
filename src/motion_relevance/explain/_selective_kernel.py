"""ctypes bindings of the fused CPU kernels of selective relevance (``_selective_cpu.cpp``).

``setup.py`` compiles the kernels at install time into ``_selective_cpu*.so`` (a generic copy and, on x86-64,
an AVX2 copy); :func:`library` loads the best one for this CPU once, or returns ``None`` when none was built
(no C++ compiler at install), in which case :mod:`.selective` uses its tensor-op implementation. Nothing is
compiled at import or first use. The kernels run on PyTorch's OpenMP thread pool with
``torch.get_num_threads()`` threads and release the GIL (ctypes does) while they run.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging

import torch
from torch import Tensor

__all__ = ["KERNEL_DTYPES", "STATS_PER_CLIP", "gradient_stats", "library", "scratch_size", "selective", "variant"]

log = logging.getLogger(__name__)

#: dtypes the kernels are compiled for
KERNEL_DTYPES = (torch.float32, torch.float64)
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_PTR, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _variants() -> list[str]:
    """Library names to try, best first: the AVX2 build only where PyTorch reports AVX2 or better."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # old torch: stay with the generic build
        capability = "DEFAULT"
    generic = ["_selective_cpu"]
    return ["_selective_cpu_avx2", *generic] if capability in ("AVX2", "AVX512") else generic


#: The C interface this module speaks (``mr_abi_version`` of the library must match: a stale build is refused).
ABI_VERSION = 1


def _declare(lib: ctypes.CDLL) -> None:
    lib.mr_abi_version.argtypes = []
    lib.mr_abi_version.restype = _I64
    if lib.mr_abi_version() != ABI_VERSION:
        raise AttributeError(
            f"interface version {lib.mr_abi_version()}, expected {ABI_VERSION} (a stale build: pip install -e .)"
        )
    lib.mr_scratch_per_thread.argtypes = [_I64, _I64]
    lib.mr_scratch_per_thread.restype = _I64
    for suffix in _SUFFIX.values():
        grad = getattr(lib, f"mr_gradient_{suffix}")
        grad.argtypes = [_PTR, _I64, _I64, _I64, _I64, _I64, _INT, _PTR, _PTR, _PTR, _PTR, _INT]
        grad.restype = None
        fused = getattr(lib, f"mr_selective_{suffix}")
        fused.argtypes = [_PTR, _I64, _I64, _I64, _I64, _I64, _INT, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _INT]
        fused.restype = _I64


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels for this CPU, or ``None`` (logged once) when the package was installed without them."""
    for name in _variants():
        spec = importlib.util.find_spec(f"motion_relevance.explain.{name}")
        if spec is None or spec.origin is None:
            continue
        try:
            lib = ctypes.CDLL(spec.origin)
            _declare(lib)
            lib.mr_variant = name  # which build was loaded, for benchmark reports
        except (OSError, AttributeError) as err:
            log.warning(
                "selective relevance: cannot load the CPU kernel %s (%s); trying the next one", spec.origin, err
            )
            continue
        _warn_if_two_openmp_runtimes()
        return lib
    log.info(
        "selective relevance: no compiled CPU kernel in this install; using the tensor-op implementation "
        "(same results, slower on CPU). Reinstall with a C++ compiler to build it: pip install -e ."
    )
    return None


def variant() -> str | None:
    """Name of the loaded kernel build (``_selective_cpu_avx2`` or ``_selective_cpu``), or ``None``."""
    lib = library()
    return None if lib is None else lib.mr_variant


def _warn_if_two_openmp_runtimes() -> None:
    """The kernel links ``libgomp.so.1``; with PyTorch's own ``libgomp.so.1`` already loaded the loader reuses it
    (one thread pool). A PyTorch built with another OpenMP (renamed libgomp, LLVM libomp, Intel iomp) would leave
    two pools competing for the cores: correct results, slower. Linux only (reads /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            runtimes = {line.split()[-1] for line in maps if any(k in line for k in ("libgomp", "libomp", "libiomp"))}
    except OSError:
        return
    if len(runtimes) > 1:
        log.warning(
            "selective relevance: two OpenMP runtimes are loaded (%s); the CPU kernel and PyTorch then use separate "
            "thread pools, which may oversubscribe the cores",
            ", ".join(sorted(runtimes)),
        )


#: Per-clip statistics the gradient kernel returns: mean of G, sum of squared deviations, min, max.
STATS_PER_CLIP = 4


def gradient_stats(relevance: Tensor, out: Tensor, replicate: bool, scratch: Tensor) -> list[float]:
    """``G`` of SPEC §1 for a C-contiguous CPU chunk ``relevance`` ``(b, C, T, H, W)`` into ``out`` (``b*T*H*W``
    contiguous elements, same dtype), and per clip ``[mean, m2, min, max]`` of ``G`` (flattened list), taken in
    double precision. ``scratch`` must hold ``scratch_size(H, W)`` elements of the dtype."""
    lib = library()
    assert lib is not None
    nb, channels, frames, h, w = relevance.shape
    stats = (ctypes.c_double * (STATS_PER_CLIP * nb))()
    plane_stats = (ctypes.c_double * (STATS_PER_CLIP * nb * frames))()
    getattr(lib, f"mr_gradient_{_SUFFIX[relevance.dtype]}")(
        relevance.data_ptr(), nb, channels, frames, h, w, int(replicate), out.data_ptr(),
        stats, plane_stats, scratch.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return list(stats)


def scratch_size(h: int, w: int) -> int:
    """Scratch elements :func:`gradient_stats` needs for frames of ``h x w`` with the current thread count."""
    lib = library()
    assert lib is not None
    return int(lib.mr_scratch_per_thread(h, w)) * torch.get_num_threads()


def selective(
    relevance: Tensor, sigmas: list[float], replicate: bool, out: Tensor, g_clip: Tensor, scratch: Tensor
) -> int:
    """Selective relevance of a C-contiguous CPU batch ``relevance`` ``(B, C, T, H, W)`` for every sigma into
    ``out`` ``(S, B, C, T, H, W)`` (C-contiguous, same dtype) in one call. ``g_clip`` holds one clip's ``G``
    (``T*H*W`` elements), ``scratch`` ``scratch_size(H, W)`` elements. Returns ``-1``, or the index of the first
    clip whose ``G`` statistics are not finite (NaN or Inf in its relevance; it and later clips are not written)."""
    lib = library()
    assert lib is not None
    nb, channels, frames, h, w = relevance.shape
    limits = (ctypes.c_double * len(sigmas))()
    plane_stats = (ctypes.c_double * (STATS_PER_CLIP * frames))()
    status = getattr(lib, f"mr_selective_{_SUFFIX[relevance.dtype]}")(
        relevance.data_ptr(), nb, channels, frames, h, w, int(replicate), (ctypes.c_double * len(sigmas))(*sigmas),
        len(sigmas), out.data_ptr(), g_clip.data_ptr(), plane_stats, limits, scratch.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return int(status) - 1
