"""A small Hydra sweeper that searches hyperparameters with current Optuna (>= 4): ``hydra/sweeper=mr_optuna``.

Why not the official ``hydra-optuna-sweeper``: every release (1.2.0, 1.3.0) pins ``optuna<3``; Optuna 2.10 still
runs in memory with numpy 2, but its RDB storage (``storage: sqlite:///…``, needed to resume or share a study)
fails under SQLAlchemy 2, which is what installs next to everything else today. This plugin keeps the official
plugin's config keys (``sampler``, ``direction``, ``study_name``, ``storage``, ``n_trials``, ``n_jobs``,
``params``) and its search-space grammar, so a config written for one works with the other:

* ``interval(a, b)`` -> float (int when both ends are ints) uniform; ``tag(log, interval(a, b))`` -> log scale;
* ``choice(a, b, …)`` or ``a,b,…`` -> categorical; ``range(a, b, step)`` -> categorical of its values;
* a plain value fixes the parameter.

Search dimensions come from ``hydra.sweeper.params`` and from sweep overrides on the command line (which win);
other command-line overrides are passed to every trial. Trials run in batches of ``n_jobs`` through the configured
launcher (basic, submitit_local, submitit_slurm …). The task function must return a float (the objective).
Failed trials are recorded as FAIL and the search goes on; if every trial fails the sweep raises.

Written into the sweep folder: ``multirun.yaml`` (the config), ``optimization_results.yaml`` (``best_params``,
``best_value``, ``best_trial``, ``n_trials``, ``direction``) and ``trials.csv`` (number, state, value, job folder,
parameters), rewritten after every batch so a killed search keeps what it found.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from motion_relevance.utils.mapping import flatten_mapping

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")


def distribution_from_override(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or the plain value string for a fixed one."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or override.is_range_sweep():
        assert isinstance(value, (ChoiceSweep, RangeSweep))
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return optuna.distributions.CategoricalDistribution(choices)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        if value.start is None or value.end is None:
            raise ValueError(f"{override.input_line}: an interval needs both ends")
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log_scale)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise NotImplementedError(f"{override.input_line}: glob sweeps are not supported by the Optuna sweeper")


def _flatten(params: Mapping[str, Any]) -> dict[str, str]:
    """``{"selective": {"sigma": "interval(1,5)"}}`` and ``{"selective.sigma": …}`` alike -> dotted keys."""
    return {name: str(value) for name, value in flatten_mapping(params).items()}


def _job_dir(ret: Any) -> str:
    """The job's output folder (``hydra.runtime.output_dir``), or '' if unknown."""
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:  # noqa: BLE001 - bookkeeping only
        return ""


class MROptunaSweeper(Sweeper):
    """Optuna search over Hydra overrides (see the module docstring). Arguments mirror the official plugin."""

    def __init__(
        self,
        sampler: Any = None,
        direction: str = "maximize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: Mapping[str, Any] | None = None,
        max_failure_rate: float = 1.0,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction must be one of {DIRECTIONS}, got {direction!r}")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper.n_trials and n_jobs must be >= 1, got {n_trials} and {n_jobs}")
        if isinstance(sampler, (Mapping, DictConfig)):  # not instantiated by Hydra (e.g. _target_ missing)
            raise TypeError(f"hydra.sweeper.sampler must be an optuna sampler (_target_: optuna.samplers.…), "
                            f"got {sampler!r}")
        self.sampler = sampler
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.params = _flatten(OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig)
                               else dict(params or {}))
        self.max_failure_rate = float(max_failure_rate)
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # ------------------------------------------------------------------ search space
    def _search_space(self, arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """Distributions by parameter name and the fixed command-line overrides."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space: dict[str, Any] = {}
        for override in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()]):
            space[override.get_key_element()] = distribution_from_override(override)
        fixed: list[str] = []
        for override in parser.parse_overrides(list(arguments)):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution_from_override(override)
            else:
                fixed.append(override.input_line)
        for key, value in list(space.items()):  # plain values in params are fixed, not searched
            if isinstance(value, str):
                fixed.append(f"{key}={value}")
                del space[key]
        if not space:
            raise ValueError("the Optuna sweeper has nothing to search: set hydra.sweeper.params or pass a sweep "
                             "override such as 'selective.sigma=interval(0.5,6)'")
        return space, fixed

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        space, fixed = self._search_space(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=self.sampler, direction=self.direction,
            load_if_exists=True,
        )
        log.info("Optuna study %s (%s, sampler %s) over %s", study.study_name, self.direction,
                 type(study.sampler).__name__, {k: repr(v) for k, v in space.items()})
        job_idx = 0
        jobs: dict[int, str] = {}
        failures = 0
        while job_idx < self.n_trials:
            size = min(self.n_jobs, self.n_trials - job_idx)
            trials = [study.ask(space) for _ in range(size)]
            batch = [tuple(fixed + [f"{k}={v}" for k, v in t.params.items()]) for t in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=job_idx)
            for trial, ret in zip(trials, returns):
                jobs[trial.number] = _job_dir(ret)
                try:
                    value = float(ret.return_value)
                    if math.isnan(value):
                        raise ValueError("the task returned NaN")
                except Exception as err:  # noqa: BLE001 - a failed trial is recorded, the search goes on
                    failures += 1
                    log.warning("Trial %d (%s) failed: %s: %s", trial.number, ", ".join(trial.params and
                                [f"{k}={v}" for k, v in trial.params.items()]), type(err).__name__, err)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            job_idx += size
            self._write_results(study, sweep_dir, jobs)
            if failures > self.max_failure_rate * self.n_trials:
                raise RuntimeError(f"{failures} of {job_idx} trials failed (max_failure_rate="
                                   f"{self.max_failure_rate}); see the job logs in {sweep_dir}")
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise RuntimeError(f"every Optuna trial failed; see the job logs in {sweep_dir}")
        log.info("Best value %s with %s (trial %d)", study.best_value, study.best_params, study.best_trial.number)

    def _write_results(self, study: optuna.Study, sweep_dir: Path, jobs: Mapping[int, str]) -> None:
        """``optimization_results.yaml`` and ``trials.csv`` in the sweep folder."""
        rows: list[MutableMapping[str, Any]] = []
        names: list[str] = []
        for t in study.trials:
            for name in t.params:
                if name not in names:
                    names.append(name)
        for t in study.trials:
            rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                         "job_dir": jobs.get(t.number, ""), **{n: t.params.get(n) for n in names}})
        with open(sweep_dir / "trials.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["number", "state", "value", "job_dir", *names])
            writer.writeheader()
            writer.writerows(rows)
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        results: dict[str, Any] = {"name": "optuna", "direction": self.direction, "n_trials": len(study.trials),
                                   "n_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)}
        if completed:
            best = study.best_trial
            results.update(best_params=dict(best.params), best_value=float(best.value), best_trial=best.number,
                           best_job_dir=jobs.get(best.number, ""))
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
