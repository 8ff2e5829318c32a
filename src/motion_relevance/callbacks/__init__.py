"""Lightning callbacks: thin adapters from Lightning's evaluation hooks to the explanation pipeline."""

from motion_relevance.callbacks.explanations import ExplanationCallback

__all__ = ["ExplanationCallback"]
