"""A spawn-based DDP strategy that does not deadlock when rank 0 returns many metrics.

Lightning 2.6's ``ddp_spawn`` launcher joins the worker processes *before* it reads rank 0's results from a
``SimpleQueue``. A pipe holds about 64 KiB, so when rank 0's results (``trainer.callback_metrics`` and the test
output) pickle to more than that — the ~300 explanation metrics of ``mr-explain`` do — rank 0 blocks in ``put``,
the parent blocks in ``join`` and the run hangs after testing. :class:`DDPSpawnStrategy` reads the queue in a thread
while joining. Before each launch it also prepares the loggers in the parent: a CSV logger learns the header of
its existing ``metrics.csv`` (else testing after fitting, a second spawn, fails to rewrite it: Lightning's writer in
the fresh child knows only its own keys) and a W&B logger starts its run, so that the children attach to it
instead of opening one run per launch. Everything else is Lightning's ``DDPStrategy(start_method="spawn")``:
no re-launch of the script (so Hydra makes no extra run folders), gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import threading
from typing import Any

import torch.multiprocessing as mp
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.multiprocessing import (
    _check_bad_cuda_fork,
    _check_missing_main_guard,
    _GlobalStateSnapshot,
    _MultiProcessingLauncher,
)
from pytorch_lightning.trainer.states import TrainerFn

log = logging.getLogger(__name__)


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


class _DrainingLauncher(_MultiProcessingLauncher):
    """``_MultiProcessingLauncher`` whose parent reads the result queue while the workers run."""

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        if self._start_method in ("fork", "forkserver"):
            _check_bad_cuda_fork()
        if self._start_method == "spawn":
            _check_missing_main_guard()
        if self._already_fit and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            raise NotImplementedError("calling trainer.fit() twice with a spawn-based strategy is not supported")
        if trainer is not None:
            prepare_loggers(trainer)
        assert self._strategy.cluster_environment is not None
        os.environ["MASTER_PORT"] = str(self._strategy.cluster_environment.main_port)
        context = mp.get_context(self._start_method)
        return_queue = context.SimpleQueue()
        if self._start_method == "spawn":
            process_args = [trainer, function, args, kwargs, return_queue, _GlobalStateSnapshot.capture()]
        else:
            process_args = [trainer, function, args, kwargs, return_queue]
        received: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: received.setdefault("out", return_queue.get()), daemon=True)
        reader.start()
        process_context = mp.start_processes(
            self._wrapping_function, args=process_args, nprocs=self._strategy.num_processes,
            start_method=self._start_method, join=False,
        )
        self.procs = process_context.processes
        while not process_context.join():
            pass
        reader.join()
        worker_output = received["out"]
        if trainer is None:
            return worker_output
        self._already_fit |= trainer.state.fn == TrainerFn.FITTING
        self._recover_results_in_main_process(worker_output, trainer)
        return worker_output.trainer_results


class DDPSpawnStrategy(DDPStrategy):
    """``DDPStrategy(start_method="spawn")`` with a launcher that never deadlocks on large results."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("start_method", "spawn")
        super().__init__(**kwargs)

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        self._launcher = _DrainingLauncher(self, start_method=self._start_method)
