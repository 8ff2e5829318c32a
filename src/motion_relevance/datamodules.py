"""LightningDataModules over UCF-layout video roots: UCF-101 and the generated ``motion_shapes`` set.

Under DDP these modules build their own samplers: ``DistributedSampler`` (shuffled, reseeded each epoch by
Lightning's ``set_epoch``) for training and :class:`~motion_relevance.data.UnpaddedDistributedSampler` for
validation/test, so every evaluation sample is seen exactly once. Both are ``DistributedSampler`` instances,
which Lightning keeps as they are, so the trainer's ``use_distributed_sampler`` may be true or false.
(``Trainer.predict`` wraps any sampler in Lightning's own unrepeated wrapper, which is also unpadded.)
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from motion_relevance.checks import check_choice, check_int, check_size, to_plain
from motion_relevance.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipTransform,
    MotionShapesConfig,
    UnpaddedDistributedSampler,
    VideoClipDataset,
    VideoIndex,
    collate_skipping,
    generate_motion_shapes,
    load_split,
    read_class_ind,
    read_manifest,
    split_by_group,
)
from motion_relevance.data.masks import MASK_DIR
from motion_relevance.data.sampling import TEST_SAMPLING
from motion_relevance.data.splits import LIST_DIR, VideoItem, count_duplicates, empty_classes, split_overlap
from motion_relevance.data.synthetic import MOTION_SHAPES_MEAN, MOTION_SHAPES_STD
from motion_relevance.data.video import resolve_decoder
from motion_relevance.models.slowfast import pack_pathways

log = logging.getLogger(__name__)

#: Start methods a DataLoader's workers may use.
WORKER_START_METHODS = ("fork", "spawn", "forkserver")


def worker_start_method(num_workers: int, configured: str | None = None) -> str | None:
    """How DataLoader workers start: ``configured`` if given, else Python's default (``None``), except inside a
    joblib (loky) worker such as Hydra's joblib launcher runs each job in. Its default context is loky's, which
    cannot start DataLoader workers (``'Process' object has no attribute 'env'``); there they fork, as the
    PyTorch and joblib issues on it advise. No workers, no start method."""
    if num_workers == 0:
        return None
    if configured is not None:
        return configured
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        log.info("DataLoader workers in a joblib (loky) worker: started by fork")
        return "fork"
    return None


class VideoDataModule(pl.LightningDataModule):
    """Train / val / test clips from a root in UCF-101 layout (``UCF-101/`` + ``ucfTrainTestlist/``).

    Args:
        root: data root. split: official split 1-3 (generated sets have only 1).
        clip_len, stride: frames per clip and frame step. resize: ``(H, W)`` on decode or ``None``.
        crop_size: square/``(H, W)`` crop (random for training, centre otherwise).
        hflip: random horizontal flips in training (off for mirror-sensitive labels such as directions).
        channel_shuffle: random colour-channel permutation per training clip (takes away colour shortcuts).
        mean, std, scale, channel_order: normalisation ``(x / scale - mean) / std`` in ``channel_order``.
        val_fraction, val_seed: share of training *groups* held out for validation (deterministic).
        eval_order: order of the validation/test videos: ``"shuffled"`` (default; a fixed permutation seeded by
            ``val_seed``, each video's clips kept together so that it is decoded once) makes the first N clips
            that the explanation callbacks take (``num_clips``) a class-balanced sample instead of the first
            classes of the list; ``"listed"`` keeps the split file's order. Metrics over all clips do not change.
        test_sampling, clips_per_video: evaluation clips, ``"all"`` non-overlapping or ``"uniform"`` K.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader options.
        multiprocessing_context: how DataLoader workers start (``"fork"``, ``"spawn"``, ``"forkserver"``); ``None``
            (default, and not in the data configs: ``+data.multiprocessing_context=...`` sets it): see
            :func:`worker_start_method`.
        decoder, decoder_threads: ``"decord"`` or ``"opencv"`` and threads per reader.
        allow_missing: skip listed but absent videos (count in ``num_missing``) instead of failing.
        allow_duplicates: keep videos listed twice in one list (refused by default; counted in ``data_counts``).
        allow_overlap: keep videos listed in both the train and the test list (refused by default; counted).
        cache_dir: where the video index JSON goes (``None`` = ``<root>/.cache`` is NOT used; no cache).
        index_threads: threads for building the index. masks: load ``<root>/masks`` (``None`` = if present).
        pathways: ``{"alpha": a}`` feeds two-pathway models (SlowFast) ``batch["clip"] = [slow, fast]``: the slow
            pathway every ``a``-th frame of the clip (see :func:`~motion_relevance.models.slowfast.pack_pathways`);
            ``None``: one clip tensor.
    """

    def __init__(
        self,
        root: str | Path,
        split: int = 1,
        clip_len: int = 16,
        stride: int = 1,
        resize: int | Sequence[int] | None = (128, 171),
        crop_size: int | Sequence[int] | None = 112,
        hflip: bool = True,
        channel_shuffle: bool = False,
        mean: Sequence[float] | float = IMAGENET_MEAN,
        std: Sequence[float] | float = IMAGENET_STD,
        scale: float = 255.0,
        channel_order: str = "RGB",
        val_fraction: float = 0.1,
        val_seed: int = 0,
        eval_order: str = "shuffled",
        test_sampling: str = "all",
        clips_per_video: int = 1,
        batch_size: int = 16,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        decoder: str = "decord",
        decoder_threads: int = 1,
        allow_missing: bool = False,
        allow_duplicates: bool = False,
        allow_overlap: bool = False,
        cache_dir: str | Path | None = None,
        index_threads: int = 4,
        masks: bool | None = None,
        pathways: Mapping[str, Any] | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.split = check_int("split", split, 1, 3)
        self.clip_len = check_int("clip_len", clip_len, 1, 4096)
        self.stride = check_int("stride", stride, 1, 64)
        self.resize = check_size("resize", resize)
        self.test_sampling = check_choice("test_sampling", test_sampling, TEST_SAMPLING)
        self.clips_per_video = check_int("clips_per_video", clips_per_video, 1, 1000)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0, 256)
        self.decoder = resolve_decoder(decoder)
        self.decoder_threads = check_int("decoder_threads", decoder_threads, 0, 64)
        self.index_threads = check_int("index_threads", index_threads, 1, 256)
        if not 0.0 <= float(val_fraction) <= 0.9:
            raise ValueError(f"val_fraction={val_fraction!r} out of range: allowed [0, 0.9]")
        self.val_fraction = float(val_fraction)
        self.val_seed = int(val_seed)
        self.eval_order = check_choice("eval_order", eval_order, ("shuffled", "listed"))
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        if multiprocessing_context is not None:
            check_choice("multiprocessing_context", multiprocessing_context, WORKER_START_METHODS)
        self.multiprocessing_context = worker_start_method(self.num_workers, multiprocessing_context)
        self.allow_missing = bool(allow_missing)
        self.allow_duplicates = bool(allow_duplicates)
        self.allow_overlap = bool(allow_overlap)
        self.counts: dict[str, int] = {}  # duplicate_videos, overlap_videos, empty_classes (see data_counts)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.masks = masks
        self.pathways = _check_pathways(pathways)
        norm = {"mean": mean, "std": std, "scale": scale, "channel_order": channel_order}
        self.hflip = bool(hflip)
        self.train_transform = ClipTransform(crop_size, train=True, hflip=self.hflip,
                                             channel_shuffle=bool(channel_shuffle), **norm)
        self.eval_transform = ClipTransform(crop_size, train=False, **norm)
        crop = self.eval_transform.crop_size
        if crop is not None and self.resize is not None and (crop[0] > self.resize[0] or crop[1] > self.resize[1]):
            raise ValueError(f"crop_size={crop} larger than resize={self.resize}: allowed crop <= resize")
        self.missing: dict[str, int] = {}  # listed-but-absent videos per split list ("train", "test")
        self.datasets: dict[str, VideoClipDataset] = {}
        self._class_names: list[str] | None = None

    # -- what the rest of the code needs --------------------------------------------------------------------
    @property
    def num_missing(self) -> int:
        """Listed videos absent from the tree and skipped (``allow_missing=true``), over the lists read so far."""
        return sum(self.missing.values())

    @property
    def data_counts(self) -> dict[str, int]:
        """What the split files held that a run should know about: ``missing_videos`` (skipped under
        ``allow_missing``), ``duplicate_videos`` and ``overlap_videos`` (kept under ``allow_duplicates`` /
        ``allow_overlap``), ``empty_classes`` (classes without training videos, under ``allow_missing``)."""
        return {"missing_videos": self.num_missing, **self.counts}

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (read from ``classInd.txt``)."""
        if self._class_names is None:
            self._class_names = read_class_ind(self.root / LIST_DIR / "classInd.txt")
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def transform_config(self) -> dict[str, Any]:
        """The preprocessing as a plain dict (stored in checkpoints so inference can reproduce it)."""
        return {
            "clip_len": self.clip_len,
            "stride": self.stride,
            "resize": list(self.resize) if self.resize else None,
            "decoder": self.decoder,
            "pathways": dict(self.pathways) if self.pathways else None,
            **self.eval_transform.config(),
        }

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Two-pathway models get ``batch["clip"] = [slow, fast]`` (built on the device, after the transfer)."""
        if self.pathways and isinstance(batch, dict) and isinstance(batch.get("clip"), torch.Tensor):
            batch["clip"] = pack_pathways(batch["clip"], self.pathways["alpha"])
        return batch

    # -- Lightning hooks ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Read the split lists, index the videos (cached) and build the datasets the stage needs."""
        want_fit = stage in (None, "fit", "validate")
        want_test = stage in (None, "test", "predict")
        items: dict[str, list[VideoItem]] = {}
        if (want_fit and "train" not in self.datasets) or (want_test and "test" not in self.datasets):
            self._check_lists()
        if want_fit and "train" not in self.datasets:
            names, train, missing = load_split(self.root, self.split, "train", self.allow_missing,
                                               self.allow_duplicates)
            self._class_names = names
            self.missing["train"] = len(missing)
            self.counts["duplicate_videos"] = self.counts.get("duplicate_videos", 0) + count_duplicates(train)
            self._check_classes(train, names)
            items["train"], items["val"] = split_by_group(train, self.val_fraction, self.val_seed)
        if want_test and "test" not in self.datasets:
            names, test, missing = load_split(self.root, self.split, "test", self.allow_missing,
                                              self.allow_duplicates)
            self._class_names = names
            self.missing["test"] = len(missing)
            self.counts["duplicate_videos"] = self.counts.get("duplicate_videos", 0) + count_duplicates(test)
            items["test"] = test
        if not items:
            return
        all_paths = [it.path for its in items.values() for it in its]
        index = VideoIndex.build(self.root, all_paths, self.cache_dir, self.index_threads, backend=self.decoder)
        if index.bad:
            log.warning("%d unreadable videos (their samples will be skipped): %s", len(index.bad), index.bad[:5])
        use_masks = self.masks if self.masks is not None else (self.root / MASK_DIR).is_dir()
        common = {
            "root": self.root,
            "index": index,
            "clip_len": self.clip_len,
            "stride": self.stride,
            "decoder": self.decoder,
            "resize": self.resize,
            "num_threads": self.decoder_threads,
            "mask_root": self.root / MASK_DIR if use_masks else None,
        }
        for name, its in items.items():
            train = name == "train"
            if not train and self.eval_order == "shuffled":
                its = list(its)
                random.Random(self.val_seed).shuffle(its)
            self.datasets[name] = VideoClipDataset(
                items=its,
                sampling="random" if train else self.test_sampling,
                clips_per_video=self.clips_per_video,
                transform=self.train_transform if train else self.eval_transform,
                **common,
            )

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        world, rank = self._world()
        sampler = DistributedSampler(ds, world, rank, shuffle=True) if world > 1 else None
        return self._loader(ds, sampler, shuffle=sampler is None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # -- helpers ------------------------------------------------------------------------------------------
    def _check_lists(self) -> None:
        """Train/test overlap of the split lists: refused (file and lines named) unless ``allow_overlap``."""
        if "overlap_videos" in self.counts:
            return
        lists = self.root / LIST_DIR
        overlap = split_overlap(self.root, self.split, read_class_ind(lists / "classInd.txt"))
        if overlap and not self.allow_overlap:
            first = ", ".join(f"{p!r} (trainlist line {a}, testlist line {b})" for p, a, b in overlap[:3])
            raise ValueError(
                f"{len(overlap)} videos of {lists} are listed in both trainlist{self.split:02d}.txt and "
                f"testlist{self.split:02d}.txt ({first}): the test metrics would include training videos. Fix the "
                "lists, or set data.allow_overlap=true to run anyway (the run then reports data/overlap_videos)"
            )
        self.counts["overlap_videos"] = len(overlap)

    def _check_classes(self, train: list[VideoItem], names: list[str]) -> None:
        """Every class needs training videos: refused (class named) unless ``allow_missing`` (then counted)."""
        empty = empty_classes(train, names)
        self.counts["empty_classes"] = len(empty)
        if not empty:
            return
        msg = (f"{len(empty)} of {len(names)} classes have no training videos on disk "
               f"({', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}): the model would never learn them")
        if not self.allow_missing:
            raise ValueError(msg + "; add their videos, remove them from classInd.txt, or set allow_missing=true")
        log.warning("%s (allow_missing=true; counted in data/empty_classes)", msg)

    def _dataset(self, name: str) -> VideoClipDataset:
        if name not in self.datasets:
            self.setup("test" if name == "test" else "fit")
        return self.datasets[name]

    def _eval_loader(self, name: str) -> DataLoader:
        ds = self._dataset(name)
        world, rank = self._world()
        sampler = UnpaddedDistributedSampler(ds, world, rank) if world > 1 else None
        return self._loader(ds, sampler, shuffle=False)

    def _loader(self, ds: VideoClipDataset, sampler: Any, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            multiprocessing_context=self.multiprocessing_context,
            collate_fn=functools.partial(collate_skipping, dataset=ds),
        )

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0


class MotionShapesDataModule(VideoDataModule):
    """The generated ``motion_shapes`` set: ``prepare_data`` generates (or reuses) it, then as VideoDataModule.

    Args:
        root: where the tree is generated (give each generator variant its own root: a config change
            regenerates the tree in place).
        generator: :class:`MotionShapesConfig` or a mapping of its fields.
        **kwargs: :class:`VideoDataModule` options; defaults here: no resize, crop 56, no flips (direction
            labels are mirror-sensitive), zero-centred
            inputs (:data:`~motion_relevance.data.synthetic.MOTION_SHAPES_MEAN` / ``_STD`` on [0, 1] RGB),
            val_fraction 0.15, masks loaded.
    """

    def __init__(
        self,
        root: str | Path,
        generator: MotionShapesConfig | Mapping[str, Any] | None = None,
        resize: int | Sequence[int] | None = None,
        crop_size: int | Sequence[int] | None = 56,
        hflip: bool = False,
        mean: Sequence[float] | float = MOTION_SHAPES_MEAN,
        std: Sequence[float] | float = MOTION_SHAPES_STD,
        val_fraction: float = 0.15,
        **kwargs: Any,
    ) -> None:
        if generator is None:
            generator = MotionShapesConfig()
        elif not isinstance(generator, MotionShapesConfig):
            generator = MotionShapesConfig.from_dict({str(k): to_plain(v) for k, v in dict(generator).items()})
        self.generator = generator
        kwargs.setdefault("split", 1)
        super().__init__(
            root, resize=resize, crop_size=crop_size, hflip=hflip, mean=mean, std=std, val_fraction=val_fraction,
            **kwargs,
        )
        if self.split != 1:
            raise ValueError(f"split={self.split}: motion_shapes has only split 1")
        crop = self.eval_transform.crop_size
        frame = self.resize or tuple(generator.frame_size)
        if crop is not None and (crop[0] > frame[0] or crop[1] > frame[1]):
            raise ValueError(f"crop_size={crop} larger than the frames {frame}: allowed crop <= frame_size/resize")

    @property
    def class_names(self) -> list[str]:
        return self.generator.class_names

    def prepare_data(self) -> None:
        """Generate the set unless the manifest in ``root`` already has this config's hash; entries of an earlier
        tree that were kept rather than deleted (links, unstamped files) are counted as ``not_deleted``."""
        result = generate_motion_shapes(self.root, self.generator)
        if result.not_deleted:
            self.counts["not_deleted"] = self.counts.get("not_deleted", 0) + result.not_deleted

    def setup(self, stage: str | None = None) -> None:
        manifest = read_manifest(self.root)
        if manifest is None or manifest.get("hash") != self.generator.hash():
            self.prepare_data()  # setup() without prepare_data (tests, plain scripts): generate here
        super().setup(stage)


def _check_pathways(pathways: Mapping[str, Any] | None) -> dict[str, int] | None:
    """``data.pathways``: null, or ``{alpha: <int >= 2>}``; errors name the key."""
    if pathways is None:
        return None
    if not isinstance(pathways, Mapping) or set(pathways) != {"alpha"}:
        raise ValueError(f"data.pathways={pathways!r}: expected null or {{alpha: <frame-rate ratio>}}, e.g. "
                         "data.pathways={alpha:4} for SlowFast")
    alpha = pathways["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 2:
        raise ValueError(f"data.pathways.alpha={alpha!r}: expected an integer >= 2 (SlowFast uses 4)")
    return {"alpha": int(alpha)}
