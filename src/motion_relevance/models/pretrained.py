"""Sports-1M C3D weights in the layout of the common PyTorch port (``c3d.pickle``).

The port's state dict has 22 tensors, ``conv1.weight`` … ``fc8.bias``, with fc8 giving 487 Sports-1M classes.
It was trained on BGR frames with the per-channel mean (90.25, 97.66, 101.41) subtracted from 0–255 values and
its forward ends in a softmax: our C3D returns logits, so only the weights are taken. ``experiment=c3d_ucf101``
sets the matching channel order and mean.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Key prefixes wrappers add around a state dict (DataParallel, Lightning checkpoints).
_PREFIXES = ("module.", "net.", "model.")
SPORTS1M_MEAN_BGR = (90.25, 97.66, 101.41)
SPORTS1M_CLASSES = 487


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict saved with ``torch.save`` (a ``.pickle``/``.pth``/Lightning ``.ckpt``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"model.pretrained={str(file)!r} does not exist; download the Sports-1M C3D port (c3d.pickle) "
            "and point model.pretrained to it, or set model.pretrained=null to train from scratch"
        )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"model.pretrained={str(file)!r} is not a readable PyTorch state dict: {err}") from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"model.pretrained={str(file)!r} does not hold a state dict (name -> tensor)")
    state = dict(obj)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], *, reinit_head: str = "fc8") -> nn.Module:
    """Copy the weights in ``path`` into ``model``; re-initialise ``reinit_head`` when its class count differs.

    Every other key must match in name and shape: otherwise a ValueError lists the missing keys, the unexpected
    keys and the shape mismatches, so a wrong file (another architecture, another width) never loads silently.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head_keys = {k for k in own if k.split(".")[0] == reinit_head}
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and k not in head_keys and state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise ValueError(
            f"model.pretrained={str(path)!r} does not fit this model — " + " | ".join(parts)
            + ". Expected the C3D port's layout (conv1.weight … fc8.bias) at width 1.0, clip_len 16, crop 112."
        )
    head_fits = all(state[k].shape == own[k].shape for k in head_keys)
    to_load = {k: v for k, v in state.items() if head_fits or k not in head_keys}
    model.load_state_dict(to_load, strict=head_fits)
    if not head_fits:
        head = dict(model.named_modules())[reinit_head]
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        log.info("Loaded %s; %s re-initialised for %d classes", path, reinit_head, head.weight.shape[0])
    else:
        log.info("Loaded %s (all %d tensors)", path, len(to_load))
    return model
