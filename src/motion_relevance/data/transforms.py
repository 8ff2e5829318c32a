"""Clip transforms: crop / flip on uint8 frames, then per-channel normalisation to a float (3, T, H, W) clip.

Normalisation (CONTRACTS.md): ``clip = (frames_in_channel_order / scale - mean) / std`` per channel. The C3D
Sports-1M port expects ``channel_order="BGR"``, ``scale=1``, ``mean=(90.25, 97.66, 101.41)``, ``std=(1, 1, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..checks import check_choice, check_float, check_size

CHANNEL_ORDERS = ("RGB", "BGR")
#: ImageNet statistics on [0, 1] RGB values: the default for models trained from scratch on UCF-101.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Mean of the C3D Sports-1M port (BGR order, 0-255 values, std 1).
C3D_PORT_MEAN_BGR = (90.25, 97.66, 101.41)


def _triple(key: str, value: Sequence[float] | float) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        value = (value,) * 3
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        raise ValueError(f"{key}={value!r}: expected 3 per-channel values")
    return vals  # type: ignore[return-value]


class ClipTransform:
    """Spatial crop (+ flip when training) and normalisation of a clip.

    Args:
        crop_size: output ``(H, W)`` (int = square); ``None`` keeps the full frame.
        mean, std: per-channel statistics, given in ``channel_order``, on values divided by ``scale``.
        scale: divisor applied to 0-255 values first (255 for [0, 1] inputs, 1 for the C3D port).
        channel_order: ``"RGB"`` or ``"BGR"``, the order of the output channels.
        train: random crop (+ random horizontal flip if ``hflip``; ``torch`` global RNG) instead of the
            centre crop.
        hflip: flip half of the training clips horizontally. Turn it off when labels are mirror-sensitive
            (motion_shapes directions: a flipped "MoveRight" clip is a "MoveLeft" clip).
        channel_shuffle: permute the colour channels of each training clip at random (same permutation for every
            frame): colour carries no class information, motion is unchanged. Takes away a colour shortcut from
            models that would otherwise fit the training clips by their objects' colours (``videomae_tiny``).
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] | None = 112,
        mean: Sequence[float] | float = IMAGENET_MEAN,
        std: Sequence[float] | float = IMAGENET_STD,
        scale: float = 255.0,
        channel_order: str = "RGB",
        train: bool = False,
        hflip: bool = True,
        channel_shuffle: bool = False,
    ) -> None:
        self.crop_size = check_size("crop_size", crop_size)
        self.mean = _triple("mean", mean)
        self.std = _triple("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std={self.std}: every value must be > 0")
        self.scale = check_float("scale", scale, 1e-6)
        self.channel_order = check_choice("channel_order", str(channel_order).upper(), CHANNEL_ORDERS)
        self.train = bool(train)
        self.hflip = bool(hflip)
        self.channel_shuffle = bool(channel_shuffle)
        shape = (3, 1, 1, 1)
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(shape)
        # (x / scale - mean) / std folded into x * gain - offset: one conversion and two in-place passes
        mean64 = torch.tensor(self.mean, dtype=torch.float64).view(shape)
        std64 = torch.tensor(self.std, dtype=torch.float64).view(shape)
        self._gain = (1.0 / (self.scale * std64)).float()
        self._offset = (mean64 / std64).float()

    def config(self) -> dict[str, Any]:
        """Plain-dict description (for checkpoints): crop_size, mean, std, scale, channel_order."""
        return {
            "crop_size": list(self.crop_size) if self.crop_size else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "channel_order": self.channel_order,
        }

    def crop_box(self, height: int, width: int) -> tuple[int, int, bool]:
        """Top, left and flip flag for a frame of ``height x width`` (random when training)."""
        if self.crop_size is None:
            return 0, 0, self._flip()
        ch, cw = self.crop_size
        if ch > height or cw > width:
            raise ValueError(f"crop_size={self.crop_size} larger than the decoded frames ({height}, {width})")
        if not self.train:
            return (height - ch) // 2, (width - cw) // 2, False
        top = int(torch.randint(0, height - ch + 1, ()))
        left = int(torch.randint(0, width - cw + 1, ()))
        return top, left, self._flip()

    def _flip(self) -> bool:
        return bool(self.train and self.hflip and torch.rand(()) < 0.5)

    def spatial(
        self, frames: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Crop (and flip) uint8 frames ``(T, H, W, 3)`` and the same region of a bool mask ``(T, H, W)``."""
        top, left, flip = self.crop_box(frames.shape[1], frames.shape[2])
        ch, cw = self.crop_size or frames.shape[1:3]
        frames = frames[:, top : top + ch, left : left + cw]
        if mask is not None:
            mask = mask[:, top : top + ch, left : left + cw]
        if flip:
            frames = frames[:, :, ::-1]
            mask = mask[:, :, ::-1] if mask is not None else None
        if self.train and self.channel_shuffle:
            frames = frames[..., torch.randperm(3).numpy()]
        return frames, mask

    def normalize(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames ``(T, H, W, 3)`` -> float32 clip ``(3, T, H, W)`` in ``channel_order``."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
        if self.channel_order == "BGR":
            x = x.flip(0)
        out = torch.empty(x.shape, dtype=torch.float32)
        out.copy_(x)  # uint8 -> float32, channels-first and contiguous in one pass
        return out.mul_(self._gain).sub_(self._offset)

    def __call__(
        self, frames: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full pipeline: returns the clip ``(3, T, h, w)`` float32 and the mask ``(T, h, w)`` bool or None."""
        frames, mask = self.spatial(frames, mask)
        clip = self.normalize(frames)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)) if mask is not None else None
        return clip, mask_t

    def denormalize(self, clip: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Invert the normalisation: ``(3, T, H, W)`` -> uint8 RGB ``(T, H, W, 3)``; ``(B, 3, T, H, W)`` ->
        ``(B, T, H, W, 3)``. Returns the input's type (numpy in -> numpy out, torch in -> torch on CPU out)."""
        is_np = isinstance(clip, np.ndarray)
        x = torch.from_numpy(clip) if is_np else clip.detach().cpu()
        x = x.float()
        batched = x.dim() == 5
        if not batched:
            x = x.unsqueeze(0)
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"denormalize expects (3,T,H,W) or (B,3,T,H,W), got {tuple(clip.shape)}")
        x = (x * self._std_t + self._mean_t) * self.scale
        if self.channel_order == "BGR":
            x = x.flip(1)
        out = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()
        if not batched:
            out = out[0]
        return out.numpy() if is_np else out
