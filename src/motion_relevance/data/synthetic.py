"""``motion_shapes``: a synthetic action data set whose classes are defined by motion alone.

Each video shows a textured square moving in a class-specific way (translation in 8 directions, rotation,
expansion/contraction, oscillation) over a static background, optionally with distractor discs that move on
their own, a panning camera and backgrounds that leak the class (``context_bias``). Videos are written as
lossless FFV1 ``.avi`` files in the UCF-101 layout, so the same loaders serve UCF-101 and this set::

    <root>/UCF-101/<Class>/v_<Class>_gGG_cCC.avi        (groups gGG act like UCF's "people")
    <root>/ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt
    <root>/masks/<Class>/v_<Class>_gGG_cCC_mask.npz     (bool (T, H, W): pixels of the moving object)
    <root>/manifest.json                                (config + hash: same config -> nothing regenerated)

Generation is deterministic: every video draws from its own ``numpy`` generator seeded by
``(seed, class, video, purpose)``, so the same seed gives bit-identical decoded frames and masks, and
``swap_background=True`` changes only the backgrounds (same motion, background of class ``(c + 1) % K``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from ..checks import (
    check_choice,
    check_float,
    check_int,
    check_range_pair,
    check_size,
    check_unique,
    file_lock,
    normalize_relpath,
    resolve_inside,
)
from .masks import MASK_DIR, mask_path, save_mask
from .splits import LIST_DIR, VIDEO_DIR

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
#: Written before the first file and removed after the manifest: marks the files of an interrupted generation.
PARTIAL = ".motion_shapes-in-progress.json"
#: Lock file of concurrent generations into one root (bookkeeping, never deleted or counted as foreign).
LOCK = ".motion_shapes.lock"
_S2 = math.sqrt(0.5)
#: Motion kinds -> (class folder name, translation direction (dx, dy) in image coordinates, y down).
MOTIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "right": ("MoveRight", (1.0, 0.0)),
    "left": ("MoveLeft", (-1.0, 0.0)),
    "up": ("MoveUp", (0.0, -1.0)),
    "down": ("MoveDown", (0.0, 1.0)),
    "up_right": ("MoveUpRight", (_S2, -_S2)),
    "up_left": ("MoveUpLeft", (-_S2, -_S2)),
    "down_right": ("MoveDownRight", (_S2, _S2)),
    "down_left": ("MoveDownLeft", (-_S2, _S2)),
    "rotate_cw": ("RotateCW", (0.0, 0.0)),
    "rotate_ccw": ("RotateCCW", (0.0, 0.0)),
    "expand": ("Expand", (0.0, 0.0)),
    "contract": ("Contract", (0.0, 0.0)),
    "oscillate_h": ("OscillateH", (1.0, 0.0)),
    "oscillate_v": ("OscillateV", (0.0, 1.0)),
}
#: Per-channel mean and std of the default set's frames on [0, 1] RGB: zero-centred inputs.
MOTION_SHAPES_MEAN = (0.29, 0.29, 0.29)
MOTION_SHAPES_STD = (0.16, 0.16, 0.16)
TRANSLATIONS = ("right", "left", "up", "down", "up_right", "up_left", "down_right", "down_left")
TEXTURES = ("flat", "noise", "stripes", "checker")
_PURPOSE = {"motion": 1, "object": 2, "background": 3, "context": 4, "distractors": 5, "camera": 6, "noise": 7}


@dataclass
class MotionShapesConfig:
    """Configuration of the generated set (validated on construction; errors name the key and range).

    Attributes:
        classes: motion kinds (keys of ``MOTIONS``), one class each; default the 8 translation directions.
        videos_per_class: videos per class, spread over ``num_groups`` groups.
        num_groups: groups per class (like UCF "people": a group shares object size, colour and texture).
        test_groups: groups ``g01 .. gNN`` form ``testlist01.txt``; the others ``trainlist01.txt``.
        frame_size: ``(H, W)`` pixels. num_frames: ``(min, max)`` frames per video (uniform draw).
        fps: frame rate written to the files.
        object_size: ``(min, max)`` side of the square in pixels. speed: ``(min, max)`` pixels per frame
            (translation; rotation uses 4 degrees per unit, expansion grows the side by ``speed`` px/frame).
        object_texture, background_texture: one of ``TEXTURES``.
        context_bias: probability that a video's background is its class's background (0 = independent).
        swap_background: give every video the class background of class ``(c + 1) % K`` (context study).
        distractors: number of discs per video moving in random directions (not in the mask).
        camera_pan: maximal camera speed in px/frame (0 = static camera); the whole frame shifts.
        pixel_noise: std of per-frame Gaussian pixel noise (0-255 units).
        seed: master seed.
    """

    classes: Sequence[str] = field(default_factory=lambda: list(TRANSLATIONS))
    videos_per_class: int = 64
    num_groups: int = 8
    test_groups: int = 2
    frame_size: Sequence[int] = (64, 64)
    num_frames: Sequence[int] = (16, 24)
    fps: float = 25.0
    object_size: Sequence[int] = (12, 18)
    speed: Sequence[float] = (1.0, 2.0)
    object_texture: str = "flat"
    background_texture: str = "noise"
    context_bias: float = 0.0
    swap_background: bool = False
    distractors: int = 0
    camera_pan: float = 0.0
    pixel_noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise ValueError("classes=[]: need at least 2 motion kinds")
        check_unique("classes", self.classes)
        for c in self.classes:
            check_choice("classes", c, MOTIONS)
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"classes={self.classes}: need at least 2 distinct motion kinds of {list(MOTIONS)}")
        check_int("videos_per_class", self.videos_per_class, 1, 100_000)
        check_int("num_groups", self.num_groups, 1, 99)
        if self.videos_per_class < self.num_groups:
            raise ValueError(
                f"videos_per_class={self.videos_per_class} out of range: allowed >= num_groups ({self.num_groups})"
            )
        check_int("test_groups", self.test_groups, 0, self.num_groups - 1)
        self.frame_size = check_size("frame_size", self.frame_size, 16)
        self.num_frames = check_range_pair("num_frames", self.num_frames, 1, 10_000, integer=True)
        check_float("fps", self.fps, 1.0, 1000.0)
        h, w = self.frame_size
        self.object_size = check_range_pair("object_size", self.object_size, 2, min(h, w) // 2, integer=True)
        self.speed = check_range_pair("speed", self.speed, 0.0, 50.0)
        check_choice("object_texture", self.object_texture, TEXTURES)
        check_choice("background_texture", self.background_texture, TEXTURES)
        check_float("context_bias", self.context_bias, 0.0, 1.0)
        self.swap_background = bool(self.swap_background)
        check_int("distractors", self.distractors, 0, 20)
        check_float("camera_pan", self.camera_pan, 0.0, 10.0)
        check_float("pixel_noise", self.pixel_noise, 0.0, 128.0)
        check_int("seed", self.seed, 0, 2**63 - 1)

    @property
    def class_names(self) -> list[str]:
        """Folder names of the classes, in label order."""
        return [MOTIONS[c][0] for c in self.classes]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able config (lists instead of tuples)."""
        return {k: list(v) if isinstance(v, tuple | list) else v for k, v in asdict(self).items()}

    def hash(self) -> str:
        """Hash of the config and generator version: the cache key of a generated tree."""
        payload = json.dumps({"v": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MotionShapesConfig:
        """Build from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown motion_shapes keys {unknown}; allowed: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------
# rendering
@dataclass
class RenderedVideo:
    """Frames uint8 RGB ``(T, H, W, 3)``, object mask bool ``(T, H, W)`` and the drawing parameters."""

    frames: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]


def _rng(cfg: MotionShapesConfig, *key: int | str) -> np.random.Generator:
    ints = [k if isinstance(k, int) else _PURPOSE[k] for k in key]
    return np.random.default_rng([cfg.seed, *ints])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    px = np.array([[[h * 180.0, s * 255.0, v * 255.0]]], dtype=np.float32).clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.int16)


def texture(kind: str, height: int, width: int, color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 texture of base ``color``: flat, noise, stripes or checker."""
    base = np.broadcast_to(np.asarray(color, np.int16), (height, width, 3)).copy()
    if kind == "noise":
        base += rng.normal(0, 18, size=(height, width, 1)).astype(np.int16)
    elif kind in ("stripes", "checker"):
        period = int(rng.integers(3, 7))
        yy, xx = np.mgrid[0:height, 0:width]
        if kind == "stripes":
            orient = int(rng.integers(0, 3))
            coord = (yy, xx, xx + yy)[orient]
            dark = (coord // period) % 2 == 1
        else:
            dark = ((yy // period) + (xx // period)) % 2 == 1
        base[dark] = (base[dark] * 0.55).astype(np.int16)
    return base.clip(0, 255).astype(np.uint8)


def _background(cfg: MotionShapesConfig, class_idx: int, video_idx: int, size: tuple[int, int]) -> tuple:
    """Background canvas and whether it is a class background (and whose)."""
    k = len(cfg.classes)
    use_class = cfg.swap_background or (_rng(cfg, class_idx, video_idx, "context").random() < cfg.context_bias)
    if use_class:
        owner = (class_idx + 1) % k if cfg.swap_background else class_idx
        rng = _rng(cfg, 10_000 + owner, 0, "background")
        color = _hsv(owner / k, 0.8, 0.38)
    else:
        owner = -1
        rng = _rng(cfg, class_idx, video_idx, "background")
        color = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.45))
    return texture(cfg.background_texture, size[0], size[1], color, rng), owner


def _trajectory(
    kind: str, n: int, hw: tuple[int, int], side: float, speed: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre ``(n, 2)`` (x, y), angle in degrees ``(n,)`` (counter-clockwise) and side ``(n,)``."""
    h, w = hw
    t = np.arange(n, dtype=np.float64)
    angle = np.full(n, rng.uniform(0, 90))
    sides = np.full(n, side)
    d = np.array(MOTIONS[kind][1])
    if kind in TRANSLATIONS:
        half = side / 2
        span = np.array([w, h]) - 2 * half - 1
        need = np.abs(d) * (n - 1)
        speed = float(min(speed, *(span[need > 0] / need[need > 0])))
        disp = d * speed * (n - 1)
        lo = half + np.maximum(0, -disp)
        hi = np.array([w, h]) - half - 1 - np.maximum(0, disp)
        start = lo + rng.random(2) * np.maximum(hi - lo, 0)
        centre = start + np.outer(t * speed, d)
        angle[:] = 0.0
    elif kind.startswith("oscillate"):
        amp = min(rng.uniform(5, 9) * max(speed, 0.5), (min(h, w) - side) / 2 - 1)
        period = rng.uniform(8, 12)
        phase = rng.uniform(0, 2 * math.pi)
        c0 = np.array([w, h]) / 2 + rng.uniform(-2, 2, 2)
        centre = c0 + np.outer(amp * np.sin(2 * math.pi * t / period + phase), d)
    else:
        if kind in ("expand", "contract"):
            rate = max(speed, 0.25)
            s0 = max(3.0, side * 0.5)
            s1 = min(s0 + rate * (n - 1), min(h, w) * 0.8)
            sides = np.linspace(s0, s1, n) if kind == "expand" else np.linspace(s1, s0, n)
        else:
            omega = 4.0 * max(speed, 0.5) * (1 if kind == "rotate_ccw" else -1)
            angle = angle + omega * t
        r = sides.max() * _S2 + 1
        c0 = np.array([rng.uniform(r, max(r, w - r - 1)), rng.uniform(r, max(r, h - r - 1))])
        centre = np.broadcast_to(c0, (n, 2)).copy()
    return centre, angle, sides


def _square_corners(centre: np.ndarray, angle_deg: float, side: float) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # ccw on screen (y down)
    half = side / 2
    pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]]) @ rot.T
    return pts + centre


def render_video(cfg: MotionShapesConfig, class_idx: int, video_idx: int) -> RenderedVideo:
    """Draw video ``video_idx`` of class ``class_idx`` (deterministic in ``cfg.seed``)."""
    h, w = cfg.frame_size
    kind = cfg.classes[class_idx]
    group = video_idx % cfg.num_groups
    mrng = _rng(cfg, class_idx, video_idx, "motion")
    n = int(mrng.integers(cfg.num_frames[0], cfg.num_frames[1] + 1))
    grng = _rng(cfg, 20_000 + group, class_idx, "object")  # group-level look: size, colour
    side = float(grng.integers(cfg.object_size[0], cfg.object_size[1] + 1))
    color = _hsv(grng.random(), grng.uniform(0.6, 1.0), grng.uniform(0.8, 1.0))
    speed = float(mrng.uniform(*cfg.speed))
    centre, angle, sides = _trajectory(kind, n, (h, w), side, speed, mrng)

    crng = _rng(cfg, class_idx, video_idx, "camera")
    cam_v = crng.uniform(-1, 1, 2) * cfg.camera_pan
    pad = int(math.ceil(cfg.camera_pan * n)) + 1 if cfg.camera_pan > 0 else 0
    canvas, bg_owner = _background(cfg, class_idx, video_idx, (h + 2 * pad, w + 2 * pad))
    cam0 = np.array([pad, pad], dtype=np.float64) - np.where(cam_v > 0, pad, 0) * (cfg.camera_pan > 0)
    obj_tex_size = int(math.ceil(sides.max() * 1.5)) + 2
    obj_tex = texture(cfg.object_texture, obj_tex_size, obj_tex_size, color, grng)

    drng = _rng(cfg, class_idx, video_idx, "distractors")
    dist = [
        {
            "pos": drng.uniform([0, 0], [w, h]),
            "vel": drng.uniform(cfg.speed[0], max(cfg.speed[1], 0.5)) * _unit(drng.uniform(0, 2 * math.pi)),
            "radius": int(drng.integers(2, max(3, cfg.object_size[0] // 2) + 1)),
            "color": tuple(int(c) for c in _hsv(drng.random(), drng.uniform(0.3, 1.0), drng.uniform(0.5, 1.0))),
        }
        for _ in range(cfg.distractors)
    ]
    nrng = _rng(cfg, class_idx, video_idx, "noise")

    frames = np.empty((n, h, w, 3), np.uint8)
    mask = np.zeros((n, h, w), bool)
    for i in range(n):
        cam = np.round(cam0 + cam_v * i).astype(int)  # camera offset into the canvas (x, y)
        frame = canvas[cam[1] : cam[1] + h, cam[0] : cam[0] + w].copy()
        shift = cam - pad  # world -> image: subtract the camera's movement
        for dd in dist:
            p = _bounce(dd["pos"] + dd["vel"] * i, (w, h))
            cv2.circle(frame, tuple(int(round(v)) for v in p - shift), dd["radius"], dd["color"], -1, cv2.LINE_8)
        corners = _square_corners(centre[i] - shift, angle[i], sides[i])
        m = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(m, np.round(corners * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
        sel = m.astype(bool)
        # texture in object coordinates: moves (and rotates) with the object
        tc = (obj_tex_size - 1) / 2
        rot = cv2.getRotationMatrix2D((tc, tc), -angle[i], 1.0)
        rot[:, 2] += centre[i] - shift - tc
        tex = cv2.warpAffine(obj_tex, rot, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
        frame[sel] = tex[sel]
        if cfg.pixel_noise > 0:
            noise = nrng.normal(0, cfg.pixel_noise, frame.shape)
            frame = (frame + noise).clip(0, 255).astype(np.uint8)
        frames[i] = frame
        mask[i] = sel
    meta = {
        "kind": kind,
        "num_frames": n,
        "side": side,
        "speed": speed,
        "object_color": [int(c) for c in color],
        "background_class": bg_owner,
        "camera_velocity": cam_v.tolist(),
        "group": group + 1,
    }
    return RenderedVideo(frames, mask, meta)


def _unit(a: float) -> np.ndarray:
    return np.array([math.cos(a), math.sin(a)])


def _bounce(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reflect a free position into ``[0, size)`` (distractors bounce off the frame edges)."""
    out = np.empty(2)
    for k in range(2):
        period = 2 * (size[k] - 1)
        v = p[k] % period
        out[k] = v if v < size[k] else period - v
    return out


# ---------------------------------------------------------------------------------------------------------
# writing the tree
@dataclass
class GeneratedSet:
    """Result of :func:`generate_motion_shapes`: where it is and whether work was done."""

    root: Path
    class_names: list[str]
    num_videos: int
    generated: bool
    seconds: float
    #: bookkeeping entries of an earlier tree that were not deleted (symlinks, no stamp, ...; each logged)
    not_deleted: int = 0


def video_name(class_name: str, video_idx: int, num_groups: int) -> str:
    """UCF-style file name of a video: group ``video_idx % num_groups + 1``, clip ``video_idx // num_groups + 1``."""
    return f"v_{class_name}_g{video_idx % num_groups + 1:02d}_c{video_idx // num_groups + 1:02d}.avi"


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 RGB frames ``(T, H, W, 3)`` as lossless FFV1 in an ``.avi`` container."""
    t, h, w, _ = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot open a FFV1 video writer for {path}")
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    finally:
        writer.release()


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PermissionError(f"data dir {root} is not writable for generating motion_shapes: {exc}") from exc


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a generated tree, or ``None``."""
    try:
        data = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == "motion_shapes" else None


def planned_files(cfg: MotionShapesConfig) -> list[str]:
    """Every file (relative to the root) a tree of ``cfg`` consists of: videos, masks and the split lists."""
    files = []
    for name in cfg.class_names:
        for v in range(cfg.videos_per_class):
            rel = f"{name}/{video_name(name, v, cfg.num_groups)}"
            files.append(f"{VIDEO_DIR}/{rel}")
            files.append(mask_path(MASK_DIR, rel).as_posix())
    files += [f"{LIST_DIR}/{n}" for n in ("classInd.txt", "trainlist01.txt", "testlist01.txt")]
    return files


#: What a bookkeeping file records per generated file: ``{"size": bytes, "mtime_ns": ns}``, or ``None`` (the
#: progress marker lists its files before writing them).
Stamp = dict[str, int] | None


@dataclass(frozen=True)
class _Owned:
    """One file the bookkeeping says the generator wrote: its stamp and the bookkeeping file that lists it.

    ``written_after_ns``: for entries of the progress marker (no stamp yet), the marker's own mtime; such a file is
    the generator's only if it was modified after the marker was written.
    """

    stamp: Stamp
    source: Path
    written_after_ns: int | None = None


def _check_stamp(source: Path, rel: Any, stamp: Any) -> Stamp:
    """A manifest entry's stamp, or ``ValueError`` naming the file and the entry."""
    if not isinstance(rel, str):
        raise ValueError(f"{source}: entry {rel!r} of 'files' is not a path; delete the folder or choose another")
    if stamp is None:
        return None
    ok = isinstance(stamp, dict) and set(stamp) == {"size", "mtime_ns"} and all(
        isinstance(v, int) and not isinstance(v, bool) for v in stamp.values())
    if not ok:
        raise ValueError(f"{source}: entry {rel!r} has the stamp {stamp!r}, expected {{'size': int, 'mtime_ns': int}} "
                         "or null; the file is not motion_shapes bookkeeping: move it away or choose another data.root")
    return stamp


def _owned_files(root: Path) -> dict[str, _Owned]:
    """Files this generator wrote under ``root`` (normalised relative path -> stamp and source), from the manifest
    or from the marker of an interrupted generation; empty when it wrote nothing here.

    Raises ``ValueError`` naming the file for bookkeeping whose ``files`` is not a mapping of path -> stamp, or that
    lists a path outside ``root`` (absolute or ``..``).
    """
    owned: dict[str, _Owned] = {}
    for name in (MANIFEST, PARTIAL):
        source = root / name
        try:
            data = json.loads(source.read_text())
            marker_ns = source.stat().st_mtime_ns
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("generator") != "motion_shapes":
            continue
        files = data.get("files")
        if files is None and isinstance(data.get("config"), dict):  # manifests of generator version 1 list no files
            files = dict.fromkeys(planned_files(MotionShapesConfig.from_dict(data["config"])))
        if not isinstance(files, dict):
            raise ValueError(f"{source}: 'files' is {type(files).__name__}, expected a mapping of path -> stamp; "
                             "move the file away or choose another data.root")
        after = marker_ns if name == PARTIAL else None
        for rel, stamp in files.items():
            stamp = _check_stamp(source, rel, stamp)
            key = normalize_relpath(rel, root=root, source=source)
            owned[key] = _Owned(stamp, source, after)
    return owned


def _foreign_entries(root: Path, owned: dict[str, Any]) -> list[str]:
    """Files and folders under ``root`` the generator did not write (its own bookkeeping files excluded)."""
    folders = {parent.as_posix() for rel in owned for parent in Path(rel).parents}
    foreign = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            if rel not in folders and not any(path.iterdir()):
                foreign.append(rel + "/")
            continue
        if rel in owned or rel in (MANIFEST, PARTIAL, LOCK) or path.name.startswith((f".{MANIFEST}.", ".write-test-")):
            continue
        foreign.append(rel)
    return foreign


def _symlink_on_path(root: Path, rel: str) -> str | None:
    """The first component of ``root / rel`` below ``root`` that is a symlink (relative to ``root``), or ``None``.

    ``root`` itself may be a link (a data folder linked from another disk); nothing below it is followed.
    """
    path, parts = root, rel.split("/")
    for i, part in enumerate(parts):
        path = path / part
        if path.is_symlink():
            return "/".join(parts[: i + 1])
        if not path.exists():
            return None
    return None


def _why_not_deletable(root: Path, rel: str, entry: _Owned) -> str | None:
    """Why ``rel`` must not be deleted (a one-line reason), ``None`` when it may be, ``""`` when it is absent."""
    link = _symlink_on_path(root, rel)
    if link is not None:
        return "it is a symlink" if link == rel else f"its path goes through the symlink {link!r}"
    path = root / rel
    try:
        st = path.lstat()
    except FileNotFoundError:
        return ""
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    try:
        resolve_inside(root, rel)
    except ValueError as err:
        return str(err)
    if entry.written_after_ns is not None:
        if st.st_mtime_ns < entry.written_after_ns:
            return "it is older than the marker of the interrupted generation that lists it"
        return None
    if entry.stamp is None:
        return "the entry has no size/mtime stamp, so the generator cannot tell it wrote this file"
    return None


def _remove_owned(root: Path, owned: dict[str, _Owned]) -> list[str]:
    """Delete the generator's own regular files (refusing any the user changed since) and the folders left empty.

    Never deletes through a symlink, a link itself, anything outside ``root`` or an entry without a stamp: those are
    kept and logged; returns their relative paths.
    """
    changed, keep, delete = [], [], []
    for rel, entry in owned.items():
        why = _why_not_deletable(root, rel, entry)
        if why == "":
            continue
        if why is not None:
            keep.append(rel)
            log.warning("%s: entry %r is not deleted: %s", entry.source, rel, why)
            continue
        st = (root / rel).stat()
        if entry.stamp is not None and (st.st_size, st.st_mtime_ns) != (entry.stamp["size"], entry.stamp["mtime_ns"]):
            changed.append(rel)
        else:
            delete.append(rel)
    if changed:
        raise FileExistsError(
            f"{root} holds files the motion_shapes generator wrote that were changed since ({', '.join(changed[:5])}"
            f"{' ...' if len(changed) > 5 else ''}); they are not deleted. Move them away or generate into another "
            "folder (data.root / paths.data_dir)"
        )
    for rel in delete:
        (root / rel).unlink(missing_ok=True)
    parents = {p.as_posix() for name in owned for p in PurePosixPath(name).parents} - {"."}
    for sub in sorted(parents, key=lambda r: r.count("/"), reverse=True):  # deepest first
        folder = root / sub
        if _symlink_on_path(root, sub) is None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return keep


def _check_free(root: Path, files: list[str], kept: list[str]) -> None:
    """Refuse to write where a kept entry, a leftover or a symlink would be overwritten or written through."""
    for rel in files:
        link = _symlink_on_path(root, rel)
        if link is not None or os.path.lexists(root / rel):
            what = f"the symlink {root / link}" if link is not None else f"{root / rel}"
            raise FileExistsError(
                f"cannot generate motion_shapes into {root}: {what} is in the way and was not deleted "
                f"({len(kept)} bookkeeping entries kept, see the warnings); move it away or choose another folder "
                "(paths.data_dir=... or data.root=...)"
            )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def generate_motion_shapes(root: str | Path, cfg: MotionShapesConfig | None = None) -> GeneratedSet:
    """Generate the set under ``root`` unless a tree with the same config hash is already there.

    The generator deletes only what it wrote: files listed in its manifest (or, after an interrupted run, in its
    progress marker), never other files, and not those changed since it wrote them. A root holding anything it did
    not write is refused before any work, so a user's videos, split lists or masks are never touched.
    Processes that generate the same root at once (parallel sweep jobs) take turns through a lock file in it
    (``LOCK``, the generator's own bookkeeping): the first generates, the others then find the finished tree.
    """
    root = Path(root)
    cfg = cfg or MotionShapesConfig()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return _generate(root, cfg)  # its checks name what is in the way (a file, no write permission)
    with file_lock(root / LOCK):
        return _generate(root, cfg)


def _generate(root: Path, cfg: MotionShapesConfig) -> GeneratedSet:
    key = cfg.hash()
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("hash") == key and not (root / PARTIAL).exists():
        return GeneratedSet(root, cfg.class_names, int(manifest["num_videos"]), False, 0.0)
    owned = _owned_files(root) if root.is_dir() else {}
    if root.is_dir():
        foreign = _foreign_entries(root, owned)
        if foreign:
            raise FileExistsError(
                f"cannot generate motion_shapes into {root}: it holds files not generated by motion_shapes "
                f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; {len(foreign)} in all). Choose an "
                "empty folder or one motion_shapes created (paths.data_dir=... or data.root=...)"
            )
    _check_writable(root)
    t0 = time.perf_counter()
    kept = _remove_owned(root, owned)
    files = planned_files(cfg)
    _check_free(root, files, kept)
    (root / MANIFEST).unlink(missing_ok=True)
    _write_json(root / PARTIAL, {"generator": "motion_shapes", "hash": key, "files": dict.fromkeys(files)})

    names = cfg.class_names
    train, test = [], []
    for c, name in enumerate(names):
        (root / VIDEO_DIR / name).mkdir(parents=True, exist_ok=True)
        for v in range(cfg.videos_per_class):
            fname = video_name(name, v, cfg.num_groups)
            rel = f"{name}/{fname}"
            vid = render_video(cfg, c, v)
            write_video(root / VIDEO_DIR / rel, vid.frames, cfg.fps)
            save_mask(mask_path(root / MASK_DIR, rel), vid.mask)
            (test if v % cfg.num_groups < cfg.test_groups else train).append((rel, c))
    lists = root / LIST_DIR
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (lists / "trainlist01.txt").write_text("".join(f"{r} {c + 1}\n" for r, c in train))
    (lists / "testlist01.txt").write_text("".join(f"{r}\n" for r, _ in test))
    seconds = time.perf_counter() - t0
    num = len(names) * cfg.videos_per_class
    stamps = {}
    for rel in files:
        st = (root / rel).stat()
        stamps[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    data = {"generator": "motion_shapes", "version": GENERATOR_VERSION, "hash": key, "config": cfg.to_dict(),
            "class_names": names, "num_videos": num, "seconds": round(seconds, 3), "files": stamps}
    _write_json(root / MANIFEST, data)  # written last: an interrupted run is cleaned up and regenerated next time
    (root / PARTIAL).unlink(missing_ok=True)
    log.info("generated motion_shapes (%d videos) in %s in %.1f s", num, root, seconds)
    return GeneratedSet(root, names, num, True, seconds, len(kept))
