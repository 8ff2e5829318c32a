"""Clip sampling: where clips start in a video and which frame indices they read (with loop padding)."""

from __future__ import annotations

import numpy as np

from ..checks import check_choice, check_int

#: Evaluation sampling modes: every non-overlapping clip, or K uniformly spaced clips.
TEST_SAMPLING = ("all", "uniform")


def clip_span(clip_len: int, stride: int = 1) -> int:
    """Number of video frames one clip covers (``clip_len`` frames taken every ``stride`` frames)."""
    return (clip_len - 1) * stride + 1


def clip_indices(start: int, num_frames: int, clip_len: int, stride: int = 1) -> np.ndarray:
    """Frame indices of a clip, shape ``(clip_len,)``; loops back to frame 0 when the video is too short."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: a video needs at least 1 frame")
    return (start + stride * np.arange(clip_len, dtype=np.int64)) % num_frames


def eval_starts(
    num_frames: int, clip_len: int, stride: int = 1, mode: str = "all", clips_per_video: int = 1
) -> list[int]:
    """Start frames of the evaluation clips of one video.

    ``"all"``: every non-overlapping clip (a clip occupies ``clip_len * stride`` frames), e.g. 141 frames with
    16-frame clips give 8 clips; ``"uniform"``: ``clips_per_video`` starts spread evenly over the valid range
    (duplicates removed). A video shorter than one clip gives the single start 0 (loop padded).
    """
    check_choice("test_sampling", mode, TEST_SAMPLING)
    span = clip_span(clip_len, stride)
    if num_frames <= span:
        return [0]
    if mode == "all":
        step = clip_len * stride
        return list(range(0, num_frames - span + 1, step))
    check_int("clips_per_video", clips_per_video, 1)
    max_start = num_frames - span
    starts = np.linspace(0, max_start, clips_per_video) if clips_per_video > 1 else [max_start / 2]
    return sorted({int(round(s)) for s in starts})


def random_start(num_frames: int, clip_len: int, stride: int, rand: float) -> int:
    """Training start frame drawn from ``rand`` in [0, 1): uniform over all windows that fit (else 0)."""
    max_start = max(0, num_frames - clip_span(clip_len, stride))
    return min(int(rand * (max_start + 1)), max_start)
