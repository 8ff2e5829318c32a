"""Nested mappings (configs) as flat dotted keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten_mapping(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"selective": {"sigma": 4}}`` -> ``{"selective.sigma": 4}``; already dotted keys are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_mapping(value, name + "."))
        else:
            flat[name] = value
    return flat
