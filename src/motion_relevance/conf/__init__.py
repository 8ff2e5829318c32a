"""The Hydra configs shipped inside the package (package data): ``train.yaml``, ``explain.yaml`` and ``live.yaml`` are
the roots, the folders are config groups. The entry points and :func:`motion_relevance.utils.compose.compose_config`
find them here, in an editable install and in a wheel alike."""

from pathlib import Path

__all__ = ["CONFIG_DIR", "CONFIG_MODULE"]

#: The folder of the config groups (this package's own folder).
CONFIG_DIR = Path(__file__).resolve().parent
#: The same folder as a Hydra config module (``initialize_config_module``, ``pkg://`` search paths).
CONFIG_MODULE = __name__
