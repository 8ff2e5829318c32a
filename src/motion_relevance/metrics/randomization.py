"""Cascading model-parameter randomisation (Adebayo et al., 2018): does an explanation depend on the model?

Layers are re-initialised from the output towards the input, one more weighted layer per stage, on a deep copy of
the model (the caller's model is never touched). At every stage the same clips are explained for the same targets
and the Spearman rank correlation between ``A = R.sum(C)`` of the original and of the randomised explanation is
taken per clip over its ``T*H*W`` voxels, for the baseline map and for its selective map. An explanation that
survives randomising the model explains nothing about the model: its correlation stays high. See
``docs/method.md``, "Faithfulness and sanity checks".

Decisions:

* A *weighted layer* is a convolution (``nn.Conv1d/2d/3d`` and transposed) or ``nn.Linear`` module with a weight,
  that runs in the forward pass; stages follow the order of the first call of each layer in one traced forward
  pass (so the cascade follows the computation, not the order modules were registered in).
* Each layer is re-initialised with its own ``reset_parameters()``; the ``j``-th randomised layer under
  ``torch.manual_seed(seed + j)`` (the global random state is saved and restored).
* **BatchNorm** is not a stage of its own: a ``BatchNorm1d/2d/3d`` whose input is the output of a weighted layer is
  reset *with that layer* (``reset_parameters()``: running mean 0, variance 1, weight 1, bias 0). Its running
  statistics describe the old layer's outputs and mean nothing for the new weights, and resetting it alone would
  only rescale, not randomise. Other parameters (LayerNorm, embeddings, attention biases held by a block) are never
  randomised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.checks import check_clips, check_unique, resolve_targets

__all__ = ["RandomizationResult", "cascading_randomization", "randomization_stages", "spearman"]

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]
#: ``relevance (B, C, T, H, W) -> selective map`` of the same shape (the caller binds sigma and padding).
Selector = Callable[[Tensor], Tensor]

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
_BATCHNORM = nn.modules.batchnorm._BatchNorm


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N of each row of ``x`` ``(B, N)``, ties given their average rank (as ``scipy.stats.rankdata``)."""
    b, n = x.shape
    values, order = torch.sort(x, dim=1, stable=True)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    group = torch.cumsum(new, dim=1) - 1 + torch.arange(b, device=x.device)[:, None] * n  # ids unique over rows
    pos = torch.arange(n, dtype=torch.float64, device=x.device).expand(b, n).reshape(-1)
    flat = group.reshape(-1)
    first = torch.zeros(b * n, dtype=torch.float64, device=x.device).scatter_reduce(
        0, flat, pos, "amin", include_self=False
    )
    last = torch.zeros(b * n, dtype=torch.float64, device=x.device).scatter_reduce(
        0, flat, pos, "amax", include_self=False
    )
    ranks_sorted = ((first + last) / 2 + 1)[flat].view(b, n)
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row of ``a`` and ``b`` ``(B, ...)`` (flattened after dim 0) → float64 ``(B,)``.

    Ties get average ranks, so the value equals ``scipy.stats.spearmanr`` (Pearson correlation of the ranks). A row
    where either input is constant has no correlation: NaN.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"a and b must be tensors of the same shape (B, ...), got {getattr(a, 'shape', a)} and "
            f"{getattr(b, 'shape', b)}"
        )
    a2, b2 = a.detach().flatten(1).double(), b.detach().to(a.device).flatten(1).double()
    if bool(torch.isnan(a2).any()) or bool(torch.isnan(b2).any()):
        raise ValueError("spearman: the inputs contain NaN")
    ra, rb = _average_ranks(a2), _average_ranks(b2)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    num = (ra * rb).sum(1)
    corr = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))
    return corr.clamp(-1.0, 1.0)


@dataclass
class RandomizationResult:
    """Per-stage, per-clip Spearman correlations of a cascading randomisation.

    Attributes:
        stages: ``S`` stage names: ``"original"`` (the unchanged model explained again, when included), then the
            module path of the weighted layer newly randomised at each stage (cumulative: stage ``i`` has every
            layer of stages ``1..i`` randomised).
        reset: per stage, the module paths reset at that stage (the layer and a BatchNorm that follows it).
        baseline: float64 ``(S, B)``: correlation of ``A = R.sum(C)`` of the original and the stage's explanation.
        selective: float64 ``(S, B)``: the same for the selective maps (NaN where a map is constant, e.g. empty).
        target: int64 ``(B,)``: the class explained at every stage.
    """

    stages: list[str]
    reset: list[list[str]]
    baseline: Tensor
    selective: Tensor
    target: Tensor

    def mean(self) -> dict[str, Tensor]:
        """Mean over clips per stage (NaN clips left out) and the count of undefined clips: ``(S,)`` tensors."""
        out: dict[str, Tensor] = {}
        for name, v in (("baseline", self.baseline), ("selective", self.selective)):
            out[f"{name}_mean"] = v.nanmean(1)
            out[f"{name}_n_undefined"] = torch.isnan(v).sum(1)
        return out


def _trace_layers(model: nn.Module, clips: Tensor, input_builder: Callable[[Tensor], Any] | None) -> list[list[str]]:
    """Weighted layers in order of first call in one forward pass, each with the BatchNorms that read its output."""
    names = {id(m): n for n, m in model.named_modules()}
    order: list[str] = []
    outputs: list[tuple[Tensor, str]] = []  # strong refs: a tensor's id is never reused during the trace
    followers: dict[str, list[str]] = {}
    handles = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        name = names[id(module)]
        if isinstance(module, _BATCHNORM):
            x = inputs[0] if inputs else None
            for out, owner in outputs:
                if x is out and name not in followers[owner]:
                    followers[owner].append(name)
            return
        if name not in followers:
            order.append(name)
            followers[name] = []
        if isinstance(output, Tensor):
            outputs.append((output, name))

    try:
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if (isinstance(m, _WEIGHTED) and isinstance(weight, nn.Parameter)) or isinstance(m, _BATCHNORM):
                handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            x = clips[:1]
            model(input_builder(x) if input_builder is not None else x)
    finally:
        for h in handles:
            h.remove()
    return [[name, *followers[name]] for name in order]


def _select(layers: list[list[str]], selection: Any) -> list[list[str]]:
    """Stages, output first, for ``"all"``, ``k`` / ``"top-k"`` (the ``k`` layers nearest the output) or names."""
    cascade = layers[::-1]
    available = [group[0] for group in cascade]
    if isinstance(selection, str) and selection.startswith("top-") and selection[4:].isdigit():
        selection = int(selection[4:])
    if selection == "all":
        return cascade
    if isinstance(selection, int) and not isinstance(selection, bool):
        if not 1 <= selection <= len(cascade):
            raise ValueError(f"layers must be 'all', 1..{len(cascade)} or 'top-k' (k weighted layers), got {selection}")
        return cascade[:selection]
    if isinstance(selection, Sequence) and not isinstance(selection, str) and selection:
        check_unique("randomization.layers", selection)
        by_name = {group[0]: group for group in cascade}
        unknown = [s for s in selection if s not in by_name]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not weighted layers of the model; available (output first): {available}"
            )
        return [by_name[s] for s in selection]
    raise ValueError(
        f"layers must be 'all', an int k or 'top-k' (the k layers nearest the output), or a list of layer names "
        f"from {available}; got {selection!r}"
    )


def randomization_stages(
    model: nn.Module, clips: Tensor, layers: Any = "all", *, input_builder: Callable[[Tensor], Any] | None = None
) -> list[list[str]]:
    """The modules each stage resets, output first: ``[[layer, *batchnorms_after_it], ...]`` (one traced forward)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_clips("clips", clips, finite=True)
    was = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        return _stages(model, clips, layers, input_builder)
    finally:
        for m, flag in was:
            m.training = flag


def _stages(
    model: nn.Module, clips: Tensor, layers: Any, input_builder: Callable[[Tensor], Any] | None
) -> list[list[str]]:
    traced = _trace_layers(model, clips, input_builder)
    if not traced:
        raise ValueError("model has no Conv or Linear layer with weights in its forward pass: nothing to randomise")
    return _select(traced, layers)


def _deep_copy(model: nn.Module) -> nn.Module:
    memo: dict[int, Any] = {}
    trainer = model.__dict__.get("_trainer")  # a LightningModule's trainer is shared, never copied
    if trainer is not None:
        memo[id(trainer)] = trainer
    return copy.deepcopy(model, memo)


def _reset(model: nn.Module, names: list[str], seed: int) -> None:
    modules = dict(model.named_modules())
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name in names:
            modules[name].reset_parameters()


def cascading_randomization(
    model: nn.Module,
    clips: Tensor,
    explainer: Explainer,
    target: Any = None,
    *,
    selective: Selector,
    layers: Any = "all",
    seed: int = 0,
    include_original: bool = True,
    input_builder: Callable[[Tensor], Any] | None = None,
    progress: bool = False,
) -> RandomizationResult:
    """Spearman correlation between the original and the cascading-randomised explanations, per stage and clip.

    Args:
        model: the classifier; a deep copy is randomised, ``model`` itself is never changed.
        clips: ``(B, C, T, H, W)``.
        explainer: ``explainer(model, clips, target) -> relevance (B, C', T, H, W)`` (any explainer of
            :mod:`motion_relevance.explain`, or any callable with that signature).
        target: classes to explain (int, ``B`` ints); None = the original model's predictions, kept for every stage.
        selective: ``relevance -> selective map`` (same shape), e.g.
            ``functools.partial(selective_relevance, sigma=4.0, padding="replicate")`` from
            :mod:`motion_relevance.explain.selective` (passed in: metrics do not import the explainers).
        layers: ``"all"`` (every weighted layer, output to input), an int ``k`` or ``"top-k"`` (the ``k`` layers
            nearest the output), or a list of layer names (randomised in the order given, cumulatively).
        seed: the ``j``-th randomised layer (``j = 1, 2, ...``) is re-initialised under ``torch.manual_seed(seed + j)``.
        include_original: start with stage ``"original"``: the unchanged copy explained again (1 for a deterministic
            explainer).
        input_builder: ``clips -> model input`` for multi-pathway models (used for the prediction and the trace).
        progress: show a rich progress bar over the stages.

    Returns:
        :class:`RandomizationResult`: ``stages`` names and ``(S, B)`` correlations for the baseline and selective maps.
    """
    if not callable(explainer):
        raise TypeError(f"explainer must be a callable (model, clips, target) -> relevance, got {explainer!r}")
    if not callable(selective):
        raise TypeError(f"selective must be a callable relevance -> selective map, got {selective!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    check_clips("clips", clips, finite=True)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target_t = resolve_targets("target", target, clips.shape[0])
    work = _deep_copy(model).eval()
    stages = _stages(work, clips, layers, input_builder)
    with torch.no_grad():
        logits = work(input_builder(clips) if input_builder is not None else clips)
    if target_t is None:
        target_t = logits.argmax(1).cpu()
    else:
        resolve_targets("target", target_t, clips.shape[0], logits.shape[1])
        target_t = target_t.cpu()
    target_dev = target_t.to(clips.device)

    inputs = input_builder(clips) if input_builder is not None else clips

    def explain() -> tuple[Tensor, Tensor]:
        rel = explainer(work, inputs, target_dev)
        if not isinstance(rel, Tensor):  # multi-pathway models: compare the full-rate pathway's maps
            rel = rel[max(range(len(rel)), key=lambda i: (rel[i].shape[2], i))]
        rel = rel.detach()
        return rel.sum(1), selective(rel).sum(1)

    a0, s0 = explain()
    plan: list[tuple[str, list[str]]] = [("original", [])] if include_original else []
    plan += [(group[0], group) for group in stages]
    iterator: Any = plan
    if progress:
        from rich.progress import track  # deferred: only when a progress bar is shown

        iterator = track(plan, description="randomisation stages")
    base_rows, sel_rows = [], []
    randomised = 0
    for _, group in iterator:
        if group:
            randomised += 1
            _reset(work, group, seed + randomised)
        a, s = explain()
        base_rows.append(spearman(a0, a).cpu())
        sel_rows.append(spearman(s0, s).cpu())
    return RandomizationResult(
        stages=[name for name, _ in plan],
        reset=[group for _, group in plan],
        baseline=torch.stack(base_rows),
        selective=torch.stack(sel_rows),
        target=target_t,
    )
