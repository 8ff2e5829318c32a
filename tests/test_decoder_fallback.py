"""decord2 cannot decode some frame widths (16, 32, 48, 96 px): those files are read with OpenCV, with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from motion_relevance.data.video import VideoDecoder, decord_available


def _video(path: Path, width: int, height: int, frames: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 25.0, (width, height))
    for f in data:
        writer.write(f)
    writer.release()
    return data[..., ::-1]  # RGB


@pytest.mark.skipif(not decord_available(), reason="decord (decord2) is not installed")
@pytest.mark.parametrize("width", [32, 64])
def test_decord_backend_reads_every_width(tmp_path: Path, width: int, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "v.avi"
    rgb = _video(path, width, 32)
    dec = VideoDecoder("decord")
    with caplog.at_level(logging.WARNING, logger="motion_relevance.data.video"):
        meta = dec.meta(path)
        frames = dec.read(path, [4, 0, 4])
    assert (meta.num_frames, meta.height, meta.width) == (6, 32, width)
    np.testing.assert_array_equal(frames, rgb[[4, 0, 4]])  # FFV1 is lossless
    np.testing.assert_array_equal(frames, VideoDecoder("opencv").read(path, [4, 0, 4]))
    fell_back = "reading it with OpenCV" in caplog.text
    assert fell_back == (str(path) in dec._opencv_paths)


@pytest.mark.skipif(not decord_available(), reason="decord (decord2) is not installed")
def test_resize_is_the_same_for_both_backends(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    _video(path, 64, 48)
    a = VideoDecoder("decord", resize=(32, 40)).read(path, [0, 3])
    b = VideoDecoder("opencv", resize=(32, 40)).read(path, [0, 3])
    assert a.shape == (2, 32, 40, 3)
    np.testing.assert_array_equal(a, b)


def test_a_file_no_decoder_reads_is_still_refused(tmp_path: Path) -> None:
    from motion_relevance.data.video import VideoDecodeError

    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoDecodeError, match="bad.avi"):
        VideoDecoder("decord").read(bad, [0])
