"""Live explanations of a video file or a camera stream (``python -m motion_relevance.live`` / ``mr-live``).

:mod:`~motion_relevance.live.config` (the structured config, registered in Hydra's ConfigStore on import, and its
checks), :mod:`~motion_relevance.live.source` (frame sources), :mod:`~motion_relevance.live.windows` (sliding
windows, loop padding, real-time pacing), :mod:`~motion_relevance.live.model` (predict + explain per window through
the project's ExplanationPipeline), :mod:`~motion_relevance.live.loop` (the loop over windows),
:mod:`~motion_relevance.live.sink` (overlay video, display, progress bar), :mod:`~motion_relevance.live.record`
(CSV, metrics, timeline) and :mod:`~motion_relevance.live.app` (the Hydra entry point).
"""

from motion_relevance.live.app import main, run

__all__ = ["main", "run"]
