"""A quick probe of a transformer's training recipe on the study's clips: how many epochs until it leaves chance?

The study's transformers train through ``mr-train`` (decoding every clip every epoch, masked pre-training first).
Asking "does this recipe ever leave chance?" that way costs 35-60 s an epoch on 2 cores; this probe decodes the
training and validation clips once (centre crop, colour channels shuffled per clip per step as the recipe does, no
random crop or pre-training), then trains with a plain loop: AdamW and a one-cycle schedule stepped per batch with the
model config's learning rate, weight decay and warm-up share. It writes one row per epoch to ``--out``
(epoch, train_loss, train_acc, val_acc, seconds); results/recipe_trials.csv records what the probes found.

    .venv/bin/python experiments/architectures/timesformer_probe.py --epochs 120 --out probe.csv \
        +recipe=hf_timesformer_tiny data.generator.context_bias=0 seed=1 [model.net.config.hidden_size=96 ...]

``--time-embeddings-std S`` starts TimeSformer's time embeddings from a truncated normal of std ``S`` instead of
transformers' zeros (a clip and its time reversal then get different logits from the first step).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor


def decoded(dataset: torch.utils.data.Dataset) -> tuple[Tensor, Tensor]:
    """Every clip of ``dataset`` as one tensor ``(N, C, T, H, W)`` and its labels ``(N,)``."""
    items = [dataset[i] for i in range(len(dataset))]
    items = [it for it in items if it is not None]
    return torch.stack([it["clip"] for it in items]), torch.stack([it["label"] for it in items])


def accuracy(net: torch.nn.Module, clips: Tensor, labels: Tensor, batch: int = 32) -> float:
    with torch.no_grad():
        right = sum(int((net(clips[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                    for i in range(0, len(clips), batch))
    return right / len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True, help="CSV written one row per epoch")
    parser.add_argument("--time-embeddings-std", type=float, default=None)
    parser.add_argument("--channel-shuffle", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="mr-train overrides (the recipe, context bias, seed, model)")
    args = parser.parse_args()
    with initialize_config_module("motion_relevance.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data.num_workers=0", *args.overrides])
    torch.set_num_threads(1)  # one core, as the study's jobs
    torch.manual_seed(int(cfg.seed))
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    data.datasets["train"].transform = data.eval_transform
    train_x, train_y = decoded(data.datasets["train"])
    val_x, val_y = decoded(data.datasets["val"])
    net_cfg = OmegaConf.to_container(cfg.model.net, resolve=True)
    net_cfg["num_classes"] = data.num_classes
    net = instantiate(net_cfg)
    if args.time_embeddings_std is not None:
        with torch.no_grad():
            torch.nn.init.trunc_normal_(net.hf.timesformer.embeddings.time_embeddings, std=args.time_embeddings_std)
    batch = int(cfg.data.batch_size)
    steps = args.epochs * math.ceil(len(train_x) / batch)
    lr = float(cfg.model.optimizer.lr)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=float(cfg.model.optimizer.weight_decay))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=float(cfg.model.scheduler.pct_start),
                                                   anneal_strategy="cos", cycle_momentum=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "train_acc", "val_acc", "seconds"])
        for epoch in range(1, args.epochs + 1):
            start, loss_sum, right = time.time(), 0.0, 0
            net.train()
            for idx in torch.randperm(len(train_x)).split(batch):
                x, y = train_x[idx].clone(), train_y[idx]
                if args.channel_shuffle:
                    for j in range(len(x)):
                        x[j] = x[j][torch.randperm(3)]
                logits = net(x)
                loss = torch.nn.functional.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(x)
                right += int((logits.argmax(1) == y).sum())
            net.eval()
            row = [epoch, loss_sum / len(train_x), right / len(train_x), accuracy(net, val_x, val_y),
                   time.time() - start]
            writer.writerow([f"{v:.4g}" if isinstance(v, float) else v for v in row])
            f.flush()
            print(*row, flush=True)


if __name__ == "__main__":
    main()
