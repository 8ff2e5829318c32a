"""Skipping corrupt samples: the collate function that drops them and a tracker that stops a run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate


def collate_skipping(batch: Sequence[dict[str, Any] | None], dataset: Any = None) -> dict[str, Any]:
    """Collate dataset items, dropping ``None`` (undecodable) ones.

    Adds ``"skipped"``: list of the bad video paths of this batch (always present, usually empty). The paths
    come from ``dataset.pop_skipped()`` when a dataset is given (bind it with ``functools.partial``), else each
    dropped item is reported as ``"<unknown>"``. A batch whose items all failed has ``"label"`` of length 0
    and ``"clip"`` of shape ``(0,)``: training steps should skip it.
    """
    good = [b for b in batch if b is not None]
    n_bad = len(batch) - len(good)
    skipped: list[str] = list(dataset.pop_skipped()) if dataset is not None else []
    if len(skipped) < n_bad:
        skipped += ["<unknown>"] * (n_bad - len(skipped))
    if good:
        out = default_collate(good)
    else:
        out = {
            "clip": torch.empty(0),
            "label": torch.empty(0, dtype=torch.long),
            "video": [],
            "start": torch.empty(0, dtype=torch.long),
        }
    out["skipped"] = skipped
    return out


class FailureTracker:
    """Count good and bad samples; raise once the fraction of bad ones exceeds ``max_fraction``.

    Args:
        max_fraction: allowed fraction of bad samples in [0, 1] (0 = any bad sample stops the run).
        min_samples: only judge after this many samples, so one early failure in a tiny prefix does not trip it.
    """

    def __init__(self, max_fraction: float = 0.05, min_samples: int = 1) -> None:
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ValueError(f"max_fraction={max_fraction!r} out of range: allowed [0, 1]")
        self.max_fraction = float(max_fraction)
        self.min_samples = int(min_samples)
        self.n_ok = 0
        self.bad_paths: list[str] = []

    @property
    def n_bad(self) -> int:
        return len(self.bad_paths)

    @property
    def fraction(self) -> float:
        total = self.n_ok + self.n_bad
        return self.n_bad / total if total else 0.0

    def update(self, n_ok: int, bad_paths: Sequence[str] = ()) -> None:
        """Add a batch's counts; raises ``RuntimeError`` naming the first bad files when over the limit."""
        self.n_ok += int(n_ok)
        self.bad_paths.extend(bad_paths)
        if self.n_bad and self.n_ok + self.n_bad >= self.min_samples and self.fraction > self.max_fraction:
            first = ", ".join(self.bad_paths[:5])
            raise RuntimeError(
                f"{self.n_bad} of {self.n_ok + self.n_bad} samples could not be decoded "
                f"({self.fraction:.1%} > max_fraction {self.max_fraction:.1%}); first bad files: {first}"
            )

    def reset(self) -> None:
        self.n_ok = 0
        self.bad_paths = []
