"""The bottom layer: argument checks, clip shape checks, paths inside a root, config-to-plain conversion.

Every check takes ``(key, value, ...)`` in that order, returns the checked value, and raises ``ValueError`` (or
``TypeError`` for a wrong kind of object) with one line that names the key, the value and what is allowed. Nothing
here imports another module of the package: every layer may import it.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch

CLIP_LAYOUT = "(B, C, T, H, W)"


# ---------------------------------------------------------------------------------------------------- scalars
def _range(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(key: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as int, or raise naming ``key`` and the range ``[lo, hi]`` (``True`` is no integer)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}={value!r}: expected an integer in {_range(lo, hi)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{key}={value!r} out of range: allowed {_range(lo, hi)}")
    return value


def check_float(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """Return ``value`` as a finite float, or raise naming ``key`` and the range ``[lo, hi]``."""
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"{key}={value!r}: expected a finite number in {_range(lo, hi)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{key}={value!r} out of range: allowed {_range(lo, hi)}")
    return float(value)


def check_positive(key: str, value: Any, *, integer: bool = False, allow_none: bool = False) -> Any:
    """Return ``value`` if it is a positive (integer) number (or ``None`` when allowed), else raise naming ``key``."""
    if value is None and allow_none:
        return None
    ok = _is_number(value) and math.isfinite(float(value)) and value > 0
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{key} must be {kind}, got {value!r}")
    return int(value) if integer else value


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise listing the choices."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: allowed values are {allowed}")
    return value


def _two(value: Any) -> tuple[Any, list[Any]]:
    """``value`` (one number meaning the pair ``(v, v)``) and its items (empty when it is no sequence)."""
    if _is_number(value):
        value = (value, value)
    try:
        return value, list(value)
    except TypeError:
        return value, []


def check_pair(key: str, value: Any, lo: int = 1) -> tuple[int, int]:
    """Parse an ``(H, W)`` pair of integers >= ``lo`` (an int means square); raise naming ``key``."""
    value, items = _two(value)
    if len(items) != 2 or not all(_is_number(v) and float(v).is_integer() for v in items):
        raise ValueError(f"{key}={value!r}: expected an int or a pair (height, width) of integers >= {lo}")
    h, w = (int(v) for v in items)
    if h < lo or w < lo:
        raise ValueError(f"{key}={value!r} out of range: height and width must be >= {lo}")
    return h, w


def check_size(key: str, value: Any, lo: int = 1) -> tuple[int, int] | None:
    """Like :func:`check_pair`, with ``None`` meaning "keep the size"."""
    return None if value is None else check_pair(key, value, lo)


def check_unique(key: str, values: Iterable[Any]) -> list[Any]:
    """Return ``values`` as a list, or raise naming ``key`` and the first repeated value.

    For list-valued settings whose elements each mean one thing (sigmas, layers, explainer names, references): a
    repeat would run and count that element twice. Numbers compare by value (``2`` and ``2.0`` repeat).
    """
    seen: list[Any] = []
    for value in values:
        if value in seen:
            raise ValueError(f"{key}: {value!r} appears more than once; list each value once")
        seen.append(value)
    return seen


# ---------------------------------------------------------------------------------------------------- tensors
def check_clips(key: str, value: Any, *, dims: int = 5, floating: bool = True, finite: bool = False) -> torch.Tensor:
    """Return ``value`` if it is a non-empty tensor with ``dims`` dimensions (5: ``(B, C, T, H, W)``); raise naming
    ``key`` and the shape found. ``finite`` also refuses NaN and infinite entries."""
    layout = CLIP_LAYOUT if dims == 5 else "(C, T, H, W)" if dims == 4 else f"a {dims}-d tensor"
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{key} must be a torch.Tensor of shape {layout}, got {type(value).__name__}")
    if value.dim() != dims or value.numel() == 0:
        raise ValueError(f"{key} must have shape {layout} and no empty dimension, got {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{key} must be a floating-point tensor {layout}, got {value.dtype}")
    if finite and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{key} contains NaN or infinite values; check the data pipeline that produced it")
    return value


def check_same_shape(key: str, value: torch.Tensor, like_key: str, like: torch.Tensor) -> torch.Tensor:
    """Raise naming both keys unless ``value`` has the shape of ``like``."""
    if tuple(value.shape) != tuple(like.shape):
        raise ValueError(f"{key} must have the shape of {like_key} {tuple(like.shape)}, got {tuple(value.shape)}")
    return value


def resolve_targets(key: str, target: Any, batch: int, num_classes: int | None = None) -> torch.Tensor | None:
    """The explained class per clip as a ``(B,)`` long tensor: an int for all clips, a sequence or tensor of ``B``
    ints, or ``None`` (the caller decides, e.g. the predicted class). Classes outside ``[0, num_classes)`` are
    refused naming ``key``."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise ValueError(f"{key}={target!r}: expected a class index, a sequence of {batch} indices, or None")
    if isinstance(target, int):
        out = torch.full((batch,), target, dtype=torch.long)
    else:
        try:
            out = torch.as_tensor(target)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={target!r}: expected a class index or {batch} indices") from None
        if out.dim() == 0:
            out = out.expand(batch)
        if out.dim() != 1 or out.shape[0] != batch or out.is_floating_point() or out.dtype == torch.bool:
            raise ValueError(f"{key} must hold {batch} integer class indices (one per clip), got {tuple(out.shape)} "
                             f"{out.dtype}")
        out = out.long()
    if num_classes is not None and bool(((out < 0) | (out >= num_classes)).any()):
        raise ValueError(f"{key}: class indices must lie in [0, {num_classes}), got {out.tolist()}")
    return out


# ---------------------------------------------------------------------------------------------------- paths
def _where(source: str | os.PathLike[str] | None, line: int | None) -> str:
    if source is None:
        return ""
    return f"{source}:{line}: " if line is not None else f"{source}: "


def normalize_relpath(value: str, *, root: str | os.PathLike[str] | None = None,
                      source: str | os.PathLike[str] | None = None, line: int | None = None) -> str:
    """A relative path read from a file, in one spelling: ``/`` separators, no ``.`` parts, ``a/../b`` folded.

    Refused (``ValueError`` naming ``source:line`` and ``root``): an empty path, an absolute path, a drive letter,
    and one that leaves its root as written (``..`` above the top). Symlinks are not resolved here: reading through
    a link the user placed inside a data root stays allowed; see :func:`resolve_inside` before deleting.
    """
    where = _where(source, line)
    text = str(value).strip().replace("\\", "/")
    the_root = "the data root" if root is None else f"the data root {root}"
    if not text:
        raise ValueError(f"{where}empty path; give a path relative to {the_root}")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{where}{value!r} is an absolute path; give a path relative to {the_root}")
    norm = posixpath.normpath(text)
    if norm in (".", "..") or norm.startswith("../"):
        raise ValueError(f"{where}{value!r} leaves {the_root}; give a path to a file inside it")
    return norm


def resolve_inside(root: str | os.PathLike[str], rel: str | os.PathLike[str]) -> Path:
    """``root / rel`` with every symlink resolved, or ``ValueError`` if it lies outside ``root`` (also resolved).

    Use before deleting or overwriting: a link inside a root may point anywhere.
    """
    base = Path(root).resolve()
    rel_text = normalize_relpath(str(PurePosixPath(str(rel).replace("\\", "/"))), root=root)
    target = (base / rel_text).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"{rel!s} resolves to {target}, outside the data root {base}; refusing to touch it")
    return target


def writable_problem(folder: str | os.PathLike[str]) -> str | None:
    """``None`` if ``folder`` can be created and a file written in it, else the reason (the folder is created)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return err.strerror or str(err)
    return None


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(device, inode)`` of an existing file (two spellings or links of one file compare equal), else ``None``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], wait: bool = True) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; elsewhere no lock) for the ``with`` block. With
    ``wait=False`` a lock that another process holds raises :class:`BlockingIOError` at once instead of waiting."""
    try:
        import fcntl  # deferred: POSIX only
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------- values
def to_plain(value: Any, *, keep_tensors: bool = False) -> Any:
    """Config nodes, tensors and numpy scalars to plain Python (dicts, lists, floats, ints); NaN/inf to ``None``.

    OmegaConf containers are mappings and sequences whose items resolve their interpolations when read, so they
    convert like any other without importing omegaconf (the bottom layer stays free of config libraries).
    ``keep_tensors`` leaves tensors as they are (keyword arguments handed on to a library, e.g. a baseline clip).
    """
    if isinstance(value, torch.Tensor) and keep_tensors:
        return value
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, list | dict | str | tuple):
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, keep_tensors=keep_tensors) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [to_plain(v, keep_tensors=keep_tensors) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------- ranges
def check_range_pair(key: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                     integer: bool = False) -> tuple[Any, Any]:
    """Parse a ``(min, max)`` range of numbers in ``[lo, hi]`` (one number means ``(v, v)``); raise naming ``key``.

    ``integer`` makes both ends ints (:func:`check_int`), else floats (:func:`check_float`); ``min > max`` is refused.
    """
    value, items = _two(value)
    if len(items) != 2 or isinstance(value, str | bytes):
        raise ValueError(f"{key}={value!r}: expected a number or a pair (min, max)")
    check = check_int if integer else check_float
    a, b = (check(key, v, lo, hi) for v in items)
    if a > b:
        raise ValueError(f"{key}={value!r}: min must be <= max")
    return a, b
