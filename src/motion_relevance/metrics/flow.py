"""Optical flow on the model's input frames and the "moves" mask it defines (docs/method.md, "Optical flow").

* :func:`compute_flow` — dense flow ``(T-1, H, W, 2)`` (dx, dy in px/frame) of uint8 RGB frames ``(T, H, W, 3)``;
  entry ``t`` is the field from frame ``t`` to ``t+1``. Farnebäck with the authors' parameters by default,
  DIS as the faster option.
* :func:`moving_mask` — ``(T, H, W)`` bool plus ``valid_frames`` ``(T,)`` bool: a voxel moves when its flow
  magnitude is strictly above the frame's (population) std of magnitude, or above an absolute px/frame value.
  The last frame has no flow and is invalid.
* :class:`FlowEstimator` — batched, Hydra-configurable front end with an on-disk cache of flow magnitudes.

A clip with fewer than 2 frames has no flow: :func:`compute_flow` returns a ``(0, H, W, 2)`` array and every frame
is invalid (``valid.any() == False``), which callers use to skip the clip's flow metrics.

Cache design: entries store the flow *magnitude* as float16 (``np.savez_compressed``), keyed
(:func:`motion_relevance.digests.cache_key`) by a digest of the grey frames the flow is computed from, the method,
its parameters and the OpenCV version: regenerated or differently preprocessed data can never reuse an entry.
The threshold is not part of the key, so changing it reuses the cache. Fresh magnitudes are rounded to float16 as
well, so a cache hit and a miss give bit-identical masks. An entry that does not match its key, shape or dtype is
corrupt: deleted, counted and recomputed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from motion_relevance.digests import cache_key, tensor_digest

log = logging.getLogger(__name__)

#: The authors' Farnebäck parameters (docs/method.md, "Optical flow").
FARNEBACK_DEFAULTS: dict[str, Any] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
#: DIS defaults: OpenCV's "fast" preset; other keys map onto the DISOpticalFlow setters.
DIS_DEFAULTS: dict[str, Any] = {"preset": "fast"}
_DIS_PRESETS = {
    "ultrafast": cv2.DISOpticalFlow_PRESET_ULTRAFAST,
    "fast": cv2.DISOpticalFlow_PRESET_FAST,
    "medium": cv2.DISOpticalFlow_PRESET_MEDIUM,
}
_DIS_SETTERS = {
    "finest_scale": "setFinestScale",
    "patch_size": "setPatchSize",
    "patch_stride": "setPatchStride",
    "gradient_descent_iterations": "setGradientDescentIterations",
    "variational_refinement_iterations": "setVariationalRefinementIterations",
    "variational_refinement_alpha": "setVariationalRefinementAlpha",
    "variational_refinement_delta": "setVariationalRefinementDelta",
    "variational_refinement_gamma": "setVariationalRefinementGamma",
    "use_mean_normalization": "setUseMeanNormalization",
    "use_spatial_propagation": "setUseSpatialPropagation",
}
METHODS = ("farneback", "dis")
_CACHE_FORMAT = 2


def flow_params(method: str = "farneback", **params: Any) -> dict[str, Any]:
    """The full parameter set of ``method``: its defaults updated by ``params`` (unknown keys raise)."""
    if method == "farneback":
        defaults, allowed = FARNEBACK_DEFAULTS, set(FARNEBACK_DEFAULTS)
    elif method == "dis":
        defaults, allowed = DIS_DEFAULTS, {"preset", *_DIS_SETTERS}
    else:
        raise ValueError(f"unknown flow method {method!r}; expected one of {METHODS}")
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown {method} parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {**defaults, **params}


def _to_grey(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` RGB (or ``(T, H, W)`` grey) → contiguous uint8 ``(T, H, W)`` grey."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (model input before normalisation), got {frames.dtype}")
    if frames.ndim == 3:
        return np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB or (T, H, W) grey, got shape {frames.shape}")
    if len(frames) == 0:
        return np.zeros(frames.shape[:3], np.uint8)
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


def _dis(params: Mapping[str, Any]) -> cv2.DISOpticalFlow:
    preset = params.get("preset", "fast")
    preset = _DIS_PRESETS[preset] if isinstance(preset, str) else int(preset)
    dis = cv2.DISOpticalFlow_create(preset)
    for name, setter in _DIS_SETTERS.items():
        if name in params:
            getattr(dis, setter)(params[name])
    return dis


def compute_flow(frames: np.ndarray | torch.Tensor, method: str = "farneback", **params: Any) -> np.ndarray:
    """Dense optical flow of one clip (docs/method.md, "Optical flow").

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB frames — the model's input after resize and crop, before
            normalisation (``(T, H, W)`` grey is accepted too). Converted to grey.
        method: ``"farneback"`` (default, authors' parameters) or ``"dis"`` (``cv2.DISOpticalFlow``).
        **params: overrides of :data:`FARNEBACK_DEFAULTS` / :data:`DIS_DEFAULTS`.

    Returns:
        float32 ``(T-1, H, W, 2)``: ``[t, y, x] = (dx, dy)`` in px/frame from frame ``t`` to ``t+1``.
        With ``T < 2`` the result has length 0 (no flow; detect with ``len(flow) == 0``).
    """
    p = flow_params(method, **params)
    grey = _to_grey(frames)
    t, h, w = grey.shape
    if t < 2:
        return np.zeros((0, h, w, 2), np.float32)
    out = np.empty((t - 1, h, w, 2), np.float32)
    if method == "farneback":
        args = [p[k] for k in ("pyr_scale", "levels", "winsize", "iterations", "poly_n", "poly_sigma", "flags")]
        for i in range(t - 1):
            out[i] = cv2.calcOpticalFlowFarneback(grey[i], grey[i + 1], None, *args)
    else:
        dis = _dis(p)
        for i in range(t - 1):
            out[i] = dis.calc(grey[i], grey[i + 1], None)
    return out


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
    """Per-voxel flow magnitude ``(T-1, H, W)`` in px/frame, rounded to float16 (the cached precision)."""
    mag = np.sqrt(np.square(flow[..., 0], dtype=np.float32) + np.square(flow[..., 1], dtype=np.float32))
    return mag.astype(np.float16)


def moving_mask(
    flow: np.ndarray, threshold: str | float = "std", *, magnitude: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Which voxels move (docs/method.md, "Optical flow").

    Args:
        flow: ``(T-1, H, W, 2)`` from :func:`compute_flow`, or ``(T-1, H, W)`` magnitudes with ``magnitude=True``.
        threshold: ``"std"`` — per frame, magnitude ``>`` that frame's population std (``np.std``, ddof=0) of
            magnitude (authors' choice); or a float — magnitude ``>`` that many px/frame. Comparisons are strict.
        magnitude: set when ``flow`` already holds magnitudes.

    Returns:
        ``moves`` bool ``(T, H, W)`` and ``valid_frames`` bool ``(T,)``; the last frame (no flow) is all False and
        invalid. With an empty flow (clip of < 2 frames), ``T = 1`` and nothing is valid.
    """
    mag = np.asarray(flow) if magnitude else flow_magnitude(np.asarray(flow))
    if mag.ndim != 3:
        raise ValueError(f"expected (T-1, H, W) magnitudes, got shape {mag.shape}")
    n, h, w = mag.shape
    mag64 = mag.astype(np.float64)
    if isinstance(threshold, str):
        if threshold != "std":
            raise ValueError(f"threshold must be 'std' or a number of px/frame, got {threshold!r}")
        thr = mag64.reshape(n, -1).std(axis=1).reshape(n, 1, 1) if n else np.zeros((0, 1, 1))
    else:
        thr = np.float64(threshold)
    moves = np.zeros((n + 1, h, w), bool)
    moves[:n] = mag64 > thr
    valid = np.zeros(n + 1, bool)
    valid[:n] = True
    return moves, valid


class FlowEstimator:
    """Batched flow → moving masks with an optional on-disk cache (docs/method.md, "Optical flow").

    Hydra-friendly constructor.

    Example config (``motion_relevance/conf/flow/farneback.yaml``)::

        _target_: motion_relevance.metrics.flow.FlowEstimator
        method: farneback
        params: {}
        threshold: std
        cache_dir: ${paths.cache_dir}/flow   # null: no cache

    Args:
        method: ``"farneback"`` or ``"dis"``.
        params: overrides of the method's defaults (see :func:`flow_params`).
        threshold: ``"std"`` or px/frame (see :func:`moving_mask`); not part of the cache key (magnitudes are cached).
        cache_dir: folder for cached magnitudes, or None. An unwritable folder warns once and disables the cache.

    Counters ``hits``, ``misses`` (computed, keyed or not), ``corrupt`` (unreadable entries recomputed) and
    ``write_errors`` are exposed, also as :meth:`cache_info`.
    """

    def __init__(
        self,
        method: str = "farneback",
        params: Mapping[str, Any] | None = None,
        threshold: str | float = "std",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.method = method
        self.params = flow_params(method, **dict(params or {}))
        if isinstance(threshold, str) and threshold != "std":
            threshold = float(threshold)
        self.threshold = threshold
        self.cache_dir: Path | None = Path(cache_dir) if cache_dir is not None else None
        self.hits = self.misses = self.corrupt = self.write_errors = 0
        self._warned = False
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                if not os.access(self.cache_dir, os.W_OK):
                    raise PermissionError(f"{self.cache_dir} is not writable")
            except OSError as err:
                self._disable_cache(err)

    # ------------------------------------------------------------------ cache
    def _disable_cache(self, err: BaseException) -> None:
        if not self._warned:
            warnings.warn(f"flow cache disabled, running without it: {err}", RuntimeWarning, stacklevel=3)
            self._warned = True
        self.cache_dir = None

    def cache_key(self, grey: np.ndarray) -> str:
        """Key of the flow of grey frames ``(T, H, W)`` uint8: their digest, the method, parameters, OpenCV."""
        return cache_key("flow", frames=tensor_digest(grey), method=self.method, params=self.params,
                         opencv=cv2.__version__, format=_CACHE_FORMAT)

    def cache_path(self, key: str) -> Path | None:
        """File of the cache entry ``key`` (None without a cache)."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{key[:40]}.npz"

    def _load(self, path: Path, key: str, n: int, h: int, w: int) -> np.ndarray | None:
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                mag = z["magnitude"]
                stored = str(z["key"])
            if stored != key or mag.shape != (n, h, w) or mag.dtype != np.float16:
                raise ValueError(f"entry does not match (key, shape {mag.shape}, dtype {mag.dtype})")
            return mag
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
            log.warning("corrupt flow cache entry %s (%s): recomputing", path, err)
            self.corrupt += 1
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def _store(self, path: Path, key: str, mag: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, magnitude=mag, key=np.str_(key))
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".flow-", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, path)  # atomic on POSIX: readers see the old entry or the new one
        except OSError as err:
            self.write_errors += 1
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            self._disable_cache(err)

    def cache_info(self) -> dict[str, int]:
        """Counters: hits, misses, corrupt, write_errors."""
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt, "write_errors": self.write_errors}

    # ------------------------------------------------------------------ compute
    def magnitude(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """float16 flow magnitude ``(T-1, H, W)`` of one clip ``(T, H, W, 3)`` uint8, from the cache if possible."""
        grey = _to_grey(frames)
        t, h, w = grey.shape
        n = max(t - 1, 0)
        key = self.cache_key(grey) if self.cache_dir is not None else None
        path = self.cache_path(key) if key is not None else None
        if path is not None and key is not None:
            mag = self._load(path, key, n, h, w)
            if mag is not None:
                self.hits += 1
                return mag
        self.misses += 1
        mag = flow_magnitude(compute_flow(grey, self.method, **self.params))
        if path is not None and key is not None:
            self._store(path, key, mag)
        return mag

    def __call__(self, frames_batch: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Moving masks of a batch.

        Args:
            frames_batch: uint8 ``(B, T, H, W, 3)`` RGB model-input frames (numpy or CPU/GPU tensor).

        Returns:
            ``moves`` bool ``(B, T, H, W)`` and ``valid`` bool ``(B, T)`` CPU tensors. A clip with ``T < 2`` has
            ``valid[b].any() == False``: skip its flow metrics.
        """
        moves, valid = [], []
        for b in range(len(frames_batch)):
            mag = self.magnitude(frames_batch[b])
            m, v = moving_mask(mag, self.threshold, magnitude=True)
            t = frames_batch[b].shape[0]
            moves.append(torch.from_numpy(m[:t]))
            valid.append(torch.from_numpy(v[:t]))
        if not moves:
            shape = tuple(frames_batch.shape[1:4])
            return torch.zeros((0, *shape), dtype=torch.bool), torch.zeros((0, shape[0]), dtype=torch.bool)
        return torch.stack(moves), torch.stack(valid)

    def __repr__(self) -> str:
        return (
            f"FlowEstimator(method={self.method!r}, params={self.params}, threshold={self.threshold!r}, "
            f"cache_dir={str(self.cache_dir) if self.cache_dir else None!r})"
        )
