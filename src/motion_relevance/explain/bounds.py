"""zB bounds of a normalised input: the pixel range after normalisation (used by DTD's first-layer rule)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["zb_bounds_from_normalization"]


def zb_bounds_from_normalization(
    mean: float | Sequence[float], std: float | Sequence[float], scale: float = 255.0
) -> tuple[list[float], list[float]]:
    """Smallest and largest value a normalised pixel can take, per channel.

    The data pipeline normalises ``clip = (frames / scale - mean) / std`` with ``frames`` in ``[0, 255]``, so
    ``lower_c = -mean_c / std_c`` and ``upper_c = (255 / scale - mean_c) / std_c``. Give ``mean``/``std`` in the
    units of ``frames / scale`` (``scale=255``: ``[0, 1]`` units; ``scale=1``: pixel units, e.g. the C3D port's
    mean ``(90.25, 97.66, 101.41)`` with ``std=1``).

    Returns:
        ``(lower, upper)``: two lists with one value per channel (the longer of ``mean`` / ``std``).
    """
    means = [float(m) for m in (mean if isinstance(mean, Sequence) else [mean])]
    stds = [float(s) for s in (std if isinstance(std, Sequence) else [std])]
    if not means or not stds:
        raise ValueError("mean and std must not be empty")
    n = max(len(means), len(stds))
    if len(means) not in (1, n) or len(stds) not in (1, n):
        raise ValueError(f"mean ({len(means)} values) and std ({len(stds)} values) must have the same length")
    means, stds = means * (n // len(means)), stds * (n // len(stds))
    if not all(math.isfinite(s) and s > 0 for s in stds) or not all(math.isfinite(m) for m in means):
        raise ValueError(f"std must be positive and mean finite, got mean={means}, std={stds}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    top = 255.0 / float(scale)
    return [(0.0 - m) / s for m, s in zip(means, stds)], [(top - m) / s for m, s in zip(means, stds)]
