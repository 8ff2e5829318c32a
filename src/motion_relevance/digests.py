"""One way to key a cache: every input that changes a cached value goes into its key.

Both on-disk caches (baseline explanations in :mod:`motion_relevance.explain.cache`, optical flow in
:mod:`motion_relevance.metrics.flow`) build their keys with :func:`cache_key` from named parts. The parts are
canonicalised (mappings sorted, floats by ``repr``, tensors and arrays by a content digest), so equal inputs give
equal keys in every process and on every machine, and a change of any part gives another key.

The identity of a clip is the digest of the tensor the cached computation reads (the normalised model input for
explanations, the uint8 frames for flow): it covers the video file, the first frame, the decoder and every
preprocessing option at once, so regenerating data in place or changing ``data.stride`` can never reuse an entry.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["KEY_FORMAT", "cache_key", "canonical", "file_digest", "state_digest", "tensor_digest"]

#: Bumped whenever the key layout changes, so old entries are never read under a new meaning.
KEY_FORMAT = 2


def tensor_digest(value: torch.Tensor | np.ndarray) -> str:
    """SHA-256 (hex, 32 chars) of a tensor's dtype, shape and bytes (any device; read as contiguous CPU data)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        dtype, shape = str(t.dtype), tuple(t.shape)
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""  # 0-dim too
    else:
        a = np.ascontiguousarray(value)
        dtype, shape, data = str(a.dtype), tuple(a.shape), a.tobytes()
    digest = hashlib.sha256(f"{dtype}|{shape}|".encode())
    digest.update(data)
    return digest.hexdigest()[:32]


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in ``chunk``-byte pieces): the identity of an input file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(chunk), b""):
            digest.update(piece)
    return digest.hexdigest()


def state_digest(module: nn.Module) -> str:
    """Content digest (hex, 32 chars) of ``module.state_dict()``: every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{tensor_digest(tensor)}|".encode())
    return digest.hexdigest()[:32]


def canonical(value: Any) -> Any:
    """A JSON-able canonical form of ``value`` (mappings sorted by key, tensors digested, floats by ``repr``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value) if not math.isnan(value) else "nan"
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return {"tensor": tensor_digest(value)}
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, np.generic):
        return canonical(value.item())
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, Sequence):
        return [canonical(v) for v in value]
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}; pass plain values or tensors")


def cache_key(kind: str, **parts: Any) -> str:
    """Hex SHA-256 key of a cached value of ``kind`` (``"attribution"``, ``"flow"`` …) from its named inputs."""
    blob = json.dumps({"kind": kind, "format": KEY_FORMAT, "parts": canonical(parts)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
