"""Explanations of 3-D CNN activity recognisers and selective relevance (docs/method.md).

Explain a clip in Python::

    >>> import torch
    >>> from motion_relevance.models import C3D
    >>> from motion_relevance.explain import DeepTaylor, selective_relevance, zb_bounds_from_normalization
    >>> _ = torch.manual_seed(0)
    >>> model = C3D(num_classes=8, width=0.125, crop_size=56)
    >>> clips = torch.randn(2, 3, 16, 56, 56)
    >>> lower, upper = zb_bounds_from_normalization(mean=0.5, std=0.25)   # pixels in [-2, 2]
    >>> R = DeepTaylor(lower=lower, upper=upper)(model, clips)           # (B, C, T, H, W), target = prediction
    >>> R_sel = selective_relevance(R, sigma=4.0)                         # keeps relevance that changes in time
    >>> R.shape, R_sel.shape
    (torch.Size([2, 3, 16, 56, 56]), torch.Size([2, 3, 16, 56, 56]))

Explainers (``explainer(model, clips, target=None) -> (B, C, T, H, W)``, built from plain keyword arguments):
:class:`DeepTaylor` (``dtd``), :class:`GradCAM` (``gradcam``), :class:`GuidedBackprop` (``gbp``),
:class:`GuidedGradCAM` (``guided_gradcam``), :class:`CaptumExplainer` (any Captum class) and
:class:`FrameInflation` (temporal relevance baseline around any of them).
"""

import importlib
from typing import TYPE_CHECKING, Any

# The BatchNorm-folding submodule ``explain.canonize`` is loaded first, so that the package attribute ``canonize`` is
# the canonization function below (importing a submodule later would rebind the attribute to it).
from motion_relevance.explain import canonize as _batchnorm_folding  # noqa: F401
from motion_relevance.explain.bounds import zb_bounds_from_normalization
from motion_relevance.explain.canonize_trace import CanonizationError, canonize
from motion_relevance.explain.selective import (
    DEFAULT_SIGMA,
    PADDINGS,
    check_padding,
    check_sigma,
    selective_mask,
    selective_relevance,
    temporal_gradient,
)

if TYPE_CHECKING:  # the explainers import Captum (about 0.5 s): loaded on first use
    from motion_relevance.explain.explainers import (
        AttnLRP,
        CaptumExplainer,
        DeepTaylor,
        Explainer,
        GradCAM,
        GuidedBackprop,
        GuidedGradCAM,
    )
    from motion_relevance.explain.frame_inflation import FrameInflation
    from motion_relevance.explain.temporal_flow import temporal_share

_LAZY = {
    "AttnLRP": "explainers",
    "CaptumExplainer": "explainers",
    "DeepTaylor": "explainers",
    "Explainer": "explainers",
    "GradCAM": "explainers",
    "GuidedBackprop": "explainers",
    "GuidedGradCAM": "explainers",
    "FrameInflation": "frame_inflation",
    "temporal_share": "temporal_flow",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"motion_relevance.explain.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'motion_relevance.explain' has no attribute {name!r}")


__all__ = [
    "AttnLRP",
    "CanonizationError",
    "CaptumExplainer",
    "DeepTaylor",
    "Explainer",
    "FrameInflation",
    "GradCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "DEFAULT_SIGMA",
    "PADDINGS",
    "canonize",
    "check_padding",
    "check_sigma",
    "selective_mask",
    "selective_relevance",
    "temporal_gradient",
    "temporal_share",
    "zb_bounds_from_normalization",
]
