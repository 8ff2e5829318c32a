"""Map-style clip dataset over videos in a UCF-style root (UCF-101 or the generated motion_shapes set).

Items are dicts (CONTRACTS.md): ``clip`` float32 (3, T, H, W), ``label`` int64, ``video`` str (relative path),
``start`` int64, and ``mask`` bool (T, H, W) when masks exist. An undecodable video gives ``None`` (logged,
counted in ``num_failed``, its path kept for :func:`collate_skipping`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checks import check_choice, check_int
from .index import VideoIndex
from .masks import load_mask, mask_path
from .sampling import TEST_SAMPLING, clip_indices, eval_starts, random_start
from .splits import VideoItem
from .transforms import ClipTransform
from .video import VideoDecodeError, VideoDecoder

log = logging.getLogger(__name__)
SAMPLING = ("random", *TEST_SAMPLING)


class VideoClipDataset(Dataset):
    """Clips of the videos in ``items``.

    Args:
        root: data root; ``items[i].path`` is relative to it.
        items: the videos (path, 0-based label, group).
        index: frame counts of the videos (see :class:`VideoIndex`).
        clip_len: frames per clip (>= 1); stride: take every ``stride``-th frame.
        sampling: ``"random"`` (training: one random window per video per epoch), ``"all"`` (every
            non-overlapping clip) or ``"uniform"`` (``clips_per_video`` evenly spaced clips).
        transform: crop / flip / normalisation; ``None`` = no crop, [0, 1] RGB values.
        decoder, resize, num_threads: see :class:`VideoDecoder` (resize happens on decode).
        mask_root: folder of ``<Class>/<stem>_mask.npz`` masks (synthetic data) or ``None``.
        cache_bytes: decode a video once for all its clips when its frames fit in this many bytes.
    """

    def __init__(
        self,
        root: str | Path,
        items: Sequence[VideoItem],
        index: VideoIndex,
        clip_len: int = 16,
        stride: int = 1,
        sampling: str = "random",
        clips_per_video: int = 1,
        transform: ClipTransform | None = None,
        decoder: str = "decord",
        resize: int | Sequence[int] | None = None,
        num_threads: int = 1,
        mask_root: str | Path | None = None,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.root = Path(root)
        self.items = list(items)
        self.clip_len = check_int("clip_len", clip_len, 1, 4096)
        self.stride = check_int("stride", stride, 1, 64)
        self.sampling = check_choice("sampling", sampling, SAMPLING)
        self.clips_per_video = check_int("clips_per_video", clips_per_video, 1, 1000)
        self.transform = transform or ClipTransform(crop_size=None, mean=0.0, std=1.0)
        self.decoder = VideoDecoder(decoder, resize=resize, num_threads=num_threads)
        self.mask_root = Path(mask_root) if mask_root is not None else None
        self.cache_bytes = int(cache_bytes)
        self.index = index
        self.num_failed = 0
        self._skipped: list[str] = []
        self._frames_cache: tuple[str, np.ndarray] | None = None
        self._mask_cache: tuple[str, np.ndarray] | None = None
        # (video number, start frame; -1 = random); bad videos keep one sample so the failure is counted.
        self.samples: list[tuple[int, int]] = []
        self.clips_of: list[int] = []
        for vi, item in enumerate(self.items):
            entry = index[item.path]
            if not entry.ok or self.sampling == "random":
                starts = [-1 if entry.ok else 0]
            else:
                starts = eval_starts(
                    entry.num_frames, self.clip_len, self.stride, self.sampling, self.clips_per_video
                )
            self.clips_of.append(len(starts))
            self.samples.extend((vi, s) for s in starts)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Label of every sample (not every video)."""
        return [self.items[vi].label for vi, _ in self.samples]

    def pop_skipped(self) -> list[str]:
        """Paths of the samples that failed since the last call (used by :func:`collate_skipping`)."""
        out, self._skipped = self._skipped, []
        return out

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        vi, start = self.samples[i]
        item = self.items[vi]
        entry = self.index[item.path]
        try:
            if not entry.ok:
                raise VideoDecodeError(f"unreadable in the index: {entry.error}")
            n = entry.num_frames
            if start < 0:
                start = random_start(n, self.clip_len, self.stride, float(torch.rand(())))
            idx = clip_indices(start, n, self.clip_len, self.stride)
            frames = self._frames(item.path, idx, n, self.clips_of[vi] > 1, (entry.height, entry.width))
            mask = self._mask(item.path, idx, frames.shape[1:3]) if self.mask_root is not None else None
        except (VideoDecodeError, OSError, ValueError) as exc:
            self.num_failed += 1
            self._skipped.append(item.path)
            log.warning("skipping %s (clip %d): %s", item.path, i, exc)
            return None
        clip, mask_t = self.transform(frames, mask)
        out: dict[str, Any] = {
            "clip": clip,
            "label": torch.tensor(item.label, dtype=torch.int64),
            "video": item.path,
            "start": torch.tensor(start, dtype=torch.int64),
        }
        if mask_t is not None:
            out["mask"] = mask_t
        return out

    def _frames(
        self, rel: str, idx: np.ndarray, n: int, many_clips: bool, native_hw: tuple[int, int]
    ) -> np.ndarray:
        """Decode the clip; for videos with several clips decode the whole video once and slice it."""
        if self._frames_cache is not None and self._frames_cache[0] == rel:
            return self._frames_cache[1][idx]
        h, w = self.decoder.resize or native_hw
        if many_clips and n * h * w * 3 <= self.cache_bytes:
            frames = self.decoder.read_all(self.root / rel, n)
            self._frames_cache = (rel, frames)
            self.decoder.close()  # the whole video is in memory: the reader is no longer needed
            return frames[idx]
        return self.decoder.read(self.root / rel, idx)

    def _mask(self, rel: str, idx: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if self._mask_cache is None or self._mask_cache[0] != rel:
            assert self.mask_root is not None
            m = load_mask(mask_path(self.mask_root, rel))
            if m.shape[1:3] != tuple(hw):
                import cv2  # deferred: OpenCV only for this fallback

                m = np.stack(
                    [cv2.resize(f.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) for f in m]
                ).astype(bool)
            self._mask_cache = (rel, m)
        m = self._mask_cache[1]
        if idx.max() >= len(m):
            raise ValueError(f"mask of {rel} has {len(m)} frames, clip needs frame {int(idx.max())}")
        return m[idx]

    def __getstate__(self) -> dict[str, Any]:  # workers start with empty caches
        state = self.__dict__.copy()
        state["_frames_cache"] = None
        state["_mask_cache"] = None
        return state
