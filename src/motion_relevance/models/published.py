"""Load published weights strictly (torchvision, pytorchvideo layouts): a thin name for
:func:`motion_relevance.models.weights.load_weights`, which reads, checks and loads every weights file.

The final linear layer (the model's ``head_name``: ``fc``, ``blocks.6.proj``, ``blocks.5.proj``) is re-initialised
when only its class count differs; anything else that does not fit raises ``ValueError`` with the first missing
keys, unexpected keys and shape mismatches, and the known layout the file's keys most resemble.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from motion_relevance.models.weights import (
    CONTAINER_KEYS,
    PREFIXES,
    describe_mismatch,
    known_layouts,
    load_weights,
    read_weights,
    resembled_layout,
)

__all__ = ["CONTAINER_KEYS", "PREFIXES", "describe_mismatch", "known_layouts", "load_published", "read_weights",
           "resembled_layout"]


def load_published(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True,
                   head: str | None = None) -> nn.Module:
    """Copy the weights in ``source`` (a file or a state dict) into ``model`` (``model.pretrained``); see
    :func:`~motion_relevance.models.weights.load_weights`."""
    return load_weights(model, source, where="model.pretrained", strict=strict, head=head)
