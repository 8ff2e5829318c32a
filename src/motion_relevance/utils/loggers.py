"""Loggers that never take a run down with them.

W&B runs offline by default (``WANDB_MODE=offline``, set by the entry points unless the user set it), so no account
is needed; ``wandb sync <run folder>/wandb/offline-run-*`` uploads later. If W&B itself fails (no account or key in
online mode, an unreachable server, a broken install, a full disk), :class:`SafeWandbLogger` logs the problem once
and turns into a no-op: the CSV logger and the run's ``metrics.json`` still hold the complete record. Starting the
run waits at most ``init_timeout`` seconds (60 by default) for the W&B server.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)

DEFAULT_WANDB_MODE = "offline"


def default_wandb_offline() -> str:
    """Set ``WANDB_MODE=offline`` unless the user chose a mode; returns the mode in force."""
    return os.environ.setdefault("WANDB_MODE", DEFAULT_WANDB_MODE)


class _NoRun:
    """Stands in for a W&B run that could not start: every attribute is a no-op callable returning itself."""

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _NoRun:
        return self

    def __bool__(self) -> bool:
        return False


class SafeWandbLogger(WandbLogger):
    """A :class:`WandbLogger` whose failures are reported once and then ignored.

    Args:
        init_timeout: seconds to wait for the W&B server when the run starts (1-60; W&B's own default is 90).
        *args, **kwargs: as :class:`WandbLogger`.
    """

    def __init__(self, *args: Any, init_timeout: float = 60.0, **kwargs: Any) -> None:
        default_wandb_offline()
        if isinstance(init_timeout, bool) or not isinstance(init_timeout, (int, float)) or not 1 <= init_timeout <= 60:
            raise ValueError(f"logger.wandb.init_timeout={init_timeout!r}: allowed 1 to 60 seconds")
        import wandb  # deferred: W&B, slow to import

        settings = kwargs.pop("settings", None)
        settings = dict(settings) if isinstance(settings, dict) else {}
        settings.setdefault("init_timeout", float(init_timeout))
        super().__init__(*args, settings=wandb.Settings(**settings), **kwargs)
        self._failed = False

    @property
    def experiment(self) -> Any:
        """The W&B run, started on first use; a no-op stand-in once W&B has failed."""
        if self._failed:
            return _NoRun()
        try:
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        except Exception as err:  # noqa: BLE001 - any W&B failure must not end the run
            self._fail("starting the run", err)
            return _NoRun()

    def _fail(self, what: str, err: BaseException) -> None:
        self._failed = True
        self._experiment = None
        log.error(
            "W&B failed while %s (%s: %s); W&B logging is off for the rest of this run, "
            "the CSV log and metrics.json in the run folder stay complete.",
            what, type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "",
        )

    def _guard(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        if self._failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any W&B failure must not end the run
            self._fail(what, err)
            return None

    @property
    def failed(self) -> bool:
        """True once W&B has failed and logging to it stopped."""
        return self._failed

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._guard("logging metrics", super().log_metrics, metrics, step)

    def log_hyperparams(self, params: Any) -> None:
        self._guard("logging hyperparameters", super().log_hyperparams, params)

    def log_table(self, *args: Any, **kwargs: Any) -> None:
        self._guard("logging a table", super().log_table, *args, **kwargs)

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        self._guard("logging an image", super().log_image, *args, **kwargs)

    def log_video(self, *args: Any, **kwargs: Any) -> None:
        self._guard("logging a video", super().log_video, *args, **kwargs)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._guard("recording a checkpoint", super().after_save_checkpoint, checkpoint_callback)

    def finalize(self, status: str) -> None:
        self._guard("finishing the run", super().finalize, status)

    def run_dir(self) -> str | None:
        """Folder of this run's W&B files (``…/wandb/offline-run-…``), or None if W&B never started."""
        if self._failed or self._experiment is None:
            return None
        return getattr(self._experiment, "dir", None)
