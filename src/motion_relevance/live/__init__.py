"""Live explanations of a video file or a camera stream (``python -m motion_relevance.live`` / ``mr-live``).

:mod:`~motion_relevance.live.source` (frame sources), :mod:`~motion_relevance.live.windows` (sliding windows,
loop padding, real-time pacing) and :mod:`~motion_relevance.live.app` (the Hydra entry point).
"""

from motion_relevance.live.app import main, run

__all__ = ["main", "run"]
