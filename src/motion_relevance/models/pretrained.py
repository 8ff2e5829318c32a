"""Sports-1M C3D weights in the layout of the common PyTorch port (``c3d.pickle``).

The port's state dict has 22 tensors, ``conv1.weight`` … ``fc8.bias``, with fc8 giving 487 Sports-1M classes.
It was trained on BGR frames with the per-channel mean (90.25, 97.66, 101.41) subtracted from 0–255 values and
its forward ends in a softmax: our C3D returns logits, so only the weights are taken. ``experiment=c3d_ucf101``
sets the matching channel order and mean. Reading and checking is :mod:`motion_relevance.models.weights`'s.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from motion_relevance.models.weights import load_weights, read_weights

__all__ = ["SPORTS1M_CLASSES", "SPORTS1M_MEAN_BGR", "load_pretrained", "read_state_dict"]

SPORTS1M_MEAN_BGR = (90.25, 97.66, 101.41)
SPORTS1M_CLASSES = 487


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A finite state dict from ``path`` (:func:`~motion_relevance.models.weights.read_weights`)."""
    return read_weights(path, "model.pretrained")


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], *, reinit_head: str = "fc8") -> nn.Module:
    """Copy the weights in ``path`` into ``model``; ``reinit_head`` is re-initialised (N(0, 0.01), zero bias) when
    its class count differs, every other key must match in name and shape."""
    return load_weights(model, path, where="model.pretrained", head=reinit_head, head_std=0.01)
