"""Run-folder bookkeeping: the local record of every run, printing the config, closing W&B, one-line errors.

Errors a user fixes with one setting (an unwritable ``paths.log_dir``, a full disk, an interpolation to a key that
does not exist) end the run with one line (:class:`OneLineError`: Hydra prints its message without a traceback;
``HYDRA_FULL_ERROR=1`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from motion_relevance.checks import file_lock, to_plain, writable_problem
from motion_relevance.digests import cache_key, file_digest
from motion_relevance.pipeline import record as run_record
from motion_relevance.pipeline.record import METRICS_FILE, RunFolderFull
from motion_relevance.pipeline.report_page import write_report_page

log = logging.getLogger(__name__)


class OneLineError(CompactHydraException):
    """An error the user fixes with one setting: Hydra prints its message alone, without a traceback."""


def check_interpolations(cfg: DictConfig) -> None:
    """Resolve every value once before any work: an interpolation that fails (``data.clip_len=${oops}``) is one
    line naming the key, not a traceback from wherever the value is first read."""
    for key in cfg:
        if key == "hydra":
            continue
        try:
            node = cfg[key]
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            where = getattr(err, "full_key", None) or key
            message = (getattr(err, "msg", None) or str(err)).splitlines()[0]
            raise OneLineError(f"{where}: {message}; give {where} a plain value or an interpolation ${{...}} of a "
                               "key that exists") from None


def check_run_folder(run_dir: str | Path, log_dir: str | Path | None, key: str = "hydra.run.dir") -> None:
    """Refuse, before Hydra makes the run folder ``run_dir``, a ``paths.log_dir`` (or ``key``, when the run folder
    lies elsewhere) that cannot be written to: one line naming the key and the fix."""
    run_dir = Path(run_dir).absolute()
    logs = Path(log_dir).absolute() if log_dir is not None else None
    if logs is not None and (run_dir == logs or logs in run_dir.parents):
        problem = writable_problem(logs)
        if problem:
            raise OneLineError(f"paths.log_dir={log_dir} is not writable ({problem}); the run folder {run_dir} cannot "
                               "be made there; set paths.log_dir to a folder you can write to, e.g. "
                               "paths.log_dir=/tmp/motion_relevance/logs")
        return
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "not a folder" if not existing.is_dir() else "not writable"
        raise OneLineError(f"{key}={run_dir} cannot be made: {existing} is {reason}; set {key} (or paths.log_dir) to "
                           "a folder you can write to")


class CheckRunFolder(Callback):
    """Hydra callback (``hydra.callbacks.run_folder``): checks that the run (or sweep) folder can be made before
    Hydra makes it, so an unwritable ``paths.log_dir`` is one line naming the key, not a traceback of ``mkdir``.

    Hydra turns a callback's exceptions into warnings and goes on; the refusal is therefore a ``SystemExit`` with
    the one-line message (exit status 1)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            check_run_folder(OmegaConf.select(config, key), OmegaConf.select(config, "paths.log_dir"), key)
        except OneLineError as err:
            raise SystemExit(f"Error: {err}") from None


def set_aside_earlier_record(output_dir: Path) -> None:
    """A ``metrics.json`` in the run folder before the run starts is another run's (the folder was reused): it is
    renamed ``metrics.previous.json`` so that this run's record never merges with it."""
    path = output_dir / METRICS_FILE
    if path.exists():
        path.replace(output_dir / "metrics.previous.json")
        log.warning("%s held an earlier run's metrics: renamed metrics.previous.json", path)


#: ``metrics.json`` keys that mark a run that ended without an error, the configuration it ran, and its cost.
RUN_STATUS, CONFIG_DIGEST, RUN_SECONDS = "run_status", "config_digest", "run_seconds"
RUN_CPU_SECONDS = "run_cpu_seconds"
#: ``metrics.json`` key of the SHA-256 of each input file the run read (:data:`INPUT_FILE_KEYS`).
INPUT_DIGESTS = "input_digests"
#: Config keys that name an input file whose content, not only its path, makes the run (the checkpoint explained
#: or resumed): a finished record of the same configuration is stale once that file has changed.
INPUT_FILE_KEYS = ("ckpt_path",)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (data-loader workers), all threads:
    a job's difference of two readings is its CPU time, whatever else shares the machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def config_digest(cfg: DictConfig) -> str:
    """Digest of the resolved configuration (without Hydra's node and ``skip_finished``): equal digests, same run."""
    plain = {k: v for k, v in loggable_config(cfg).items() if k != "skip_finished"}
    return cache_key("run_config", config=plain)


def _input_files(cfg: DictConfig) -> dict[str, Path]:
    """The existing input files named by :data:`INPUT_FILE_KEYS` in ``cfg`` (a missing one is left to the run's own
    check)."""
    paths = {key: Path(str(cfg.get(key))) for key in INPUT_FILE_KEYS if cfg.get(key)}
    return {key: path for key, path in paths.items() if path.is_file()}


def input_digests(cfg: DictConfig) -> dict[str, str]:
    """SHA-256 of each input file of ``cfg`` (:func:`_input_files`)."""
    return {key: file_digest(path) for key, path in _input_files(cfg).items()}


def _stale_inputs(cfg: DictConfig, metrics: Mapping[str, Any], record: Path) -> list[str]:
    """The input files that changed since ``record`` was written: by digest where the record holds one, else (a
    record written before digests were kept) by a modification time later than the record's."""
    stored = metrics.get(INPUT_DIGESTS)
    if isinstance(stored, Mapping):
        changed = [key for key, digest in input_digests(cfg).items() if stored.get(key) != digest]
    else:
        written = record.stat().st_mtime
        changed = [key for key, path in _input_files(cfg).items() if path.stat().st_mtime > written]
    return [f"{key}={cfg.get(key)}" for key in changed]


def finished_record(cfg: DictConfig, output_dir: Path, digest: str) -> dict[str, Any] | None:
    """With ``skip_finished``: the record in ``output_dir`` if it holds a finished run of this very configuration
    (``digest``: :func:`config_digest` of the configuration as given) and input files (a resumed sweep does not run
    its finished jobs again, and re-explains a checkpoint that was trained again), else ``None`` (the run goes
    ahead, and logs why)."""
    if not cfg.get("skip_finished"):
        return None
    path = output_dir / METRICS_FILE
    metrics = run_record.read_metrics_file(path)
    if metrics.get(RUN_STATUS) != "finished":
        return None
    if metrics.get(CONFIG_DIGEST) != digest:
        log.info("skip_finished: %s holds a finished run of another configuration; running this one", path)
        return None
    stale = _stale_inputs(cfg, metrics, path)
    if stale:
        log.info("skip_finished: %s holds a finished run of this configuration, but %s changed since; running it "
                 "again", path, ", ".join(stale))
        return None
    log.info("skip_finished: %s holds a finished run of this configuration; not run again", path)
    return metrics


def loggable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own node, as plain containers (for logger hyperparameters)."""
    return {
        str(key): OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        for key, node in cfg.items()
        if key != "hydra"
    }


def cpu_threads(cfg: DictConfig) -> int | None:
    """Torch intra-op threads for ``cfg.threads``: an int, ``null`` (torch's default) or ``auto``.

    ``auto`` leaves one core to each DataLoader worker when the run is on the CPU: ``max(1, usable cores -
    data.num_workers)``, because oversubscribed cores make each of torch's small ops wait on a thread that has
    no core (docs/performance.md has the figures).
    """
    threads = cfg.get("threads", None)
    if threads is None:
        return None
    if str(threads) != "auto":
        value = int(threads)
        if value < 1:
            raise ValueError(f"threads={threads!r}: allowed values are auto, null or an integer >= 1")
        return value
    trainer = cfg.get("trainer") or {}
    if str(trainer.get("accelerator", "cpu")) not in ("cpu", "auto") or (
        str(trainer.get("accelerator")) == "auto" and torch.cuda.is_available()
    ):
        return None  # the GPU does the work: keep torch's default for the host side
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int((cfg.get("data") or {}).get("num_workers", 0) or 0)
    return max(1, usable - workers)


def process_rank() -> int:
    """This process's global rank: from ``torch.distributed`` once initialised, else the launcher's environment
    (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``), else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


class RankZeroFilter(logging.Filter):
    """Lets the project's info and warning records through on rank zero only (errors on every rank), so a
    2-process run does not print each warning twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("motion_relevance") or record.levelno >= logging.ERROR:
            return True
        return process_rank() == 0


def install_rank_zero_filter() -> None:
    """Attach :class:`RankZeroFilter` to the root logger's handlers (console and run log), once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RankZeroFilter) for f in handler.filters):
            handler.addFilter(RankZeroFilter())


def apply_extras(cfg: DictConfig) -> None:
    """Run-wide settings before any work: rank-zero logging, torch CPU threads (``cfg.threads``), and the niceties
    of ``cfg.extras`` (print the config tree, silence warnings)."""
    install_rank_zero_filter()
    threads = cpu_threads(cfg)
    if threads is not None:
        torch.set_num_threads(threads)
        log.info("torch CPU threads: %d", threads)
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=cfg.paths.get("output_dir"))


def print_config_tree(cfg: DictConfig, save_to: str | None = None) -> None:
    """Print the resolved config as a rich tree (and save it as ``config_tree.log``)."""
    import rich  # deferred: only when the config is printed
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    for key, node in cfg.items():
        if key == "hydra":
            continue
        branch = tree.add(str(key), guide_style="dim")
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to:
        with open(Path(save_to) / "config_tree.log", "w") as handle:
            rich.print(tree, file=handle)


def finish_wandb() -> None:
    """Close the W&B run if one is open, so multirun jobs stay separate runs."""
    try:
        import wandb  # deferred: W&B, slow to import
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        log.info("Closing the W&B run")
        try:
            wandb.finish()
        except Exception as err:  # noqa: BLE001 - never lose results over W&B
            log.error("wandb.finish() failed: %s", err)


def record_data_counts(datamodule: Any, loggers: list[Any], metrics: dict[str, Any]) -> None:
    """What the data's split files held (missing videos skipped, duplicates and overlap kept knowingly, classes
    without training videos) as ``data/<count>`` in the run's metrics and loggers."""
    counts = getattr(datamodule, "data_counts", None)
    if not counts:
        return
    values = {f"data/{name}": int(value) for name, value in counts.items()}
    metrics.update(values)
    for logger in loggers:
        logger.log_metrics({k: float(v) for k, v in values.items()})


def metric_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value of ``name`` in ``metrics`` for sweepers; a clear error if it was never logged."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} was not logged; logged metrics are: {', '.join(sorted(metrics))}. "
            "Set optimized_metric to one of them."
        )
    return float(to_plain(metrics[name]))


def _full_disk(failure: BaseException | None) -> str | None:
    """The one-line message of a full disk: :class:`RunFolderFull` raised here, or in a spawned DDP process (whose
    error reaches the parent as text)."""
    if isinstance(failure, RunFolderFull):
        return str(failure)
    marker = f"{RunFolderFull.__name__}: "
    if failure is not None and type(failure).__name__ == "ProcessRaisedException" and marker in str(failure):
        return str(failure).split(marker, 1)[1].splitlines()[0]
    return None


def write_page(output_dir: Path) -> Path | None:
    """``report.html`` of the run folder (:func:`motion_relevance.pipeline.report_page.write_report_page`); a failure
    is one warning, never the end of a run whose numbers are already written."""
    try:
        return write_report_page(output_dir)
    except Exception as err:  # noqa: BLE001 - the page is a view of files that are already safe
        log.warning("Could not write %s: %s: %s", output_dir / "report.html", type(err).__name__, err)
        return None


def run_and_record(
    cfg: DictConfig,
    task: Callable[[DictConfig], tuple[dict[str, Any], dict[str, Any]]],
    summary: Callable[[dict[str, Any]], None] | None = None,
    page: bool = True,
) -> dict[str, Any]:
    """Run an entry point's ``task(cfg)`` so that nothing is lost when it fails: W&B is finished, the metrics
    gathered so far go to ``metrics.json`` (merged with what the run's explanation callback recorded there) and
    ``Run folder: <path>`` is always the last line printed. A config interpolation that fails and a full disk end
    the run with one line (:class:`OneLineError`)."""
    output_dir = Path(cfg.paths.output_dir)
    check_interpolations(cfg)
    with run_folder_lock(output_dir):
        return _run_and_record(cfg, task, summary, page, output_dir)


#: The file in a run folder whose lock the running process holds (:func:`run_folder_lock`).
RUN_LOCK = ".run.lock"


@contextlib.contextmanager
def run_folder_lock(output_dir: Path) -> Iterator[None]:
    """One run at a time in a run folder: an exclusive, non-blocking lock (:func:`~motion_relevance.checks.file_lock`)
    on ``<output_dir>/.run.lock`` for the whole run. A second process given the same folder (two sweeps over the same
    grid, a job started twice) stops with one line before it touches the first one's record or checkpoints. Rank
    zero only: a DDP run's other ranks share its folder."""
    with contextlib.ExitStack() as stack:
        if process_rank() == 0:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(file_lock(output_dir / RUN_LOCK, wait=False))
            except BlockingIOError:
                raise OneLineError(
                    f"{output_dir} is in use: another process is running there (it holds {output_dir / RUN_LOCK}); "
                    "wait for it to end, or give this run a folder of its own (hydra.run.dir, or hydra.sweep.dir / "
                    "hydra.sweep.subdir in a multirun)") from None
            except OSError:
                pass  # the run's own checks name what is in the way (a file, no write permission)
        yield


def _run_and_record(
    cfg: DictConfig,
    task: Callable[[DictConfig], tuple[dict[str, Any], dict[str, Any]]],
    summary: Callable[[dict[str, Any]], None] | None,
    page: bool,
    output_dir: Path,
) -> dict[str, Any]:
    # the configuration as given: the task may fill in keys (a model's preprocessing, a checkpoint's pathways), and
    # the next run's skip_finished compares against the configuration as given too
    digest = config_digest(cfg)
    done = finished_record(cfg, output_dir, digest)
    if done is not None:
        if summary is not None:
            summary(done)
        print(f"Run folder: {output_dir}", flush=True)
        return done
    set_aside_earlier_record(output_dir)
    apply_extras(cfg)
    metrics: dict[str, Any] = {}
    failure: BaseException | None = None
    started, cpu_started, inputs = time.perf_counter(), cpu_seconds(), input_digests(cfg)
    try:
        metrics, _ = task(cfg)
    except BaseException as err:  # noqa: BLE001 - re-raised below, after the record is safe
        failure = err
    finish_wandb()
    full = _full_disk(failure)
    if metrics and failure is None:  # wall and CPU time of the whole task (data, model, work, record)
        metrics = {**metrics, RUN_STATUS: "finished", CONFIG_DIGEST: digest,
                   RUN_SECONDS: time.perf_counter() - started, RUN_CPU_SECONDS: cpu_seconds() - cpu_started,
                   INPUT_DIGESTS: inputs}
    if metrics:
        try:
            run_record.write_metrics(output_dir, metrics, merge=True)
        except RunFolderFull as err:
            full = full or str(err)
        except OSError as err:
            if failure is None:
                raise
            log.error("Could not write %s: %s", output_dir / METRICS_FILE, err)
    if page and full is None and (output_dir / METRICS_FILE).exists():
        write_page(output_dir)
    if summary is not None:
        summary(metrics)
    print(f"Run folder: {output_dir}", flush=True)
    if full is not None:
        raise OneLineError(full) from None
    if failure is not None:
        raise failure
    return metrics
