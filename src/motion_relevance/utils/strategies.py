"""A spawn-based DDP strategy that does not deadlock when rank 0 returns many metrics.

Lightning 2.6's ``ddp_spawn`` launcher joins the worker processes *before* it reads rank 0's results from a
``SimpleQueue``. A pipe holds about 64 KiB, so when rank 0's results (``trainer.callback_metrics`` and the test
output) pickle to more than that — the ~300 explanation metrics of ``mr-explain`` do — rank 0 blocks in ``put``,
the parent blocks in ``join`` and the run hangs after testing. :class:`DDPSpawnStrategy` gives Lightning's launcher a
queue that the parent drains on a thread while it joins. Before each launch it also prepares the loggers in the
parent: a CSV logger learns the header of its existing ``metrics.csv`` (else testing after fitting, a second spawn,
fails to rewrite it: Lightning's writer in the fresh child knows only its own keys) and a W&B logger starts its run,
so that the children attach to it instead of opening one run per launch (rank 0's explanation callback writes the
run folder itself, so no callback state has to travel back). Everything else is Lightning's
``DDPStrategy(start_method="spawn")``: no re-launch of the script (so Hydra makes no extra run folders), gloo on
CPUs, NCCL on GPUs.

Two private Lightning names are used, each in one place below: the launcher class (``_MultiProcessingLauncher``)
and the strategy's ``_configure_launcher`` hook. ``tests/test_strategies.py`` fails loudly when a Lightning release
changes either.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import multiprocessing.queues
import os
import threading
from collections.abc import Iterator
from typing import Any

import torch.multiprocessing as mp
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.strategies import DDPStrategy

# Private: the launcher Lightning's DDPStrategy builds for start_method="spawn"; we only wrap its launch().
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher

log = logging.getLogger(__name__)

__all__ = ["DDPSpawnStrategy", "DrainingQueue", "prepare_loggers"]


def prepare_loggers(trainer: Any) -> None:
    """Make the loggers safe to pickle into spawned workers (see the module docstring)."""
    for logger in getattr(trainer, "loggers", None) or []:
        try:
            if isinstance(logger, CSVLogger) and os.path.isfile(os.path.join(logger.log_dir, "metrics.csv")):
                writer = logger.experiment
                with open(writer.metrics_file_path, newline="") as handle:
                    header = next(csv.reader(handle), [])
                writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))
            elif isinstance(logger, WandbLogger):
                with contextlib.suppress(AttributeError):
                    _ = logger.experiment  # start the run here: workers attach to it
        except Exception as err:  # noqa: BLE001 - logging must never stop a run
            log.warning("could not prepare logger %s for spawned workers: %s", type(logger).__name__, err)


class DrainingQueue(multiprocessing.queues.SimpleQueue):
    """A ``SimpleQueue`` whose creating process reads the first item on a thread as soon as it is sent, so the
    sender never blocks on a full pipe; ``get()`` in that process returns it. Other processes use it as usual."""

    def __init__(self, *, ctx: Any) -> None:
        super().__init__(ctx=ctx)
        self._items: list[Any] = []
        self._reader_thread = threading.Thread(target=lambda: self._items.append(super(DrainingQueue, self).get()),
                                               daemon=True)
        self._reader_thread.start()

    def get(self) -> Any:
        thread = self.__dict__.get("_reader_thread")
        if thread is None:  # unpickled in another process: a plain SimpleQueue
            return super().get()
        thread.join()
        return self._items.pop(0)


@contextlib.contextmanager
def _draining_queues(start_method: str) -> Iterator[None]:
    """While launching, the spawn context's ``SimpleQueue()`` (which Lightning's launcher calls) makes
    :class:`DrainingQueue` objects."""
    context = mp.get_context(start_method)
    context.SimpleQueue = lambda: DrainingQueue(ctx=context)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del context.SimpleQueue  # back to the class's method


class _DrainingLauncher(_MultiProcessingLauncher):
    """Lightning's launcher with loggers prepared in the parent and results drained while the workers run."""

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        if trainer is not None:
            prepare_loggers(trainer)
        with _draining_queues(self._start_method):
            return super().launch(function, *args, trainer=trainer, **kwargs)


class DDPSpawnStrategy(DDPStrategy):
    """``DDPStrategy(start_method="spawn")`` with a launcher that never deadlocks on large results."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("start_method", "spawn")
        super().__init__(**kwargs)

    # Private hook: DDPStrategy builds its launcher here; ours wraps Lightning's with the draining queue.
    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        self._launcher = _DrainingLauncher(self, start_method=self._start_method)
