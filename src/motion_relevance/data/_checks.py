"""Config validation helpers: every error names the offending key and the allowed range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_int(key: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as int, or raise ``ValueError`` naming ``key`` and the range ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}={value!r}: expected an integer in {_range(lo, hi)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{key}={value!r} out of range: allowed {_range(lo, hi)}")
    return value


def check_float(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """Return ``value`` as float, or raise ``ValueError`` naming ``key`` and the range ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}={value!r}: expected a number in {_range(lo, hi)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{key}={value!r} out of range: allowed {_range(lo, hi)}")
    return float(value)


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError`` listing the choices."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: allowed values are {allowed}")
    return value


def check_size(key: str, value: Any, lo: int = 1) -> tuple[int, int] | None:
    """Parse an ``(H, W)`` size (int means square; ``None`` means keep); raise naming ``key``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r}: expected an int or a pair (height, width) >= {lo}") from None
    if h < lo or w < lo:
        raise ValueError(f"{key}={value!r} out of range: height and width must be >= {lo}")
    return h, w


def _range(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
