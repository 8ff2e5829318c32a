"""The model side of live explanations: what a checkpoint must hold for live windows, and the per-window
predict + explain wrapper around the project's :class:`~motion_relevance.pipeline.ExplanationPipeline`.

Each window is explained by the same pipeline object mr-explain uses (:meth:`~motion_relevance.pipeline.
ExplanationPipeline.explain_window`): the same target rule (the predicted class, or ``target`` when configured),
the same checks (the layer/pathway check runs at start-up, :meth:`LiveExplainer.check`), the explainer through
:class:`~motion_relevance.explain.cache.CachedExplainer`, selective relevance at the one ``selective.sigma`` and the
same metric suite. The live number is the suite's ``selectivity_mass`` (``Σ R_sel⁺ / Σ R⁺``, the positive relevance
mass selective relevance keeps), read from the suite, not recomputed. No flow, faithfulness or randomisation stage
runs: live shows none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from motion_relevance.data.transforms import ClipTransform
from motion_relevance.explain.cache import AttributionCache, CachedExplainer
from motion_relevance.models.checkpoint import LoadedClassifier
from motion_relevance.pipeline.core import ExplanationPipeline

__all__ = ["REQUIRED_PREPROCESSING", "SHARE_METRIC", "Explained", "LiveExplainer", "build_transform",
           "live_preprocessing", "model_clip_len"]

#: The suite's metric that live shows per window: ``Σ R_sel⁺ / Σ R⁺`` (``docs/method.md``, "Metrics").
SHARE_METRIC = "selectivity_mass"

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


@dataclass
class Explained:
    """What one window produced: class, confidence, maps ``(C, T, h, w)`` of the full-rate input, the suite's
    :data:`SHARE_METRIC` (NaN where undefined) and the model-input frames."""

    class_index: int
    confidence: float
    relevance: Tensor
    selective: Tensor
    selectivity_mass: float
    inputs: np.ndarray  # uint8 (T, h, w, 3) RGB after resize + crop


class LiveExplainer:
    """Predict + explain one window through an :class:`ExplanationPipeline` (:attr:`pipeline`).

    Args:
        net: the classifier ``(B, 3, T, H, W) -> (B, K)`` logits, in eval mode; a multi-pathway net (SlowFast) gets
            ``net.pack_inputs(clip)`` and the window shows its full-rate pathway's relevance.
        transform: the checkpoint's :class:`ClipTransform` (centre crop + normalisation).
        explainer: ``explainer(model, clips, target) -> (B, C, T, H, W)`` (a :class:`CachedExplainer`'s explainer
            is taken out: the pipeline wraps it with ``cache``).
        sigma, padding: selective relevance (``docs/method.md``, "Selective relevance").
        target: ``None`` explains the predicted class, an int a fixed class (the pipeline's ``"label"`` rule).
        device: where the net runs.
        class_names: names of the classes in label order.
        cache: an :class:`AttributionCache` for the explanations, or None.
        name: the explainer's metric-key name (default: its ``name``).
    """

    def __init__(self, net: torch.nn.Module, transform: ClipTransform, explainer: Callable[..., Any],
                 sigma: float, padding: str = "replicate", target: int | None = None,
                 device: torch.device | str = "cpu", class_names: list[str] | None = None,
                 cache: AttributionCache | None = None, name: str | None = None) -> None:
        self.net, self.transform = net, transform
        base = explainer.explainer if isinstance(explainer, CachedExplainer) else explainer
        if cache is None and isinstance(explainer, CachedExplainer):
            cache = explainer.cache
        self.name = str(name or getattr(base, "name", None) or "baseline")
        self.class_names = list(class_names or [])
        self.sigma, self.padding, self.target = float(sigma), padding, target
        self.device = torch.device(device)
        self.pipeline = ExplanationPipeline({self.name: base}, sigma=self.sigma, padding=padding, cache=cache,
                                            target="predicted" if target is None else "label", keep_clips=0,
                                            record_clips=True)
        self.pipeline.config_key = "explainer"  # mr-live's one explainer node
        self.pipeline.start(net, device=self.device)
        self.selective_name = self.pipeline.selective_names(self.name)[0]
        self.share_key = f"{SHARE_METRIC}/{self.name}"  # one sigma: logged under the baseline's name

    @property
    def explainer(self) -> CachedExplainer:
        """The explainer as the pipeline calls it (through :class:`CachedExplainer`)."""
        return self.pipeline.explainers[self.name]

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def inputs(self, frames: np.ndarray) -> np.ndarray:
        """Centre-cropped uint8 frames ``(T, h, w, 3)`` of a window ``(T, H, W, 3)``."""
        return np.ascontiguousarray(self.transform.spatial(frames)[0])

    def _model_inputs(self, cropped: np.ndarray) -> Tensor | list[Tensor]:
        clip = self.transform.normalize(cropped).unsqueeze(0).to(self.device)  # (1, 3, T, h, w)
        pack = getattr(self.net, "pack_inputs", None)  # multi-pathway models (SlowFast) build their inputs
        return pack(clip) if callable(pack) else clip

    def check(self, window: int, size: tuple[int, int] | None = None) -> None:
        """The pipeline's checks before work (:meth:`ExplanationPipeline.check_explainers`: the layer/pathway
        check) on a blank probe window of ``window`` frames at the crop size (``size`` ``(H, W)``: the source's,
        for a checkpoint without a crop); raises before the first window."""
        if not (self.transform.crop_size or size):
            raise ValueError("LiveExplainer.check: the checkpoint records no crop_size; pass the source's size (H, W)")
        h, w = self.transform.crop_size or size
        self.pipeline.check_explainers(self.net, self._model_inputs(np.zeros((int(window), h, w, 3), np.uint8)))

    def results(self) -> dict[str, float]:
        """The suite's values over the explained windows (``live/selectivity_mass/<name>`` …)."""
        return self.pipeline.results("live")

    def __call__(self, frames: np.ndarray) -> Explained:
        cropped = self.inputs(frames)
        inputs = self._model_inputs(cropped)
        labels = None if self.target is None else torch.tensor([int(self.target)], device=self.device)
        with torch.no_grad():
            logits = self.net(inputs)
        batch, logits, values = self.pipeline.explain_window(self.net, inputs, labels, logits=logits)
        cls = int(batch.targets[0])
        confidence = float(torch.softmax(logits.float(), dim=1)[0, cls])
        share = values[0][self.share_key]  # NaN where undefined (R has no positive mass)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Explained(cls, confidence, batch.relevance[self.name][0].cpu(),
                         batch.selective[self.selective_name][0].cpu(), share, cropped)
