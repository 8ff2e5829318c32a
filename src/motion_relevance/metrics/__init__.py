"""Metrics of motion relevance (docs/method.md, "Optical flow" and "Metrics"): optical-flow motion masks,
per-clip functional metrics and
torchmetrics classes (mean/std over clips, exact under DDP). No Lightning or Hydra imports here."""

from motion_relevance.metrics.classes import (
    Agreement,
    GroundTruthMetrics,
    MotionPrecision,
    Overhead,
    Selectivity,
    SpatialBias,
)
from motion_relevance.metrics.flow import FlowEstimator, compute_flow, flow_magnitude, moving_mask
from motion_relevance.metrics.functional import (
    agreement,
    f1,
    gt_precision_recall,
    motion_precision,
    motion_share,
    positive_mask,
    positive_relevance,
    selectivity,
    spatial_bias,
)

__all__ = [
    "Agreement",
    "FlowEstimator",
    "GroundTruthMetrics",
    "MotionPrecision",
    "Overhead",
    "Selectivity",
    "SpatialBias",
    "agreement",
    "compute_flow",
    "f1",
    "flow_magnitude",
    "gt_precision_recall",
    "motion_precision",
    "motion_share",
    "moving_mask",
    "positive_mask",
    "positive_relevance",
    "selectivity",
    "spatial_bias",
]
