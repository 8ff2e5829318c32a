"""Networks: C3D, video ResNets in torchvision's layout, SlowFast, X3D, VideoMAE and transformers' video classifiers.

Every constructor of :data:`~motion_relevance.models.registry.MODELS` is importable from here
(``from motion_relevance.models import r3d_18``); each module is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from motion_relevance.models.c3d import C3D
from motion_relevance.models.registry import MODELS

_LAZY = {spec.split(":")[1]: spec.split(":")[0] for spec in MODELS.values()}
_LAZY.update(dict.fromkeys(("from_transformers", "from_folder"), "motion_relevance.models.hf"))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'motion_relevance.models' has no attribute {name!r}")


__all__ = ["C3D", *sorted(n for n in _LAZY if n != "C3D")]
