"""Lightning callbacks: explanations and selective relevance measured on validation/test epochs."""

from motion_relevance.callbacks.attribution import AttributionCallback, ExplainedBatch, SelectiveRelevanceCallback

__all__ = ["AttributionCallback", "ExplainedBatch", "SelectiveRelevanceCallback"]
