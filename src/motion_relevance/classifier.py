"""The LightningModule that trains and evaluates a clip classifier (C3D by default); outside ``models/``, which
stays free of Lightning.

Batches are the dicts of :mod:`motion_relevance.data` (``clip`` ``(B, 3, T, H, W)``, ``label`` ``(B,)``, optional
``skipped`` list of undecodable files). Optimiser and scheduler come from config as partials
(``_partial_: true``), as in lightning-hydra-template; the paper's set-up is SGD (lr 1e-3, momentum 0.9) with
ReduceLROnPlateau (factor 0.1, patience 10 epochs) on the validation loss.

Checkpoints carry what is needed to rebuild the model and its input pipeline without the training config:
``checkpoint["motion_relevance"] = {"model": <net config>, "preprocessing": <data transform config>,
"class_names": [...]}``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from motion_relevance.checks import to_plain
from motion_relevance.data.failures import FailureTracker
from motion_relevance.models.checkpoint import CHECKPOINT_KEY
from motion_relevance.models.published import load_model_weights


class VideoClassifier(pl.LightningModule):
    """Cross-entropy training of ``net`` on clips, with top-1 accuracy and a count of skipped videos.

    Args:
        net: the network, ``(B, C, T, H, W) -> (B, num_classes)`` logits.
        optimizer: a partial taking the parameters (``torch.optim.SGD`` with ``_partial_: true``).
        scheduler: optional partial taking the optimiser (``ReduceLROnPlateau`` …).
        scheduler_monitor: metric the scheduler watches (``val/loss``).
        max_failure_fraction: stop with an error when more than this share of the videos a stage tried
            could not be decoded.
        net_config: the net's config (plain dict with ``_target_``), stored in checkpoints.
        preprocessing: the data's transform config (plain dict), stored in checkpoints.
        class_names: names of the classes, stored in checkpoints.
        pretrained: optional published weights loaded into ``net`` before training (``model.pretrained=…``, see
            :func:`~motion_relevance.models.published.load_model_weights`); the final layer is re-initialised when its
            class count differs. Not stored in checkpoints (they hold the trained weights).
        explain_layer: the layer Grad-CAM explains by default (a module path of ``net``, e.g. ``conv5b`` or
            ``layer4``); set on the network as ``net.explain_layer`` and stored in checkpoints. ``None`` keeps the
            network's own default.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        max_failure_fraction: float = 0.1,
        net_config: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        class_names: list[str] | None = None,
        pretrained: str | None = None,
        explain_layer: str | None = None,
    ) -> None:
        super().__init__()
        if optimizer is not None and not callable(optimizer):
            raise ValueError(
                f"model.optimizer must be a callable taking the parameters (a Hydra partial), got {optimizer!r}"
            )
        # Partials are kept out of the checkpoint's hyperparameters: torch.load(weights_only=True), which
        # Lightning uses when resuming, refuses to unpickle them.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "pretrained"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if pretrained:
            load_model_weights(net, pretrained)
        if explain_layer:
            names = dict(net.named_modules())
            if explain_layer not in names:
                near = difflib.get_close_matches(explain_layer, [n for n in names if n], n=5, cutoff=0.4)
                raise ValueError(f"model.explain_layer={explain_layer!r} is not a module of the network; "
                                 f"close names: {near}")
            net.explain_layer = str(explain_layer)
        self.net = net
        num_classes = int(getattr(net, "num_classes", 0)) or None
        if num_classes is None:
            raise ValueError("model.net must expose num_classes (e.g. motion_relevance.models.C3D)")
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.skipped = {stage: SumMetric() for stage in ("train", "val", "test")}
        for stage, metric in self.skipped.items():
            self.add_module(f"skipped_{stage}", metric)
        self.failures = {stage: FailureTracker(max_failure_fraction) for stage in ("train", "val", "test")}

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.net(clips)

    # ------------------------------------------------------------------ steps
    def _shared_step(
        self, batch: Mapping[str, Any], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Loss and logits ``(B, num_classes)`` of a batch, metrics logged; None when no clip decoded."""
        skipped = list(batch.get("skipped", []) or [])
        clip = batch.get("clip")
        n_ok = 0 if clip is None else int((clip if isinstance(clip, torch.Tensor) else clip[0]).shape[0])
        self.failures[stage].update(n_ok, skipped)
        self.skipped[stage].update(torch.tensor(float(len(skipped)), device=self.device))
        self.log(f"{stage}/skipped_videos", self.skipped[stage], on_step=False, on_epoch=True, reduce_fx="sum")
        if n_ok == 0:
            return None
        clips, labels = batch["clip"], batch["label"]
        logits = self(clips)
        loss = self.criterion(logits, labels)
        preds = logits.argmax(dim=1)
        loss_metric = getattr(self, f"{stage}_loss")
        acc_metric = getattr(self, f"{stage}_acc")
        n = labels.shape[0]
        loss_metric(loss.detach(), weight=n)
        acc_metric(preds, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=n)
        self.log(f"{stage}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if on_step:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, batch_size=n)
        return loss, logits

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        result = self._shared_step(batch, "train")
        return None if result is None else result[0]

    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> dict[str, torch.Tensor] | None:
        """Evaluation steps return the batch's logits ``(B, num_classes)`` so that callbacks (the explanation
        callback's predicted-class targets) need no second forward pass."""
        result = self._shared_step(batch, stage)
        return None if result is None else {"logits": result[1].detach()}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        return self._eval_step(batch, "test")

    def on_train_start(self) -> None:
        # Sanity-check validation must not leak into the best-accuracy tracker.
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def on_train_epoch_start(self) -> None:
        self.failures["train"].reset()

    def on_validation_epoch_start(self) -> None:
        self.failures["val"].reset()

    def on_test_epoch_start(self) -> None:
        self.failures["test"].reset()

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("model.optimizer is not set; configure one (e.g. torch.optim.SGD with _partial_: true)")
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.hparams.scheduler_monitor,
                "interval": "epoch",
                "frequency": 1,
            },
        }

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            # A net that describes itself (models.hf: the transformers config as JSON) replaces the build recipe.
            "model": self.net.config_dict() if callable(getattr(self.net, "config_dict", None))
            else to_plain(self.hparams.net_config or {}),
            "preprocessing": to_plain(self.hparams.preprocessing or {}),
            "class_names": list(to_plain(self.hparams.class_names or [])),
            "num_classes": self.num_classes,
            "explain_layer": getattr(self.net, "explain_layer", None),
        }
