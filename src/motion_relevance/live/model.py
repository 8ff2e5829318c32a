"""The model side of live explanations: what a checkpoint must hold for live windows, and the per-window
predict + explain + selective relevance wrapper.

The baseline explanation goes through :class:`~motion_relevance.explain.cache.CachedExplainer` (as every explainer
call in the project; without a cache it only times the call), its selective version through
:func:`~motion_relevance.explain.selective.selective_relevance` (``docs/method.md``, "Selective relevance").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from motion_relevance.data.transforms import ClipTransform
from motion_relevance.explain.cache import CachedExplainer
from motion_relevance.explain.selective import selective_relevance
from motion_relevance.models.checkpoint import LoadedClassifier
from motion_relevance.pipeline.core import reference_input

__all__ = ["REQUIRED_PREPROCESSING", "Explained", "LiveExplainer", "build_transform", "live_preprocessing",
           "model_clip_len", "selective_share"]

#: Preprocessing keys a checkpoint must record for live use (resize, clip_len and stride are optional).
REQUIRED_PREPROCESSING = ("crop_size", "mean", "std", "scale", "channel_order")


def model_clip_len(loaded: LoadedClassifier, preprocessing: Mapping[str, Any]) -> int | None:
    """Frames per clip the network takes (its config's ``clip_len``, else the data's), ``None`` if unknown."""
    for value in (loaded.net_config.get("clip_len"), preprocessing.get("clip_len")):
        if value is not None:
            return int(value)
    return None


def live_preprocessing(loaded: LoadedClassifier, *, window: int, target: int | None = None) -> dict[str, Any]:
    """The checkpoint's preprocessing, refusing a checkpoint that cannot explain live windows: one that lacks
    :data:`REQUIRED_PREPROCESSING` (named), whose model takes clips of another length than ``window``, or that has
    no class ``target``."""
    pre = dict(loaded.preprocessing or {})
    missing = [k for k in REQUIRED_PREPROCESSING if k not in pre]
    if missing:
        raise ValueError(
            f"ckpt_path={str(loaded.path)!r} records no usable preprocessing: checkpoint['motion_relevance']"
            f"['preprocessing'] lacks {', '.join(missing)}; live explanations need "
            f"{', '.join(REQUIRED_PREPROCESSING)} (and resize, clip_len, stride if the model was trained with "
            "them). Train it with mr-train, which stores them."
        )
    clip_len = model_clip_len(loaded, pre)
    if clip_len is not None and clip_len != window:
        raise ValueError(f"window={window} but the checkpoint's model takes clips of {clip_len} frames; "
                         f"set window={clip_len}")
    if target is not None and not 0 <= int(target) < loaded.num_classes:
        raise ValueError(f"target={target}: the model has classes 0..{loaded.num_classes - 1} (or null: predicted)")
    return pre


def build_transform(preprocessing: Mapping[str, Any]) -> ClipTransform:
    """The evaluation transform of the training data (centre crop + normalisation) from the checkpoint."""
    return ClipTransform(
        preprocessing["crop_size"], mean=preprocessing["mean"], std=preprocessing["std"],
        scale=preprocessing["scale"], channel_order=preprocessing["channel_order"], train=False,
    )


def selective_share(relevance: Tensor, selective: Tensor) -> float:
    """Selective share of one window: ``Σ|R_sel| / Σ|R|``, the fraction of the baseline's absolute relevance mass
    that selective relevance keeps (in ``[0, 1]``; NaN when ``R`` is all zero).

    Not the "motion share" of :mod:`motion_relevance.metrics` (positive relevance inside a ground-truth mask): a
    live stream has no ground truth.
    """
    total = float(relevance.abs().sum())
    return float(selective.abs().sum()) / total if total > 0 else math.nan


@dataclass
class Explained:
    """What one window produced: class, confidence, maps ``(C, T, h, w)`` and the model-input frames."""

    class_index: int
    confidence: float
    relevance: Tensor
    selective: Tensor
    selective_share: float
    inputs: np.ndarray  # uint8 (T, h, w, 3) RGB after resize + crop


class LiveExplainer:
    """Predict + explain + selective relevance for one window.

    Args:
        net: the classifier ``(B, 3, T, H, W) -> (B, K)`` logits, in eval mode; a multi-pathway net (SlowFast) gets
            ``net.pack_inputs(clip)`` and the window shows its full-rate pathway's relevance.
        transform: the checkpoint's :class:`ClipTransform` (centre crop + normalisation).
        explainer: ``explainer(model, clips, target) -> (B, C, T, H, W)``, called through a
            :class:`CachedExplainer` (pass one to give it a cache).
        sigma, padding: selective relevance (``docs/method.md``, "Selective relevance").
        target: ``None`` explains the predicted class, an int a fixed class.
        device: where the net runs.
        class_names: names of the classes in label order.
    """

    def __init__(self, net: torch.nn.Module, transform: ClipTransform, explainer: Callable[..., Any],
                 sigma: float, padding: str = "replicate", target: int | None = None,
                 device: torch.device | str = "cpu", class_names: list[str] | None = None) -> None:
        self.net, self.transform = net, transform
        self.explainer = explainer if isinstance(explainer, CachedExplainer) else CachedExplainer(explainer)
        self.class_names = list(class_names or [])
        self.sigma, self.padding, self.target = float(sigma), padding, target
        self.device = torch.device(device)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def inputs(self, frames: np.ndarray) -> np.ndarray:
        """Centre-cropped uint8 frames ``(T, h, w, 3)`` of a window ``(T, H, W, 3)``."""
        return np.ascontiguousarray(self.transform.spatial(frames)[0])

    def __call__(self, frames: np.ndarray) -> Explained:
        cropped = self.inputs(frames)
        clip = self.transform.normalize(cropped).unsqueeze(0).to(self.device)  # (1, 3, T, h, w)
        pack = getattr(self.net, "pack_inputs", None)  # multi-pathway models (SlowFast) build their inputs
        inputs = pack(clip) if callable(pack) else clip
        with torch.no_grad():
            probs = torch.softmax(self.net(inputs).float(), dim=1)[0]
        cls = int(probs.argmax()) if self.target is None else int(self.target)
        relevance = self.explainer(self.net, inputs, torch.tensor([cls])).relevance
        if not isinstance(relevance, Tensor):  # one relevance per pathway: show the full-rate one's
            relevance = relevance[reference_input(inputs)]
        sel = selective_relevance(relevance, self.sigma, padding=self.padding)
        share = selective_share(relevance, sel)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Explained(cls, float(probs[cls]), relevance[0].cpu(), sel[0].cpu(), share, cropped)
