"""The explanation pipeline of a run (plain code: no Lightning or Hydra).

:class:`ExplanationPipeline` explains and measures evaluation batches (:mod:`.core`); its optional stages test
the explanations causally: deletion/insertion curves, matched-budget freeze drops and motion reliance
(:class:`FaithfulnessStage`), and the cascading model-randomisation sanity check (:class:`RandomizationStage`),
see :mod:`.faithfulness`.
"""

from motion_relevance.pipeline.core import TARGETS, ExplainedBatch, ExplanationPipeline, reference_input
from motion_relevance.pipeline.faithfulness import FaithfulnessStage, RandomizationStage

__all__ = ["TARGETS", "ExplainedBatch", "ExplanationPipeline", "FaithfulnessStage", "RandomizationStage",
           "reference_input"]
