"""Selective relevance (SPEC §1): keep the relevance that changes over time.

For a relevance tensor ``R`` of shape ``(B, C, T, H, W)``:

1. ``S = R.sum(C)``;
2. ``G = |h_t * S|`` with ``h_t`` the 3x3x3 Sobel kernel that differentiates along ``t`` and smooths along
   ``y`` and ``x`` (``h_t[0] = [[1,2,1],[2,4,2],[1,2,1]]``, ``h_t[1] = 0``, ``h_t[2] = -h_t[0]``), i.e.
   ``G[t] = |B(S[t-1]) - B(S[t+1])|`` with ``B`` the ``[1,2,1] x [1,2,1]`` spatial smoothing;
3. one voxel of padding on every side: ``"replicate"`` (default, static relevance in the first/last frame
   is not motion) or ``"zeros"`` (the authors' code);
4. ``mask = G > sigma * std(G)`` per clip (unbiased std over the clip's ``T*H*W`` voxels, strict ``>``);
   a clip whose ``G`` is constant gets an all-zero mask;
5. ``R_sel = R * mask`` (one mask for every channel).

The implementation never builds the 27-tap kernel: since ``B`` is linear, ``G = |B(S[t-1] - S[t+1])|``,
a temporal difference and two separable ``[1,2,1]`` passes. Three back ends compute the same ``G`` and masks:

* CPU, float32/float64: fused C++ kernels (``_selective_cpu.cpp``, compiled at install time, loaded by
  :mod:`._selective_kernel`): ``G`` plane by plane in cache with its statistics, then one mask-multiply pass;
* CPU otherwise, or when the package was installed without a C++ compiler: tensor slicing (shifted adds,
  ``[1,2,1] = [1,1] * [1,1]``), also the reference for the kernel in the tests; :func:`tensor_ops` forces it;
* other devices (CUDA): one padded single-channel ``conv3d`` and device-side thresholds.

None of them compiles anything at import or first use.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from motion_relevance.explain import _selective_kernel as kernel

__all__ = ["selective_mask", "selective_relevance", "temporal_gradient", "tensor_ops"]

_PADDINGS = ("replicate", "zeros")


def _check_relevance(relevance: Tensor, what: str = "relevance") -> None:
    if not isinstance(relevance, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (B, C, T, H, W), got {type(relevance).__name__}")
    if relevance.dim() != 5:
        raise ValueError(
            f"{what} must have shape (B, C, T, H, W), got {tuple(relevance.shape)}; "
            "add missing batch/channel dimensions with .unsqueeze(0) / .unsqueeze(1)"
        )
    if not relevance.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {relevance.dtype}; convert with .float()")
    if min(relevance.shape) == 0:
        raise ValueError(f"{what} must not be empty, got shape {tuple(relevance.shape)}")


def _check_padding(padding: str) -> None:
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")


def _sigmas(sigma: float | Sequence[float]) -> tuple[list[float], bool]:
    """Validated sigma values and whether a sequence was given."""
    many = isinstance(sigma, Sequence) and not isinstance(sigma, str)
    if isinstance(sigma, Tensor):
        many = sigma.dim() > 0
        values = [float(s) for s in sigma.flatten().tolist()]
    else:
        values = [sigma] if not many else list(sigma)
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"sigma must be a number or a sequence of numbers, got {value!r}")
        value = float(value)
        if math.isnan(value) or value < 0:
            raise ValueError(f"sigma must be a non-negative number (a multiple of std(G)), got {value!r}")
        out.append(value)
    if many and not out:
        raise ValueError("sigma sequence must not be empty")
    return out, many


class _Workspace(threading.local):
    """Per-thread scratch buffers for the CPU path, reused across calls.

    Allocating several MB of fresh temporaries per call costs page faults that dominate the run time on CPU
    (glibc hands large blocks back to the OS); reusing three flat buffers avoids that. The buffers are
    bounded by ``_CHUNK_VOXELS`` (clips are processed in chunks), so at most ``3 * _CHUNK_VOXELS`` elements
    per thread and dtype stay allocated. Other devices use their caching allocator instead.
    """

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}
        self.kernel_scratch: dict[tuple[str, torch.dtype], Tensor] = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device.type != "cpu":
            return tuple(torch.empty(numel, dtype=dtype, device=device) for _ in range(3))  # type: ignore[return-value]
        bufs = self.buffers.get(dtype)
        if bufs is None or bufs[0].numel() < numel:
            bufs = tuple(torch.empty(numel, dtype=dtype) for _ in range(3))  # type: ignore[assignment]
            self.buffers[dtype] = bufs  # type: ignore[assignment]
        return bufs  # type: ignore[return-value]

    def scratch(self, numel: int, dtype: torch.dtype, slot: str = "threads") -> Tensor:
        """A CPU buffer of at least ``numel`` elements for the compiled kernel (``slot``: what it holds)."""
        buf = self.kernel_scratch.get((slot, dtype))
        if buf is None or buf.numel() < numel:
            buf = self.kernel_scratch[(slot, dtype)] = torch.empty(numel, dtype=dtype)
        return buf


_WORKSPACE = _Workspace()
#: Padded voxels handled per chunk: 2 clips of 16x112x112 (about 1.7 MB per float32 scratch buffer); measured
#: on 2 CPU cores, 2-4 clips per chunk beat both 1 (per-op overhead) and 8 (temporaries fall out of cache).
_CHUNK_VOXELS = 2 * 16 * 114 * 114


def _view(buf: Tensor, *shape: int) -> Tensor:
    return buf[: math.prod(shape)].view(shape)


@functools.lru_cache(maxsize=16)
def _sobel_t(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 3x3x3 Sobel kernel ``h_t`` of SPEC §1 as a conv3d weight ``(1, 1, 3, 3, 3)`` (cross-correlation)."""
    b = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    smooth = b[:, None] * b[None, :]
    kernel = torch.stack([smooth, torch.zeros_like(smooth), -smooth])
    return kernel.view(1, 1, 3, 3, 3).to(dtype=dtype, device=device)


def _gradient_conv(relevance: Tensor, out: Tensor, replicate: bool) -> Tensor:
    """``G`` by one padded single-channel conv3d on ``S``: the accelerator path (few kernel launches).

    On a GPU the per-launch cost dominates the slicing path's dozen small ops (measured on an H200: 0.67 ms
    per clip against 0.18 ms for one cuDNN conv3d), while on a CPU conv3d is the slow one; hence two paths
    that compute the same ``G``.
    """
    s = relevance.sum(1, keepdim=True)
    sp = F.pad(s, (1, 1, 1, 1, 1, 1), mode="replicate" if replicate else "constant")
    g = F.conv3d(sp, _sobel_t(relevance.dtype, relevance.device))
    return torch.abs(g[:, 0], out=out)


def _use_conv(device: torch.device) -> bool:
    return device.type != "cpu"


def _gradient_into(relevance: Tensor, out: Tensor, replicate: bool, bufs: tuple[Tensor, Tensor]) -> Tensor:
    """Write ``G`` of ``relevance`` ``(b, C, T, H, W)`` into ``out`` ``(b, T, H, W)``; ``bufs`` are scratch.

    ``S`` is padded once in H and W, then ``D[t] = Sp[t-1] - Sp[t+1]`` (the two end frames see the temporal
    padding) and the spatial ``[1, 2, 1]`` smoothing, as two ``[1, 1]`` box filters per axis, is plain
    shifted adds: few tensor ops, since the fixed per-op cost matters at these sizes.
    """
    if _use_conv(relevance.device):
        return _gradient_conv(relevance, out, replicate)
    a, b = bufs
    nb, channels, t, h, w = relevance.shape
    # 1. channel sum S (explicit adds: cheaper than a strided reduction over a short dim).
    if channels == 1:
        s = relevance[:, 0]
    else:
        s = torch.add(relevance[:, 0], relevance[:, 1], out=_view(b, nb, t, h, w))
        for c in range(2, channels):
            s.add_(relevance[:, c])
    # Spatial padding as one 2-D pad (T acts as channels; much faster than a 3-D replication pad).
    sp = F.pad(s, (1, 1, 1, 1), mode="replicate" if replicate else "constant")
    # 2. temporal difference D[t] = S[t-1] - S[t+1]; the smoothing is linear, so it commutes with this.
    d = _view(a, nb, t, h + 2, w + 2)
    if t >= 3:
        torch.sub(sp[:, :-2], sp[:, 2:], out=d[:, 1:-1])
    if t == 1:  # both neighbours are padding: S[0] itself (replicate) or zero
        torch.sub(sp, sp, out=d) if replicate else d.zero_()  # sp - sp keeps NaN/Inf visible
    elif replicate:
        torch.sub(sp[:, 0], sp[:, 1], out=d[:, 0])
        torch.sub(sp[:, t - 2], sp[:, t - 1], out=d[:, t - 1])
    else:
        torch.neg(sp[:, 1], out=d[:, 0])
        d[:, t - 1].copy_(sp[:, t - 2])
    # 3. [1,2,1] = [1,1] * [1,1] along H, then along W, then |.|
    p = torch.add(d[:, :, :-1], d[:, :, 1:], out=_view(b, nb, t, h + 1, w + 2))
    e = torch.add(p[:, :, :-1], p[:, :, 1:], out=_view(a, nb, t, h, w + 2))
    q = torch.add(e[..., :-1], e[..., 1:], out=_view(b, nb, t, h, w + 1))
    return torch.add(q[..., :-1], q[..., 1:], out=out).abs_()


def _chunks(relevance: Tensor) -> Iterator[tuple[slice, int]]:
    """Clip ranges of at most ``_CHUNK_VOXELS`` voxels (at least one clip) and the scratch size they need."""
    nb, _, t, h, w = relevance.shape
    # Accelerators take the whole batch at once (their allocator caches the temporaries).
    step = nb if _use_conv(relevance.device) else max(1, _CHUNK_VOXELS // (t * (h + 2) * (w + 2)))
    for start in range(0, nb, step):
        stop = min(start + step, nb)
        yield slice(start, stop), (stop - start) * t * (h + 2) * (w + 2)


def _non_finite(clip: int) -> ValueError:
    """The error for NaN/Inf in a clip's relevance (every path raises the same one)."""
    return ValueError(
        f"relevance of clip {clip} contains NaN or Inf; check the explainer's output "
        "(torch.isfinite(R).all()) before selective relevance"
    )


def _std(m2: float, n: int, low: float, high: float) -> float:
    """Unbiased std ``sqrt(m2 / (n - 1))`` of a clip's ``G`` from its sum of squared deviations; ``inf`` for a
    constant ``G`` (``max == min``) or a single voxel: an all-zero mask at any sigma."""
    return math.sqrt(m2 / (n - 1)) if n > 1 and high > low else math.inf


def _limits(stds: list[float], sigma: float) -> list[float]:
    """Thresholds ``sigma * std`` per clip, keeping ``inf`` (``0 * inf`` would be NaN)."""
    return [sigma * std if std < math.inf else math.inf for std in stds]


def _thresholds(
    g: Tensor, sigmas: list[float], scratch: Tensor, on_device: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Per-clip thresholds ``sigma * std(G)`` for ``g`` ``(b, T, H, W)``: shape ``(len(sigmas), b)``, and ``None``
    or, on an accelerator (``on_device``), a 0-dim bool tensor that the caller must find true once its work is
    queued (see :func:`_for_each_chunk`).

    ``std`` is the unbiased standard deviation over the clip's ``T*H*W`` voxels, computed in two passes
    (mean, then the sum of squared deviations ``m2``) as ``sqrt(m2 / (n - 1))``, the rounding of the reference
    and of the compiled kernel (``norm / sqrt(n - 1)`` can land one ulp below a threshold that ``G`` hits
    exactly). A clip whose ``G`` is constant (``max == min`` exactly, so
    rounding in the mean can never turn a constant map into a full mask) gets ``inf``: an all-zero mask.
    The per-clip statistics come to the host once (``b`` numbers each), which also checks for NaN/Inf.
    """
    flat = g.reshape(g.shape[0], -1)
    nb, n = flat.shape
    if n > 1 and on_device and _use_conv(g.device):
        return _thresholds_on_device(flat, sigmas)
    if n > 1:
        dev = torch.sub(flat, flat.mean(1, keepdim=True), out=_view(scratch, nb, n))
        stats = torch.stack([dev.square_().sum(1), flat.amax(1), flat.amin(1)])
        m2s, highs, lows = stats.double().tolist()
        for i, m2 in enumerate(m2s):
            if not math.isfinite(m2):  # G**2 overflowed in low precision, or NaN/Inf in the relevance
                wide = flat[i].double()
                m2s[i] = float((wide - wide.mean()).square_().sum())
                if not math.isfinite(m2s[i]):
                    raise _non_finite(i)
        stds = [_std(m2, n, low, high) for m2, high, low in zip(m2s, highs, lows)]
    else:
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("relevance contains NaN or Inf")
        stds = [math.inf] * nb  # a single voxel: G is constant
    return torch.tensor([_limits(stds, sigma) for sigma in sigmas], dtype=g.dtype, device=g.device), None


def _thresholds_on_device(flat: Tensor, sigmas: list[float]) -> tuple[Tensor, Tensor]:
    """Accelerator version of :func:`_thresholds` for ``flat`` ``(b, N)``: statistics, thresholds and the flag
    "every std is finite" stay on the device, with no host sync (a sync in the middle would leave the device idle
    while the host queues the remaining kernels: at batch 1 that doubled the time of the whole step)."""
    std = flat.std(dim=1)
    low, high = torch.aminmax(flat, dim=1)
    thr = torch.empty((len(sigmas), flat.shape[0]), dtype=flat.dtype, device=flat.device)
    for i, sigma in enumerate(sigmas):
        torch.mul(std, sigma, out=thr[i])
    thr.masked_fill_(high <= low, math.inf)  # constant G: an all-zero mask
    return thr, torch.isfinite(std).all()


def _check_finite_small_t(relevance: Tensor, padding: str) -> None:
    # With zero padding and T == 1, G ignores R entirely, so NaN/Inf would not surface in std(G).
    if padding == "zeros" and relevance.shape[2] == 1 and not bool(torch.isfinite(relevance).all()):
        raise ValueError("relevance contains NaN or Inf")


_KERNEL_STATE = threading.local()


@contextlib.contextmanager
def tensor_ops() -> Iterator[None]:
    """Within this block (in this thread), compute selective relevance on CPU with tensor ops instead of the
    compiled kernel: the same results, for comparisons and benchmarks."""
    previous = getattr(_KERNEL_STATE, "disabled", False)
    _KERNEL_STATE.disabled = True
    try:
        yield
    finally:
        _KERNEL_STATE.disabled = previous


def _use_kernel(relevance: Tensor) -> bool:
    return (
        relevance.device.type == "cpu"
        and relevance.dtype in kernel.KERNEL_DTYPES
        and not getattr(_KERNEL_STATE, "disabled", False)
        and kernel.library() is not None
    )


#: Clips per kernel call: 8 clips of 16x112x112 (one G buffer of about 6.4 MB float32 per thread). Measured on 2
#: CPU cores, whole batches of 8 beat 1-2 clips per call; the cap bounds the buffer for large batches.
_KERNEL_CHUNK_VOXELS = 8 * 16 * 112 * 112


def _kernel_chunks(
    relevance: Tensor, padding: str, out: Tensor | None = None, with_stds: bool = True
) -> Iterator[tuple[slice, Tensor, Tensor, list[float]]]:
    """Compiled-kernel path: per chunk, clip range, the contiguous relevance chunk, ``G`` ``(b, T, H, W)`` (in
    ``out[sl]`` when ``out`` is given, else in a reused buffer) and the per-clip stds (``inf``: constant ``G``;
    with ``with_stds=False`` an empty list, and NaN/Inf are not checked)."""
    relevance = relevance.contiguous()
    nb_all, _, t, h, w = relevance.shape
    n = t * h * w
    step = max(1, _KERNEL_CHUNK_VOXELS // n)
    scratch = _WORKSPACE.scratch(kernel.scratch_size(h, w), relevance.dtype)
    for start in range(0, nb_all, step):
        sl = slice(start, min(start + step, nb_all))
        nb = sl.stop - sl.start
        if out is not None:
            g = out[sl].view(nb, t, h, w)
        else:
            g = _WORKSPACE.scratch(nb * n, relevance.dtype, slot="g_chunk")[: nb * n].view(nb, t, h, w)
        chunk = relevance[sl]
        stats = kernel.gradient_stats(chunk, g, padding == "replicate", scratch)
        yield sl, chunk, g, _stds_from_stats(stats, n, sl.start) if with_stds else []


def _stds_from_stats(stats: list[float], n: int, first_clip: int) -> list[float]:
    """Per-clip unbiased std of ``G`` from the kernel's ``[mean, m2, min, max]`` per clip; ``inf`` for a constant
    ``G`` (``max == min``: an all-zero mask) or a single voxel."""
    stds = []
    for i in range(0, len(stats), kernel.STATS_PER_CLIP):
        mean, m2, low, high = stats[i : i + kernel.STATS_PER_CLIP]
        if not (math.isfinite(mean) and math.isfinite(m2)):
            raise _non_finite(first_clip + i // kernel.STATS_PER_CLIP)
        stds.append(_std(m2, n, low, high))
    return stds


def temporal_gradient(relevance: Tensor, *, padding: str = "replicate") -> Tensor:
    """Temporal edge map ``G = |h_t * R.sum(C)|`` of SPEC §1, shape ``(B, 1, T, H, W)``, ``G >= 0``.

    Args:
        relevance: relevance ``R`` of shape ``(B, C, T, H, W)``, floating point, any device.
        padding: ``"replicate"`` (default; repeats edge voxels) or ``"zeros"`` (the authors' code).
    """
    _check_relevance(relevance)
    _check_padding(padding)
    replicate = padding == "replicate"
    out = relevance.new_empty((relevance.shape[0], 1, *relevance.shape[2:]))
    if _use_kernel(relevance):  # like the other paths, G carries NaN/Inf through instead of raising
        for _ in _kernel_chunks(relevance, padding, out=out, with_stds=False):
            pass
        return out
    for sl, numel in _chunks(relevance):
        a, b, _ = _WORKSPACE.get(numel, relevance.dtype, relevance.device)
        _gradient_into(relevance[sl], out[sl, 0], replicate, (a, b))
    return out


def _masks(
    relevance: Tensor, sigmas: list[float], padding: str, on_device: bool
) -> Iterator[tuple[slice, Tensor, Tensor, Tensor, Tensor | None]]:
    """Per chunk: clip range, ``G`` ``(b, 1, T, H, W)`` (scratch), thresholds ``(S, b, 1, 1, 1, 1)``, scratch, and
    the pending finiteness flag of :func:`_thresholds`."""
    _check_finite_small_t(relevance, padding)
    replicate = padding == "replicate"
    nb_t_h_w = relevance.shape[2:]
    for sl, numel in _chunks(relevance):
        a, b, c = _WORKSPACE.get(numel, relevance.dtype, relevance.device)
        nb = sl.stop - sl.start
        g = _gradient_into(relevance[sl], _view(c, nb, *nb_t_h_w), replicate, (a, b))
        thr, finite = _thresholds(g, sigmas, a, on_device)
        yield sl, g.unsqueeze(1), thr.view(len(sigmas), nb, 1, 1, 1, 1), a, finite


def _for_each_chunk(
    relevance: Tensor, sigmas: list[float], padding: str, consume: Callable[[slice, Tensor, Tensor, Tensor], None]
) -> None:
    """Tensor-op and accelerator paths: ``consume(clips, G, thresholds, scratch)`` per chunk. On an accelerator the
    finiteness of the statistics is checked once, after all work is queued; if it fails (NaN/Inf in the relevance,
    or ``G**2`` overflowing a low-precision std), everything is redone with host statistics, which retry in
    float64 or raise ``ValueError`` naming the clip."""
    pending = []
    for sl, g, thr, scratch, finite in _masks(relevance, sigmas, padding, on_device=True):
        consume(sl, g, thr, scratch)
        if finite is not None:
            pending.append(finite)
    if pending and not bool(torch.stack(pending).all()):
        for sl, g, thr, scratch, _ in _masks(relevance, sigmas, padding, on_device=False):
            consume(sl, g, thr, scratch)


def selective_mask(relevance: Tensor, sigma: float | Sequence[float] = 4.0, *, padding: str = "replicate") -> Tensor:
    """Boolean motion mask ``G > sigma * std(G)`` per clip (SPEC §1 step 4).

    Returns ``(B, 1, T, H, W)`` bool, or ``(S, B, 1, T, H, W)`` for a sequence of ``S`` sigmas.
    """
    _check_relevance(relevance)
    _check_padding(padding)
    sigmas, many = _sigmas(sigma)
    shape = (relevance.shape[0], 1, *relevance.shape[2:])
    out = torch.empty((len(sigmas), *shape), dtype=torch.bool, device=relevance.device)
    if _use_kernel(relevance):
        _check_finite_small_t(relevance, padding)
        for sl, _, g, stds in _kernel_chunks(relevance, padding):
            for i, sigma in enumerate(sigmas):
                limits = torch.tensor(_limits(stds, sigma), dtype=g.dtype).view(-1, 1, 1, 1)
                torch.gt(g, limits, out=out[i, sl, 0])
        return out if many else out[0]

    def write(sl: slice, g: Tensor, thr: Tensor, scratch: Tensor) -> None:
        for i in range(len(sigmas)):
            torch.gt(g, thr[i], out=out[i, sl])

    _for_each_chunk(relevance, sigmas, padding, write)
    return out if many else out[0]


def selective_relevance(
    relevance: Tensor, sigma: float | Sequence[float] = 4.0, *, padding: str = "replicate"
) -> Tensor:
    """Selective relevance ``R_sel = R * (G > sigma * std(G))`` of SPEC §1.

    Args:
        relevance: ``R`` of shape ``(B, C, T, H, W)`` (C = 3 for pixel methods, 1 for Grad-CAM-like maps),
            floating point, any device.
        sigma: threshold in units of the clip's (unbiased) standard deviation of ``G``; a non-negative number
            or a sequence of them (then ``G`` is computed once and the result has a leading sigma dimension).
        padding: ``"replicate"`` (default) or ``"zeros"`` (the authors' code).

    Returns:
        ``(B, C, T, H, W)`` like ``relevance`` (``(S, B, C, T, H, W)`` for ``S`` sigmas): ``R`` where the mask is
        set, zero elsewhere. A clip whose ``G`` is constant (e.g. static relevance) comes back all zero.

    Raises:
        ValueError / TypeError: not 5-D, not floating point, negative or NaN sigma, unknown padding, NaN/Inf in
            the relevance.
    """
    _check_relevance(relevance)
    _check_padding(padding)
    sigmas, many = _sigmas(sigma)
    out = relevance.new_empty((len(sigmas), *relevance.shape))
    if _use_kernel(relevance):
        _check_finite_small_t(relevance, padding)
        t, h, w = relevance.shape[2:]
        g_clip = _WORKSPACE.scratch(t * h * w, relevance.dtype, slot="g")
        scratch = _WORKSPACE.scratch(kernel.scratch_size(h, w), relevance.dtype)
        bad = kernel.selective(relevance.contiguous(), sigmas, padding == "replicate", out, g_clip, scratch)
        if bad >= 0:
            raise _non_finite(bad)
        return out if many else out[0]

    def write(sl: slice, g: Tensor, thr: Tensor, scratch: Tensor) -> None:
        # A float 0/1 mask written straight by the comparison, then one broadcast multiply: on CPU much
        # faster than torch.where / masked_fill with a broadcast bool mask.
        mask = g if len(sigmas) == 1 else _view(scratch, *g.shape)
        for i in range(len(sigmas)):
            torch.gt(g, thr[i], out=mask)
            torch.mul(relevance[sl], mask, out=out[i, sl])

    _for_each_chunk(relevance, sigmas, padding, write)
    return out if many else out[0]
