"""Every explainer call goes through :class:`CachedExplainer`; :class:`AttributionCache` stores explanations on disk.

A sigma sweep (``mr-explain -m selective.sigma=1,2,3,4,5``) explains the same clips with the same model and
explainers in every job; only the cheap selective step depends on sigma. With a cache, each clip's baseline
relevance is computed once and read back by the later jobs (also across processes: entries are written
atomically, so parallel launchers can share one folder). Without one, :class:`CachedExplainer` only times the call.

The key (:func:`motion_relevance.digests.cache_key`) holds every input that changes the relevance:

* the network's content (:func:`~motion_relevance.digests.state_digest` of its ``state_dict``);
* the explainer's configuration (:func:`describe`: class and public attributes) and the versions of
  motion_relevance, Captum and torch;
* the clip itself: a digest of the model-input tensor, which covers the video file, the first frame, the decoder
  and every preprocessing option (resize, crop, stride, clip length, normalisation, channel order);
* the explained class and the stored precision (``cache.dtype``).

An entry that does not match what was asked (stored key, precision, shape, non-finite values, unreadable file) is
corrupt: deleted, counted in ``corrupt`` and recomputed. Each entry also records the time the explanation took
(ms per clip), so the overhead table reports the explanation's cost, not the file read. The folder is bounded by
``max_bytes`` (least-recently-used entries are evicted). An unwritable folder turns the cache off with one warning.
Plain library code: no Lightning or Hydra here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from motion_relevance import __version__
from motion_relevance.digests import cache_key, state_digest, tensor_digest
from motion_relevance.explain.timing import OverheadTimer

log = logging.getLogger(__name__)

__all__ = ["Attribution", "AttributionCache", "CacheEntry", "CachedExplainer", "describe", "explainer_config"]

_SUFFIX = ".npz"
DTYPES = ("float32", "float16")


def _versions() -> dict[str, str]:
    return {"motion_relevance": __version__, "captum": version("captum"), "torch": torch.__version__}


def describe(obj: Any, _depth: int = 0) -> Any:
    """A JSON-able description of a configuration object (class + public attributes, recursively, depth 3)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)  # NaN/inf stay distinguishable and JSON-able
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj.detach().cpu().tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.ndarray):
        return {"array": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, Mapping):
        return {str(k): describe(v, _depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [describe(v, _depth + 1) for v in obj]
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if _depth >= 3 or isinstance(obj, nn.Module) or not hasattr(obj, "__dict__"):
        return kind
    attrs = {k: describe(v, _depth + 1) for k, v in sorted(vars(obj).items()) if not k.startswith("_")}
    return {"class": kind, **attrs}


def explainer_config(explainer: Any) -> dict[str, Any]:
    """The key part of an explainer: its configuration and the versions of the libraries that compute it."""
    return {"explainer": describe(explainer), "versions": _versions()}


@dataclass
class CacheEntry:
    """One cached explanation: relevance per model input ``(C, T, H, W)`` and the ms the explanation took."""

    relevance: tuple[Tensor, ...]
    ms: float


class AttributionCache:
    """LRU-bounded on-disk store of per-clip relevance (see the module docstring).

    Args:
        dir: cache folder (created if missing); None disables caching.
        max_bytes: size bound of the folder in bytes; least-recently-used entries are evicted beyond it.
        enabled: False turns the cache off (every lookup misses, nothing is written).
        dtype: stored precision, ``"float32"`` (exact: a hit gives bit-identical metrics) or ``"float16"``; part of
            every key, so entries of one precision are never served to a run asking for the other.

    Counters ``hits``, ``misses``, ``corrupt``, ``writes``, ``evictions``, ``write_errors`` and the folder's
    ``bytes`` are returned by :meth:`info`.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str] | None = None,
        max_bytes: int | float = 2 * 1024**3,
        enabled: bool = True,
        dtype: str = "float32",
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float)) or math.isnan(max_bytes) \
                or max_bytes <= 0:
            raise ValueError(f"cache.max_bytes must be a positive number of bytes, got {max_bytes!r}")
        if dtype not in DTYPES:
            raise ValueError(f"cache.dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.max_bytes = int(max_bytes)
        self.dtype = dtype
        self.dir: Path | None = Path(dir) if (dir is not None and enabled) else None
        self.hits = self.misses = self.corrupt = self.writes = self.evictions = self.write_errors = 0
        self._warned = False
        self._bytes = 0
        if self.dir is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=self.dir, prefix=".probe-"):
                    pass
            except OSError as err:
                self._disable(err)
            else:
                self._bytes = self._scan_bytes()

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        """True while entries are read and written."""
        return self.dir is not None

    def _disable(self, err: BaseException) -> None:
        if not self._warned:
            warnings.warn(f"attribution cache disabled, running without it: {err}", RuntimeWarning, stacklevel=3)
            log.warning("attribution cache disabled, running without it: %s", err)
            self._warned = True
        self.dir = None

    def _entries(self) -> list[Path]:
        if self.dir is None:
            return []
        return [p for p in self.dir.glob(f"*/*{_SUFFIX}") if p.is_file()]

    def _scan_bytes(self) -> int:
        total = 0
        for path in self._entries():
            with contextlib.suppress(OSError):  # removed by another process meanwhile
                total += path.stat().st_size
        return total

    def info(self) -> dict[str, int]:
        """Counters and the folder's current size in bytes."""
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt, "writes": self.writes,
                "evictions": self.evictions, "write_errors": self.write_errors, "bytes": self._bytes}

    def reset_counters(self) -> None:
        """Zero hits/misses/corrupt/writes/evictions/write_errors (the byte count stays)."""
        self.hits = self.misses = self.corrupt = self.writes = self.evictions = self.write_errors = 0

    # ------------------------------------------------------------------ keys
    def key(self, *, model: str, explainer: Mapping[str, Any], inputs: Sequence[Tensor], target: int) -> str:
        """Key of one clip's entry: model digest, explainer config, the clip's input tensors, class and dtype."""
        return cache_key("attribution", model=model, explainer=explainer,
                         inputs=[tensor_digest(x) for x in inputs], target=int(target), dtype=self.dtype)

    def path(self, key: str) -> Path | None:
        """File of entry ``key`` (two-level fan-out keeps folders small); None without a cache."""
        if self.dir is None:
            return None
        return self.dir / key[:2] / f"{key[2:40]}{_SUFFIX}"

    # ------------------------------------------------------------------ read/write
    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` or None (a miss); an entry that does not match the key, the cache's dtype or holds
        non-finite values is corrupt: deleted, counted, None."""
        path = self.path(key)
        if path is None or not path.exists():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    raise ValueError("stored key differs (hash collision or foreign file)")
                arrays = [z[f"relevance_{i}"] for i in range(int(z["inputs"]))]
                ms = float(z["ms"])
            for array in arrays:
                if array.dtype != np.dtype(self.dtype) or array.ndim != 4 or not np.isfinite(array).all():
                    raise ValueError(f"stored relevance {array.dtype} {array.shape} is not finite {self.dtype} "
                                     "(C, T, H, W)")
            relevance = tuple(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in arrays)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
            self.discard(key, f"{err}")
            self.misses += 1
            return None
        self.hits += 1
        with contextlib.suppress(OSError):
            os.utime(path)  # LRU: a hit makes the entry recent
        return CacheEntry(relevance=relevance, ms=ms)

    def discard(self, key: str, why: str) -> None:
        """Delete a corrupt entry (counted in ``corrupt``) so that it is recomputed."""
        path = self.path(key)
        if path is None:
            return
        log.warning("corrupt attribution cache entry %s (%s): recomputing", path, why)
        self.corrupt += 1
        self._remove(path)

    def put(self, key: str, relevance: Sequence[Tensor], ms: float) -> None:
        """Store one clip's relevance (one ``(C, T, H, W)`` tensor per model input) and its explanation time."""
        path = self.path(key)
        if path is None:
            return
        arrays = {f"relevance_{i}": r.detach().cpu().numpy().astype(self.dtype) for i, r in enumerate(relevance)}
        buf = io.BytesIO()
        np.savez(buf, ms=np.float64(ms), key=np.str_(key), inputs=np.int64(len(arrays)), **arrays)
        data = buf.getvalue()
        if len(data) > self.max_bytes:
            log.warning("attribution of %d bytes exceeds cache.max_bytes=%d: not cached", len(data), self.max_bytes)
            return
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            old = path.stat().st_size if path.exists() else 0
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".attr-", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)  # atomic: readers see the old entry or the new one
            tmp = None
        except OSError as err:
            self.write_errors += 1
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            self._disable(err)
            return
        self.writes += 1
        self._bytes += len(data) - old
        if self._bytes > self.max_bytes:
            self._evict()

    def _remove(self, path: Path) -> int:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return 0
        self._bytes = max(0, self._bytes - size)
        return size

    def _evict(self) -> None:
        """Delete least-recently-used entries until the folder fits ``max_bytes`` (rescanned: other processes)."""
        stats = []
        for path in self._entries():
            try:
                st = path.stat()
            except OSError:
                continue
            stats.append((st.st_mtime_ns, st.st_size, path))
        self._bytes = sum(s for _, s, _ in stats)
        for _, _, path in sorted(stats, key=lambda s: s[0]):
            if self._bytes <= self.max_bytes:
                break
            if self._remove(path):
                self.evictions += 1

    def __repr__(self) -> str:
        return f"AttributionCache(dir={str(self.dir) if self.dir else None!r}, max_bytes={self.max_bytes})"


@dataclass
class Attribution:
    """What one explainer call produced for a batch of ``B`` clips.

    Attributes:
        relevance: ``(B, C, T, H, W)``, or a tuple with one such tensor per model input (multi-pathway models).
        ms: per clip, the wall time its explanation took (the stored time for cache hits).
        timings: one value per timed explainer call (ms per clip of that call) plus the stored values of the hits:
            the samples of the overhead table (clips explained together share one measurement).
        hits: clips served from the cache.
        explained: the indices of the clips the explainer computed in this call, in the order of its calls
            (all clips, in order, without a cache); the rest were cache hits.
    """

    relevance: Tensor | tuple[Tensor, ...]
    ms: list[float]
    timings: list[float]
    hits: int = 0
    explained: list[int] = field(default_factory=list)


def _as_tuple(value: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (value,) if isinstance(value, Tensor) else tuple(value)


class CachedExplainer:
    """Call ``explainer(model, clips, target)`` through ``cache`` (or only timed, when ``cache`` is None or off).

    Args:
        explainer: ``explainer(model, clips, target) -> (B, C, T, H, W)`` (a tuple for multi-input models).
        cache: an :class:`AttributionCache`, or None.

    Example::

        >>> import torch
        >>> from motion_relevance.explain import GradCAM
        >>> from motion_relevance.explain.cache import CachedExplainer
        >>> from motion_relevance.models import C3D
        >>> net = C3D(num_classes=4, width=0.125, crop_size=32)
        >>> out = CachedExplainer(GradCAM(layer="conv5b"))(net, torch.randn(2, 3, 16, 32, 32), torch.tensor([0, 1]))
        >>> out.relevance.shape, len(out.ms)
        (torch.Size([2, 1, 16, 32, 32]), 2)
    """

    def __init__(self, explainer: Any, cache: AttributionCache | None = None) -> None:
        if not callable(explainer):
            raise TypeError(f"explainer must be callable as explainer(model, clips, target), got {explainer!r}")
        if cache is not None and not isinstance(cache, AttributionCache):
            raise TypeError(f"cache must be an AttributionCache or None, got {type(cache).__name__}")
        self.explainer = explainer
        self.cache = cache
        self._config: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.explainer, "name", type(self.explainer).__name__))

    @property
    def caching(self) -> bool:
        return self.cache is not None and self.cache.enabled

    def __repr__(self) -> str:
        return f"CachedExplainer({self.explainer!r}, cache={self.cache!r})"

    def __call__(
        self, model: nn.Module, clips: Tensor | Sequence[Tensor], target: Tensor, *, model_digest: str | None = None,
    ) -> Attribution:
        """Explain ``clips`` for ``target`` ``(B,)`` class indices; ``model_digest`` (a
        :func:`~motion_relevance.digests.state_digest` of ``model``) saves hashing the weights on every call."""
        inputs = _as_tuple(clips)
        n = inputs[0].shape[0]
        target = torch.as_tensor(target).reshape(-1)
        if target.shape[0] != n:
            raise ValueError(f"target must hold one class per clip ({n}), got shape {tuple(target.shape)}")
        keys: list[str] | None = None
        entries: list[CacheEntry | None] = [None] * n
        if self.caching:
            assert self.cache is not None
            if self._config is None:
                self._config = explainer_config(self.explainer)
            digest = model_digest or state_digest(model)
            keys = [self.cache.key(model=digest, explainer=self._config, inputs=[x[i] for x in inputs],
                                   target=int(t)) for i, t in enumerate(target.tolist())]
            entries = [self.cache.get(k) for k in keys]
            entries = self._matching(entries, keys, inputs)
        missing = [i for i, e in enumerate(entries) if e is None]
        fresh: dict[int, tuple[tuple[Tensor, ...], float]] = {}  # clip -> (relevance per input, ms)
        timings: list[float] = []
        whole: tuple[Tensor, ...] | None = None  # the explainer's own output when it explained every clip at once
        if missing:
            ms, whole = self._explain(model, clips, inputs, target, missing, keys, fresh)
            timings.append(ms)
            whole = whole if len(missing) == n else None
        hit_shape = next((tuple(r.shape for r in e.relevance) for e in entries if e is not None), None)
        fresh_shape = next((tuple(r.shape for r in f) for f, _ in fresh.values()), None)
        if hit_shape is not None and fresh_shape is not None and hit_shape != fresh_shape:
            # the fresh result decides: hits of another shape were written by another explainer version
            stale = [i for i, e in enumerate(entries) if e is not None]
            for i in stale:
                assert keys is not None and self.cache is not None
                self.cache.discard(keys[i], f"relevance of shape {hit_shape} where the explainer gives {fresh_shape}")
                entries[i] = None
            timings.append(self._explain(model, clips, inputs, target, stale, keys, fresh)[0])
            missing += stale
        hits = [e for e in entries if e is not None]
        device, dtype = inputs[0].device, inputs[0].dtype
        relevance = list(whole) if whole is not None else []
        for p in range(len(inputs) if whole is None else 0):
            parts = [fresh[i][0][p] if e is None else e.relevance[p].to(device=device, dtype=dtype)
                     for i, e in enumerate(entries)]
            relevance.append(torch.stack(parts))
        ms = [fresh[i][1] if e is None else e.ms for i, e in enumerate(entries)]
        timings += list(dict.fromkeys(e.ms for e in hits))
        result = relevance[0] if isinstance(clips, Tensor) else tuple(relevance)
        return Attribution(relevance=result, ms=ms, timings=timings, hits=len(hits), explained=missing)

    def _explain(self, model: nn.Module, clips: Tensor | Sequence[Tensor], inputs: tuple[Tensor, ...],
                 target: Tensor, which: list[int], keys: list[str] | None,
                 fresh: dict[int, tuple[tuple[Tensor, ...], float]]) -> tuple[float, tuple[Tensor, ...]]:
        """Explain the clips ``which`` in one call, store them, put them in ``fresh``; returns (ms per clip, output)."""
        n = inputs[0].shape[0]
        sub = [x if len(which) == n else x[which] for x in inputs]
        device = inputs[0].device
        with OverheadTimer(device) as timer:
            out = self.explainer(model, sub[0] if isinstance(clips, Tensor) else type(clips)(sub),
                                 target=(target if len(which) == n else target[which]).to(device))
        parts = tuple(r.detach() for r in _as_tuple(out))
        per_clip = timer.ms / len(which)
        for j, i in enumerate(which):
            fresh[i] = (tuple(r[j] for r in parts), per_clip)
            if keys is not None and self.cache is not None:
                self.cache.put(keys[i], fresh[i][0], per_clip)
        return per_clip, parts

    def _matching(self, entries: list[CacheEntry | None], keys: list[str], inputs: tuple[Tensor, ...]
                  ) -> list[CacheEntry | None]:
        """Hits whose shape cannot be this explainer's output for these inputs, or that disagree among themselves,
        are corrupt: discarded and recomputed."""
        assert self.cache is not None
        shapes: set[tuple[tuple[int, ...], ...]] = set()
        ok: list[CacheEntry | None] = []
        for entry, key in zip(entries, keys):
            if entry is not None:
                shape = tuple(tuple(r.shape) for r in entry.relevance)
                fits = len(shape) == len(inputs) and all(
                    s[1:] == tuple(x.shape[2:]) and s[0] in (1, x.shape[1]) for s, x in zip(shape, inputs))
                if fits:
                    shapes.add(shape)
                else:
                    self._reject(key, f"relevance of shape {shape} for inputs {[tuple(x.shape[1:]) for x in inputs]}")
                    entry = None
            ok.append(entry)
        if len(shapes) > 1:  # entries of one explainer must agree: recompute them all
            for i, key in enumerate(keys):
                if ok[i] is not None:
                    self._reject(key, f"entries of one explainer disagree in shape: {sorted(shapes)}")
                    ok[i] = None
        return ok

    def _reject(self, key: str, why: str) -> None:
        """A hit that turned out corrupt: discarded and counted as a miss instead."""
        assert self.cache is not None
        self.cache.discard(key, why)
        self.cache.hits -= 1
        self.cache.misses += 1
