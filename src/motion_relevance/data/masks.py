"""Ground-truth motion masks: a packed bool ``(T, H, W)`` array per video in an ``.npz`` file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MASK_DIR = "masks"
MASK_SUFFIX = "_mask.npz"


def mask_path(mask_root: str | Path, video_rel: str) -> Path:
    """Mask file of a video: ``UCF-101/<Class>/v_x.avi`` -> ``<mask_root>/<Class>/v_x_mask.npz``."""
    p = Path(video_rel)
    return Path(mask_root) / p.parent.name / (p.stem + MASK_SUFFIX)


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Store a bool ``(T, H, W)`` mask bit-packed (8 pixels per byte)."""
    mask = np.asarray(mask, dtype=bool)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, packed=np.packbits(mask.ravel()), shape=np.array(mask.shape, dtype=np.int64))


def load_mask(path: str | Path) -> np.ndarray:
    """Load a bool ``(T, H, W)`` mask written by :func:`save_mask`."""
    with np.load(path) as z:
        shape = tuple(int(s) for s in z["shape"])
        return np.unpackbits(z["packed"], count=int(np.prod(shape))).astype(bool).reshape(shape)
