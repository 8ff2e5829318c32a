"""Self-supervised pre-training before fine-tuning: ``mr-train pretrain=mae`` (config group ``pretrain``).

:class:`MaskedPretraining` trains a video transformer's own weights by masked video modelling with tube masking
(:mod:`motion_relevance.models.masking`) on the unlabelled training clips of the run's data, then hands the network
back to the usual supervised training. Labels are never read, and validation/test clips never seen. The loop is
plain PyTorch (AdamW, linear warm-up, cosine decay per step) so that it needs nothing from Lightning.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from motion_relevance.checks import check_float, check_int, check_positive
from motion_relevance.models.masking import MaskedVideoModel, embedding_and_features, native_grid, tube_mask

log = logging.getLogger(__name__)

__all__ = ["MaskedPretraining"]


class MaskedPretraining:
    """Masked video modelling with tube masking, configured from ``conf/pretrain/mae.yaml``.

    Args:
        epochs: passes over the training clips.
        mask_ratio: share of the spatial token positions masked in every time step (VideoMAE uses 0.9).
        lr: peak learning rate of AdamW, reached after ``warmup_epochs`` (linear), then cosine decay to 0.
        weight_decay: AdamW's weight decay.
        warmup_epochs: epochs of linear warm-up (may be fractional; 0 = none).
        norm_targets: predict each tubelet's pixels normalised by its own mean and std (VideoMAE's default); False:
            the data-normalised pixels (what worked on motion_shapes, whose static noise background is unpredictable).
        seed: seed of the masks (the clips' order comes from the data loader); ``None`` = drawn from torch's
            global generator (seeded by the run's ``seed``).
        max_steps: stop after this many optimiser steps (``None`` = all epochs); for quick checks.
    """

    def __init__(self, epochs: int = 15, mask_ratio: float = 0.75, lr: float = 1.0e-3, weight_decay: float = 0.05,
                 warmup_epochs: float = 1.0, norm_targets: bool = False, seed: int | None = 0,
                 max_steps: int | None = None) -> None:
        self.epochs = check_int("pretrain.epochs", epochs, 1)
        self.mask_ratio = check_float("pretrain.mask_ratio", mask_ratio, 0.0, 1.0)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"pretrain.mask_ratio={mask_ratio!r} out of range: allowed (0, 1) exclusive")
        self.lr = float(check_positive("pretrain.lr", lr))
        self.weight_decay = check_float("pretrain.weight_decay", weight_decay, 0.0)
        self.warmup_epochs = check_float("pretrain.warmup_epochs", warmup_epochs, 0.0, float(self.epochs))
        if not isinstance(norm_targets, bool):
            raise ValueError(f"pretrain.norm_targets={norm_targets!r}: expected true or false")
        self.norm_targets = norm_targets
        self.seed = None if seed is None else check_int("pretrain.seed", seed)
        self.max_steps = check_positive("pretrain.max_steps", max_steps, integer=True, allow_none=True)

    def check_net(self, net: nn.Module) -> None:
        """Refuse a network pre-training does not support (before any data is read); checks the mask ratio leaves
        a position visible and masks one on its token grid."""
        embedding_and_features(net)
        tube_mask(1, native_grid(net), self.mask_ratio)

    def fit(self, net: nn.Module, batches: Iterable[dict[str, Any]],
            device: torch.device | str | None = None) -> dict[str, float]:
        """Pre-train ``net`` in place on the clips of ``batches`` (a re-iterable loader of dicts with ``clip``
        ``(B, C, T, H, W)``) on ``device`` (``None``: where ``net`` is; ``net`` goes back there afterwards); returns
        ``{"pretrain/loss_first": …, "pretrain/loss": …, "pretrain/steps": …, "pretrain/seconds": …}`` (the first
        and last epochs' mean reconstruction losses)."""
        self.check_net(net)
        home = next(net.parameters()).device
        device = torch.device(device) if device is not None else home
        model = MaskedVideoModel(net, norm_targets=self.norm_targets)
        model.to(device)
        steps_per_epoch = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        total = self.epochs * steps_per_epoch if steps_per_epoch else None
        if self.max_steps is not None:
            total = min(total, self.max_steps) if total else self.max_steps
        warmup = round(self.warmup_epochs * steps_per_epoch) if steps_per_epoch else 0
        decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "mask_token" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "mask_token" in n]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        seed = int(torch.randint(0, 2**31 - 1, ())) if self.seed is None else self.seed
        generator = torch.Generator().manual_seed(seed)
        was_training = net.training
        model.train()
        start, step, losses = time.perf_counter(), 0, []
        try:
            for epoch in range(self.epochs):
                running, count = 0.0, 0
                for batch in batches:
                    clips = batch.get("clip")
                    if clips is None:
                        continue
                    clips = clips.to(device)
                    for group in optimizer.param_groups:
                        group["lr"] = self._lr(step, warmup, total)
                    mask = tube_mask(clips.shape[0], model.grid, self.mask_ratio, generator)
                    loss = model(clips, mask)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    running, count, step = running + float(loss.detach()), count + 1, step + 1
                    if self.max_steps is not None and step >= self.max_steps:
                        break
                losses.append(running / max(count, 1))
                log.info("Pre-training epoch %d/%d: reconstruction loss %.4f (%d steps, %.0f s)", epoch + 1,
                         self.epochs, losses[-1], step, time.perf_counter() - start)
                if self.max_steps is not None and step >= self.max_steps:
                    break
        finally:
            model.remove()
            net.train(was_training)
            net.to(home)
        if not losses or not all(math.isfinite(v) for v in losses):
            raise RuntimeError(f"pre-training gave no finite loss (losses per epoch: {losses}); lower pretrain.lr")
        return {"pretrain/loss_first": losses[0], "pretrain/loss": losses[-1], "pretrain/steps": float(step),
                "pretrain/seconds": time.perf_counter() - start}

    def _lr(self, step: int, warmup: int, total: int | None) -> float:
        """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if not total or total <= warmup:
            return self.lr
        progress = min((step - warmup) / (total - warmup), 1.0)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

