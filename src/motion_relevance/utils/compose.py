"""Compose the project's Hydra configs from Python (notebooks, tests, benchmarks) exactly as the CLI would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from motion_relevance.conf import CONFIG_DIR


def compose_config(
    name: str, overrides: Sequence[str] = (), output_dir: str | Path | None = None, quiet: bool = True
) -> DictConfig:
    """``<name>.yaml`` of the package's configs with command-line style ``overrides``, ready for ``train``/``explain``.

    ``output_dir`` replaces the run folder Hydra would create (``paths.output_dir``); ``quiet`` turns off the
    printed config tree. The Hydra runtime is set as for a CLI run, so ``${hydra:...}`` interpolations resolve.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        if quiet and cfg.get("extras") is not None:
            cfg.extras.print_config = False
    return cfg
