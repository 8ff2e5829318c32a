"""On-disk cache of baseline explanations, so that sweep jobs after the first skip Captum entirely.

A sigma sweep (``mr-explain -m selective.sigma=1,2,3,4,5``) explains the same clips with the same model and
explainers in every job; only the cheap selective step depends on sigma. :class:`AttributionCache` stores each
clip's baseline relevance ``(C, T, H, W)`` once and serves it to the later jobs (also across processes: entries
are written atomically, so parallel launchers such as submitit can share one folder).

Key (a SHA-256 over all of these; nothing else can select an entry):

* **model content**: :func:`state_hash` of the network's ``state_dict`` (names, shapes, dtypes and bytes of every
  tensor), so a retrained or changed checkpoint never reuses entries, wherever its file lives;
* **explainer config**: :func:`describe` of the explainer object (class and every public attribute: layer,
  upsampling, zB bounds, pooling rule, Captum kwargs …) plus the versions of motion_relevance, Captum and torch;
* **clip identity**: video path, first frame, the preprocessing (crop size, mean, std, scale, channel order, clip
  length) and the explained class.

Each entry also records the wall time the explanation took (ms per clip), so the overhead table still reports the
cost of the explanation, not of reading the file. The folder is bounded by ``max_bytes``: after each write the
least-recently-used entries (by mtime, refreshed on every hit) are deleted until the total fits. An unwritable
folder turns the cache off with one warning; a corrupt or mismatching entry is recomputed (counted in
``corrupt``), never fatal. Plain library code: no Lightning or Hydra here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

_FORMAT = 1
_SUFFIX = ".npz"


def _versions() -> dict[str, str]:
    import captum

    from motion_relevance import __version__

    return {"motion_relevance": __version__, "captum": captum.__version__, "torch": torch.__version__,
            "format": str(_FORMAT)}


def state_hash(module: nn.Module) -> str:
    """Content hash (hex, 32 chars) of ``module.state_dict()``: tensor names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:32]


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


def explainer_hash(explainer: Any) -> str:
    """Hash (hex, 32 chars) of an explainer's configuration and of the library versions that compute it."""
    blob = json.dumps({"explainer": describe(explainer), "versions": _versions()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def clip_identity(video: str, start: int, preprocessing: Mapping[str, Any] | None) -> str:
    """The identity of one clip: video path, first frame and the preprocessing that made the model input."""
    prep = json.dumps(describe(dict(preprocessing or {})), sort_keys=True, default=str)
    return f"{video}|{int(start)}|{prep}"


@dataclass
class CacheEntry:
    """One cached explanation: relevance ``(C, T, H, W)`` float32 and the ms the explanation took."""

    relevance: torch.Tensor
    ms: float


class AttributionCache:
    """LRU-bounded on-disk store of per-clip baseline relevance (see the module docstring).

    Args:
        dir: cache folder (created if missing); None disables caching.
        max_bytes: size bound of the folder in bytes; least-recently-used entries are evicted beyond it.
        enabled: False turns the cache off (every lookup misses, nothing is written).
        dtype: stored precision, ``"float32"`` (exact: a hit gives bit-identical metrics) or ``"float16"``.

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
        if not isinstance(max_bytes, (int, float)) or math.isnan(max_bytes) or max_bytes <= 0:
            raise ValueError(f"cache.max_bytes must be a positive number of bytes, got {max_bytes!r}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"cache.dtype must be 'float32' or 'float16', got {dtype!r}")
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
    @staticmethod
    def key(model_hash: str, explainer_key: str, clip: str, target: int) -> str:
        """Hex key of one entry from the model hash, explainer hash, clip identity and explained class."""
        blob = f"{model_hash}\n{explainer_key}\n{clip}\n{int(target)}"
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path | None:
        """File of entry ``key`` (two-level fan-out keeps folders small); None without a cache."""
        if self.dir is None:
            return None
        return self.dir / key[:2] / f"{key[2:40]}{_SUFFIX}"

    # ------------------------------------------------------------------ read/write
    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` or None (counted as a miss); a corrupt entry is deleted and counted."""
        path = self.path(key)
        if path is None or not path.exists():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    raise ValueError("stored key differs (hash collision or foreign file)")
                relevance = torch.from_numpy(np.asarray(z["relevance"], dtype=np.float32))
                ms = float(z["ms"])
            if relevance.ndim != 4 or not torch.isfinite(relevance).all():
                raise ValueError(f"relevance has shape {tuple(relevance.shape)} or non-finite values")
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
            log.warning("corrupt attribution cache entry %s (%s): recomputing", path, err)
            self.corrupt += 1
            self.misses += 1
            self._remove(path)
            return None
        self.hits += 1
        with contextlib.suppress(OSError):
            os.utime(path)  # LRU: a hit makes the entry recent
        return CacheEntry(relevance=relevance, ms=ms)

    def put(self, key: str, relevance: torch.Tensor, ms: float) -> None:
        """Store one clip's relevance ``(C, T, H, W)`` and its explanation time; evicts LRU entries beyond the bound."""
        path = self.path(key)
        if path is None:
            return
        array = relevance.detach().cpu().numpy().astype(self.dtype)
        buf = io.BytesIO()
        np.savez(buf, relevance=array, ms=np.float64(ms), key=np.str_(key))
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

    # ------------------------------------------------------------------ batches
    def lookup(self, keys: Sequence[str]) -> list[CacheEntry | None]:
        """Entries for a batch of keys (None where missing)."""
        return [self.get(k) for k in keys]

    def __repr__(self) -> str:
        return f"AttributionCache(dir={str(self.dir) if self.dir else None!r}, max_bytes={self.max_bytes})"
