"""Wall-clock timing of explanation steps (CachedExplainer, the pipeline) for the overhead table.

The metric itself is `metrics.classes.Overhead`; docs/method.md, "Metrics" (Table 4)."""

from __future__ import annotations

import time
from types import TracebackType

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued device work: CUDA (``torch.cuda.synchronize``) or MPS; a no-op on CPU.

    With ``device=None`` CUDA is synchronised only if it is already initialised (never initialise it here).
    """
    dev = torch.device(device) if device is not None else None
    if dev is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    elif dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


class OverheadTimer:
    """Context manager measuring the wall time of its block in ms, device synchronised before each clock read.

    Wrap only the explanation (or selective) step, not data loading::

        with OverheadTimer(device) as timer:
            relevance = explainer(clip)
        overhead.update(timer.ms / clip.shape[0])   # per-clip time

    Attributes:
        ms: elapsed milliseconds (NaN until the block exits).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.ms: float = float("nan")
        self._t0 = 0.0

    def __enter__(self) -> OverheadTimer:
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        synchronize(self.device)
        self.ms = (time.perf_counter() - self._t0) * 1e3
