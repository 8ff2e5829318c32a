"""Video data: decoding, clip sampling, transforms, UCF-101 splits and the synthetic ``motion_shapes`` set.

A plain library (no Lightning / Hydra): the LightningDataModules live in ``motion_relevance.datamodules``.
"""

from .dataset import VideoClipDataset
from .failures import FailureTracker, collate_skipping
from .index import IndexEntry, VideoIndex
from .masks import load_mask, mask_path, save_mask
from .samplers import UnpaddedDistributedSampler
from .sampling import clip_indices, clip_span, eval_starts, random_start
from .splits import VideoItem, group_of, load_split, read_class_ind, read_list, split_by_group
from .synthetic import (
    MOTIONS,
    GeneratedSet,
    MotionShapesConfig,
    generate_motion_shapes,
    read_manifest,
    render_video,
)
from .transforms import C3D_PORT_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, ClipTransform
from .video import VideoDecodeError, VideoDecoder, VideoMeta

__all__ = [
    "C3D_PORT_MEAN_BGR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MOTIONS",
    "ClipTransform",
    "FailureTracker",
    "GeneratedSet",
    "IndexEntry",
    "MotionShapesConfig",
    "UnpaddedDistributedSampler",
    "VideoClipDataset",
    "VideoDecodeError",
    "VideoDecoder",
    "VideoIndex",
    "VideoItem",
    "VideoMeta",
    "clip_indices",
    "clip_span",
    "collate_skipping",
    "eval_starts",
    "generate_motion_shapes",
    "group_of",
    "load_mask",
    "load_split",
    "mask_path",
    "random_start",
    "read_class_ind",
    "read_list",
    "read_manifest",
    "render_video",
    "save_mask",
    "split_by_group",
]
