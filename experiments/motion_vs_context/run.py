"""The motion_vs_context study: does selective relevance find the motion a model really uses?

One command reproduces everything (README.md in this folder)::

    .venv/bin/python experiments/motion_vs_context/run.py [hydra-style overrides, e.g. study.num_clips=16]

Steps: (1) train one small C3D per data variant of ``study.models`` with ``mr-train`` (subprocesses,
``experiment=motion_vs_context_train``); (2) test accuracy of every model, and of the context models on a
background-swapped copy of the test list; the probe sets of ``study.probes`` (distractors, camera pan) are
test lists explained with the main model's checkpoint; (3) explain ``study.num_clips`` test clips per model with
every method ONCE, then evaluate every sigma x padding of selective relevance on those explanations against the
ground-truth mask and the optical flow (per-clip rows); (4) the frame-inflation baseline on the main model;
(5) tables (CSV + markdown), figures and W&B (offline unless ``WANDB_MODE`` says otherwise) via ``analyse.py``.

Configuration: ``explain.yaml`` + ``experiment/motion_vs_context_explain.yaml`` of ``src/motion_relevance/conf`` (the
``study:`` block).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Subset

from motion_relevance.conf import CONFIG_DIR
from motion_relevance.data.failures import collate_skipping
from motion_relevance.explain import FrameInflation, selective_relevance
from motion_relevance.explain.timing import OverheadTimer
from motion_relevance.metrics import functional as F
from motion_relevance.models.checkpoint import check_classes, load_classifier

log = logging.getLogger("motion_vs_context")

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ config
def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The study config: explain.yaml + experiment=motion_vs_context_explain + ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("explain", overrides=["experiment=motion_vs_context_explain", *overrides])


def data_root(cfg: DictConfig, name: str) -> Path:
    """Data root of model variant ``name`` (each generator variant has its own tree)."""
    return Path(str(cfg.paths.data_dir)).resolve() / f"motion_shapes_{name}"


def generator_overrides(cfg: DictConfig, name: str) -> dict[str, Any]:
    """``data.generator`` overrides of model ``name``: ``study.generator`` (shared) then ``study.models[name]``."""
    shared = OmegaConf.to_container(cfg.study.generator, resolve=True) or {}
    own = OmegaConf.to_container(cfg.study.models[name], resolve=True) or {}
    return {**shared, **own}


def build_datamodule(cfg: DictConfig, root: Path, generator: dict[str, Any]) -> Any:
    """The motion_shapes DataModule of ``cfg.data`` with its root and generator overridden, test stage set up."""
    data_cfg = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    with open_dict(data_cfg):
        data_cfg.root = str(root)
        for key, value in generator.items():
            data_cfg.generator[key] = value
    dm = hydra.utils.instantiate(data_cfg, _recursive_=False)
    dm.setup("test")
    return dm


# ------------------------------------------------------------------------------------------------ training
def train_model(cfg: DictConfig, name: str, seed: int, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Train model ``name`` with mr-train (or reuse its checkpoint); returns (last.ckpt, info)."""
    run_dir = out_dir / "train" / f"{name}_s{seed}"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    info_file = run_dir / "study_train.json"
    if cfg.study.reuse_checkpoints and ckpt.is_file() and info_file.is_file():
        log.info("reusing %s", ckpt)
        return ckpt, {**json.loads(info_file.read_text()), "reused": True}
    gen = generator_overrides(cfg, name)
    cmd = [
        sys.executable, "-m", "motion_relevance.train", "experiment=motion_vs_context_train",
        f"data.root={data_root(cfg, name)}", f"seed={seed}", f"trainer.max_epochs={cfg.study.epochs}",
        f"paths.data_dir={Path(str(cfg.paths.data_dir)).resolve()}",
        f"paths.cache_dir={Path(str(cfg.paths.cache_dir)).resolve()}",
        f"hydra.run.dir={run_dir}", f"group={cfg.group}", f"tags=[motion_vs_context,train,{name}]",
        *[f"data.generator.{k}={json.dumps(v)}" for k, v in gen.items()],
        *[str(o) for o in cfg.study.train_overrides],
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("training %s (seed %d): %s", name, seed, " ".join(cmd[2:]))
    t0 = time.perf_counter()
    with open(out_dir / "train" / f"{name}_s{seed}.log", "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=os.getcwd(), check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not ckpt.is_file():
        tail = (out_dir / "train" / f"{name}_s{seed}.log").read_text()[-3000:]
        raise RuntimeError(f"mr-train for {name} failed (exit {proc.returncode}):\n{tail}")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    info = {"model": name, "seed": seed, "train_wall_s": wall, "command": " ".join(cmd[1:]),
            "train_test_acc": metrics.get("test/acc"), "val_acc_best": metrics.get("val/acc_best"), "reused": False}
    info_file.write_text(json.dumps(info, indent=2))
    return ckpt, info


# ------------------------------------------------------------------------------------------------ evaluation
def loader(dm: Any, indices: Sequence[int] | None, batch_size: int) -> DataLoader:
    """Test clips (all, or the given indices) in file order, without workers."""
    ds = dm.datasets["test"]
    subset = ds if indices is None else Subset(ds, list(indices))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0,
                      collate_fn=functools.partial(collate_skipping, dataset=ds))


@torch.no_grad()
def accuracy(net: torch.nn.Module, dm: Any, batch_size: int) -> tuple[float, int]:
    """Clip accuracy of ``net`` on every test clip of ``dm``."""
    correct = total = 0
    for batch in loader(dm, None, batch_size):
        if len(batch["label"]) == 0:
            continue
        pred = net(batch["clip"]).argmax(1)
        correct += int((pred == batch["label"]).sum())
        total += len(batch["label"])
    return correct / max(total, 1), total


def spread_indices(ds: Any, k: int | None) -> list[int]:
    """``k`` test clips spread evenly over the clips sorted by (video path, start), i.e. class-balanced.

    Sorting makes the choice independent of the order the dataset lists its samples in (which is not stable
    between runs)."""
    order = sorted(range(len(ds)), key=lambda i: (ds.items[ds.samples[i][0]].path, int(ds.samples[i][1])))
    if k is None or k >= len(order):
        return order
    return [order[j] for j in sorted({int(round(x)) for x in np.linspace(0, len(order) - 1, k)})]


def _clip_metrics(rel: torch.Tensor, mask: torch.Tensor, moves: torch.Tensor, valid: torch.Tensor) -> dict[str, Any]:
    """Per-clip metrics of explanations ``rel`` (B, C, T, H, W) as lists of floats (NaN = undefined)."""
    prec, rec, _, _ = F.gt_precision_recall(rel, mask)
    f1, _ = F.f1(rel, mask)
    share, _ = F.motion_share(rel, mask)
    fprec, _ = F.motion_precision(rel, moves, valid)
    area = F.positive_mask(rel).sum(dim=(1, 2, 3)).double() / mask[0].numel()
    return {"gt_precision": prec, "gt_recall": rec, "f1": f1, "motion_share": share, "flow_precision": fprec,
            "positive_area": area}


def _rows(common: list[dict[str, Any]], extra: dict[str, Any], metrics: dict[str, torch.Tensor]) -> list[dict]:
    out = []
    for b, base in enumerate(common):
        row = {**base, **extra}
        row.update({k: float(v[b]) for k, v in metrics.items()})
        out.append(row)
    return out


def explain_model(
    cfg: DictConfig, name: str, seed: int, net: torch.nn.Module, dm: Any, explainers: dict[str, Any], flow: Any,
    fi: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-clip rows for every method x {baseline, selective sigma x padding, frame inflation}; plus flow rows."""
    study = cfg.study
    sigmas = [float(s) for s in study.sigmas]
    default_sigma, default_padding = float(cfg.selective.sigma), str(cfg.selective.padding)
    if default_sigma not in sigmas:
        sigmas.append(default_sigma)
    ds = dm.datasets["test"]
    indices = spread_indices(ds, study.num_clips)
    fi_left = int(study.fi_clips) if fi else 0
    rows: list[dict[str, Any]] = []
    flow_rows: list[dict[str, Any]] = []
    clip_no = 0
    for batch in loader(dm, indices, int(cfg.data.batch_size)):
        clips, labels, masks = batch["clip"], batch["label"], batch["mask"].bool()
        if len(labels) == 0:
            continue
        bsz = len(labels)
        with torch.no_grad():
            pred = net(clips).argmax(1)
        target = pred if cfg.target == "predicted" else labels
        frames = dm.eval_transform.denormalize(clips)
        moves, valid = flow(frames)
        vmask = masks & valid[:, :, None, None]
        fm = moves & valid[:, :, None, None]
        common = [
            {"model": name, "seed": seed, "clip": clip_no + b, "video": batch["video"][b],
             "start": int(batch["start"][b]), "label": int(labels[b]), "pred": int(pred[b]),
             "correct": bool(pred[b] == labels[b])}
            for b in range(bsz)
        ]
        inter = (fm & vmask).sum(dim=(1, 2, 3)).double()
        flow_rows += _rows(common, {}, {
            "flow_mask_precision": inter / fm.sum(dim=(1, 2, 3)).double(),
            "flow_mask_recall": inter / vmask.sum(dim=(1, 2, 3)).double(),
            "gt_mask_area": masks.sum(dim=(1, 2, 3)).double() / masks[0].numel(),
            "flow_mask_area": fm.sum(dim=(1, 2, 3)).double() / fm[0].numel(),
        })
        n_fi = min(fi_left, bsz)
        fi_left -= n_fi
        for method in study.methods:
            explainer = explainers[method]
            with OverheadTimer() as timer:
                rel = explainer(net, clips, target).detach()
            base_ms = timer.ms / bsz
            rows += _rows(common, {"method": method, "variant": "baseline", "padding": "", "sigma": float("nan"),
                                   "time_ms": base_ms}, _clip_metrics(rel, masks, moves, valid))
            for padding in study.paddings:
                with OverheadTimer() as timer:
                    selective_relevance(rel, default_sigma, padding=padding)
                sel_ms = timer.ms / bsz
                sel_all = selective_relevance(rel, sigmas, padding=padding)
                for si, sigma in enumerate(sigmas):
                    sel = sel_all[si]
                    m = _clip_metrics(sel, masks, moves, valid)
                    m["spatial_bias"], _ = F.spatial_bias(rel, sel)
                    m["area_ratio"], m["mass_ratio"], _ = F.selectivity(rel, sel)
                    rows += _rows(common, {"method": method, "variant": "selective", "padding": padding,
                                           "sigma": sigma, "time_ms": base_ms + sel_ms, "selective_ms": sel_ms},
                                  m)
                del sel_all
            if n_fi:
                fi_explainer = FrameInflation(explainer, chunk_size=int(study.fi_chunk_size),
                                              reduce=str(study.fi_reduce))
                with OverheadTimer() as timer:
                    fi_rel = fi_explainer(net, clips[:n_fi], target[:n_fi]).detach()
                rows += _rows(common[:n_fi], {"method": method, "variant": "frame_inflation", "padding": "",
                                              "sigma": float("nan"), "time_ms": timer.ms / n_fi},
                              _clip_metrics(fi_rel, masks[:n_fi], moves[:n_fi], valid[:n_fi]))
        clip_no += bsz
        log.info("%s: explained %d/%d clips", name, clip_no, len(indices))
    for r in rows:
        r["default"] = r["variant"] == "selective" and r["sigma"] == default_sigma and r["padding"] == default_padding
    return rows, flow_rows


def evaluate(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Train (or reuse) every model, then measure; returns the raw per-clip records."""
    study = cfg.study
    explainers = {m: hydra.utils.instantiate(cfg.explainers[m]) for m in study.methods}
    flow = hydra.utils.instantiate(cfg.flow)
    models, clips, flows = [], [], []
    swap_gen = generator_overrides(cfg, str(study.main_model))
    swap_gen.update({"context_bias": 0.0, "swap_background": True})
    swap_dm = None
    jobs: list[tuple[int, str, str, dict[str, Any]]] = []  # (seed, name, trained model, generator)
    for seed in study.seeds:
        jobs += [(int(seed), str(n), str(n), generator_overrides(cfg, str(n))) for n in study.models]
        main_gen = generator_overrides(cfg, str(study.main_model))
        jobs += [(int(seed), str(n), str(study.main_model),
                  {**main_gen, **(OmegaConf.to_container(study.probes[n], resolve=True) or {})})
                 for n in study.probes]
    for seed, name, trained, gen in jobs:
        ckpt, info = train_model(cfg, trained, seed, out_dir)
        info = {**info, "model": name, "trained_on": trained, "generator": json.dumps(gen)}
        if trained != name:
            info["train_wall_s"] = 0.0  # a probe set: the main model's checkpoint, no training of its own
        loaded = load_classifier(ckpt)
        net = loaded.net.eval()
        dm = build_datamodule(cfg, data_root(cfg, name), gen)
        check_classes(loaded, dm.class_names)
        info["test_acc"], info["test_clips"] = accuracy(net, dm, int(cfg.data.batch_size))
        if name in study.context_models:
            if swap_dm is None:
                swap_dm = build_datamodule(cfg, Path(str(study.swap_root)).resolve(), swap_gen)
            info["swap_acc"], info["swap_clips"] = accuracy(net, swap_dm, int(cfg.data.batch_size))
        log.info("%s seed %d: test acc %.3f, swap acc %s", name, seed, info["test_acc"], info.get("swap_acc"))
        fi = name == study.main_model and seed == int(study.seeds[0]) and int(study.fi_clips) > 0
        t0 = time.perf_counter()
        rows, frows = explain_model(cfg, name, seed, net, dm, explainers, flow, fi)
        info["explain_wall_s"] = time.perf_counter() - t0
        models.append(info)
        clips += rows
        flows += frows
    return {"models": models, "clips": clips, "flow": flows}


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the study; returns the output folder."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("WANDB_MODE", "offline")
    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = compose(overrides)
    out_dir = Path(str(cfg.study.out_dir)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    records_file = out_dir / "records.json"
    if cfg.study.analyse_only:  # re-make tables/figures from a finished run's per-clip records
        saved = json.loads(records_file.read_text())
        records, wall = saved["records"], float(saved["wall_s"])
    else:
        t0 = time.perf_counter()
        records = evaluate(cfg, out_dir)
        wall = time.perf_counter() - t0
        records_file.write_text(json.dumps({"wall_s": wall, "records": records}))

    sys.path.insert(0, str(HERE))
    import analyse

    analyse.report(cfg, records, out_dir, wall_s=wall, overrides=overrides)
    print(f"Study folder: {out_dir}", flush=True)
    return out_dir


if __name__ == "__main__":
    main()
