"""Parallel sweep jobs that generate the same motion_shapes root take turns: one generates, the others reuse it."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from motion_relevance.data.synthetic import LOCK, MotionShapesConfig, generate_motion_shapes, read_manifest

TINY = {"classes": ["right", "left"], "videos_per_class": 3, "num_groups": 3, "test_groups": 1,
        "frame_size": (40, 40), "num_frames": (16, 16), "object_size": (8, 10)}


def _generate(root: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        queue.put(generate_motion_shapes(root, MotionShapesConfig(**TINY)).generated)
    except Exception as err:  # noqa: BLE001 - reported to the parent
        queue.put(repr(err))


def test_concurrent_generations_of_one_root_take_turns(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    root = tmp_path / "ms"
    jobs = [ctx.Process(target=_generate, args=(str(root), queue)) for _ in range(3)]
    for job in jobs:
        job.start()
    results = [queue.get(timeout=120) for _ in jobs]
    for job in jobs:
        job.join(timeout=60)
    assert sorted(results, key=str) == [False, False, True], results  # no FileExistsError, one generation
    manifest = read_manifest(root)
    assert manifest is not None and manifest["hash"] == MotionShapesConfig(**TINY).hash()
    assert (root / LOCK).is_file()
    # the lock file is the generator's own: a later generation of another config in the same root still works
    again = generate_motion_shapes(root, MotionShapesConfig(**{**TINY, "videos_per_class": 4}))
    assert again.generated and again.num_videos == 8
