"""The explanation pipeline of a run: explain a batch, measure it, keep a few clips for figures.

:class:`ExplanationPipeline` is plain code (no Lightning or Hydra): the Lightning callback
(:class:`~motion_relevance.callbacks.ExplanationCallback`) feeds it evaluation batches; scripts and other entry
points can call it directly. For each batch it

1. picks the explained class (the prediction, from the evaluation step's logits when given, or the label);
2. runs every explainer through :class:`~motion_relevance.explain.cache.CachedExplainer` (cache + timing);
3. computes the model-input frames and, with a flow estimator, which voxels move;
4. applies selective relevance at each sigma;
5. updates one :class:`~motion_relevance.metrics.suite.ExplanationMetrics` suite and records each map's per-frame
   relevance shares (:class:`~motion_relevance.pipeline.temporal.FrameRecorder`);

and hands back an :class:`ExplainedBatch`. ``results(stage)`` gives every number under its logged key.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.checks import check_choice
from motion_relevance.data.transforms import ClipTransform
from motion_relevance.digests import state_digest
from motion_relevance.explain.cache import AttributionCache, CachedExplainer
from motion_relevance.explain.explainers import GradCAM, GuidedGradCAM
from motion_relevance.explain.selective import DEFAULT_SIGMA, check_padding, check_sigma, selective_relevance
from motion_relevance.explain.temporal_flow import FlowRecorder, measures_temporal_share
from motion_relevance.explain.timing import OverheadTimer
from motion_relevance.explain.tracing import analyse_model
from motion_relevance.metrics.suite import ExplanationMetrics
from motion_relevance.pipeline.faithfulness import FaithfulnessStage, RandomizationStage, build_stage
from motion_relevance.pipeline.temporal import FrameRecorder

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "ExplainedBatch", "ExplanationPipeline", "check_explainer_input", "reference_input"]

TARGETS = ("predicted", "label")
MODES = ("positive", "nonzero")


def _check_reference_relevance(name: str, explainer: Any, relevance: Sequence[Tensor], ref: int,
                               pathways: Sequence[str], key: str = "explainers.<name>") -> None:
    """Refuse a map that lies on another pathway only: the metrics measure the full-rate input ``ref``, where it is
    all zero (e.g. Grad-CAM of a slow-pathway layer), so every number would be silently undefined or zero."""
    if relevance[ref].any() or not any(r.any() for i, r in enumerate(relevance) if i != ref):
        return
    label = pathways[ref] if ref < len(pathways) else f"input {ref}"
    layer = getattr(getattr(explainer, "explainer", explainer), "layer", None)
    raise ValueError(f"explainer {name!r}{f' (layer {layer!r})' if layer else ''} puts all its relevance on another "
                     f"input than the {label!r} one the metrics measure; explain a layer of the {label!r} pathway or "
                     f"a fused one (SlowFast: {key}.layer=blocks.4.multipathway_blocks.1)")


def reference_input(clips: Tensor | Sequence[Tensor]) -> int:
    """Index of the model input that is at the clip's full frame rate (the one flow and masks describe): the only
    input of a one-input model, the input with the most frames (the last of equals) of a multi-pathway model."""
    if isinstance(clips, Tensor):
        return 0
    frames = [int(x.shape[2]) for x in clips]
    return max(range(len(frames)), key=lambda i: (frames[i], i))


@dataclass
class ExplainedBatch:
    """One explained batch. Tensors on the model's device unless noted; maps are those of the reference input.

    Attributes:
        stage: ``"validate"`` or ``"test"``.
        clips: normalised model input ``(B, 3, T, H, W)`` (the reference input of a multi-pathway model).
        labels, targets: ``(B,)`` true and explained classes.
        relevance: method -> ``(B, C, T, H, W)``.
        selective: selective-map name (``dtd_selective`` …) -> ``(B, C, T, H, W)``.
        moves, valid: ``(B, T, H, W)`` / ``(B, T)`` bool on the CPU: optical-flow motion and frames with flow.
        mask: ``(B, T, H, W)`` bool ground-truth motion (synthetic data).
        frames: ``(B, T, H, W, 3)`` uint8 RGB model-input frames on the CPU.
        videos: the clips' video paths.
    """

    stage: str
    clips: Tensor
    labels: Tensor
    targets: Tensor
    relevance: dict[str, Tensor]
    selective: dict[str, Tensor] = field(default_factory=dict)
    moves: Tensor | None = None
    valid: Tensor | None = None
    mask: Tensor | None = None
    frames: Tensor | None = None
    videos: list[str] = field(default_factory=list)

    @functools.cached_property
    def relevance_sum(self) -> dict[str, Tensor]:
        """method -> channel sum ``(B, 1, T, H, W)``; every metric starts from it (``P(X) = X.sum(C) > 0``)."""
        return {name: rel.sum(dim=1, keepdim=True) for name, rel in self.relevance.items()}

    def cpu(self) -> ExplainedBatch:
        """A copy with every tensor on the CPU (kept clips for figures)."""
        return replace(
            self, clips=self.clips.cpu(), labels=self.labels.cpu(), targets=self.targets.cpu(),
            relevance={k: v.cpu() for k, v in self.relevance.items()},
            selective={k: v.cpu() for k, v in self.selective.items()},
            mask=None if self.mask is None else self.mask.cpu(), videos=list(self.videos),
        )

    @property
    def size(self) -> int:
        return int(self.clips.shape[0])


class ExplanationPipeline:
    """Explain and measure batches of clips (see the module docstring).

    Args:
        explainers: name -> explainer (``explainer(model, clips, target) -> (B, C, T, H, W)``; ``None``: switched
            off); names are the metric keys.
        sigma: selective-relevance threshold(s) in standard deviations of the temporal gradient; ``None`` or an
            empty list: no selective maps.
        padding: ``"replicate"`` or ``"zeros"`` (the authors' code).
        flow: a :class:`~motion_relevance.metrics.flow.FlowEstimator`, or None (no flow precision).
        cache: an :class:`~motion_relevance.explain.cache.AttributionCache`, or None.
        target: ``"predicted"`` (the paper) or ``"label"``.
        mode: positive-relevance rule (``"positive"``: ``X.sum(C) > 0``, or ``"nonzero"``).
        keep_clips: clips kept (on the CPU) for figures.
        transform: the data's :class:`~motion_relevance.data.transforms.ClipTransform` (model-input frames for
            flow and figures); None skips flow and figures.
        faithfulness: keyword arguments of :class:`~motion_relevance.pipeline.faithfulness.FaithfulnessStage`
            (``enabled: false`` or None: off).
        randomization: keyword arguments of :class:`~motion_relevance.pipeline.faithfulness.RandomizationStage`
            (``enabled: false`` or None: off).
        record_clips: keep every per-clip value (:meth:`clip_rows`: one row per clip, metric and method, with
            the clip's video, label and explained class) for per-clip analyses such as bootstrap intervals.

    A multi-pathway model names its inputs in ``pathway_names`` and builds them from a full-rate clip with
    ``pack_inputs(clip)``; the faithfulness tests perturb the full-rate clip and feed the model its pathways.
    """

    #: How error messages name an explainer's config node (``{name}``: its metric-key name); mr-live, whose one
    #: explainer is the node ``explainer``, sets ``"explainer"``.
    config_key = "explainers.{name}"

    def __init__(
        self,
        explainers: Mapping[str, Any],
        *,
        sigma: float | Sequence[float] | None = 4.0,
        padding: str = "replicate",
        flow: Any | None = None,
        cache: AttributionCache | None = None,
        target: str = "predicted",
        mode: str = "positive",
        keep_clips: int = 4,
        transform: ClipTransform | None = None,
        faithfulness: Mapping[str, Any] | None = None,
        randomization: Mapping[str, Any] | None = None,
        record_clips: bool = False,
    ) -> None:
        explainers = {name: e for name, e in explainers.items() if e is not None}  # null: switched off
        if not explainers:
            raise ValueError("explainers is empty; configure at least one explainer")
        bad = [name for name, e in explainers.items() if not callable(e)]
        if bad:
            raise TypeError(f"explainers.{bad[0]} is {explainers[bad[0]]!r}, not an explainer; give each "
                            "explainers.<name> an explainer config (e.g. +explainer@explainers.<name>=dtd)")
        self.target = check_choice("target", target, TARGETS)
        self.mode = check_choice("mode", mode, MODES)
        self.padding = check_padding(padding)
        self.sigmas = [] if sigma is None or (isinstance(sigma, Sequence) and not sigma) else check_sigma(sigma)
        if isinstance(keep_clips, bool) or not isinstance(keep_clips, int) or keep_clips < 0:
            raise ValueError(f"keep_clips={keep_clips!r}: expected an integer >= 0")
        if cache is not None and not isinstance(cache, AttributionCache):
            raise TypeError(f"cache must be an AttributionCache or null, got {type(cache).__name__}")
        self.explainers = {name: CachedExplainer(e, cache) for name, e in explainers.items()}
        self.cache = cache
        self.flow = flow
        self.keep_clips = keep_clips
        self.transform = transform
        self.kept: list[ExplainedBatch] = []
        self._digest: str | None = None
        self.pathways: tuple[str, ...] = ()
        self.record_clips = bool(record_clips)
        self.clips_info: list[dict[str, Any]] = []
        #: explainers whose cross-frame attention share is measured (decided by :meth:`start` from the model)
        self.temporal_share: list[str] = []
        self.metrics = self._suite()
        #: per-frame relevance shares of every explained clip (``temporal.csv``, the per-frame curves)
        self.per_frame = FrameRecorder()
        self.faithfulness = build_stage(FaithfulnessStage, faithfulness, "faithfulness", methods=self.names,
                                   sigmas=self.sigmas)
        if self.faithfulness is not None and self.faithfulness.matched_budget and not self.sigmas:
            raise ValueError("faithfulness.matched_budget needs selective maps: set selective.sigma, or "
                             "faithfulness.matched_budget=false")
        self.randomization = build_stage(RandomizationStage, randomization, "randomization",
                                    explainers={n: e.explainer for n, e in self.explainers.items()},
                                    sigma=self.sigmas[0] if self.sigmas else DEFAULT_SIGMA, padding=self.padding)

    def _suite(self) -> ExplanationMetrics:
        counters = ["explained_clips"]
        if self.cache is not None:
            counters += ["cache_hits", "cache_misses", "cache_corrupt"]
        if self.flow is not None:
            counters.append("flow_skipped_clips")
        return ExplanationMetrics(list(self.explainers), self.sigmas, mode=self.mode,
                                  flow=self.flow is not None and self.transform is not None, counters=counters,
                                  pathways=self.pathways, record=self.record_clips,
                                  temporal_share=self.temporal_share)

    @property
    def names(self) -> list[str]:
        return list(self.explainers)

    def selective_names(self, method: str) -> list[str]:
        """The selective-map names of ``method`` in this run, one per sigma."""
        return [self.metrics.selective_name(method, s) for s in self.sigmas]

    # ------------------------------------------------------------------ epochs
    def start(self, model: nn.Module, device: torch.device | str | None = None) -> None:
        """Begin an explained epoch of ``model``: zero the metrics and counters, hash the weights for the cache.

        A multi-pathway model names its inputs in ``model.pathway_names`` (SlowFast: ``("slow", "fast")``); each
        pathway's share of the relevance is then measured too. AttnLRP explainers of a model with a registered
        token -> frame map (``explain.temporal_flow.register_token_frames``; VideoMAE, transformers' VideoMAE, ViViT
        and V-JEPA 2) or residual-branch map (TimeSformer) also measure the cross-frame
        share of the relevance through the attention products (``temporal_share/<method>``); for other
        explainers and models the key is absent.
        """
        pathways = tuple(str(p) for p in getattr(model, "pathway_names", ()) or ())
        share = [n for n, e in self.explainers.items() if measures_temporal_share(model, e.explainer)]
        if pathways != self.pathways or share != self.temporal_share:
            self.pathways, self.temporal_share = pathways, share
            self.metrics = self._suite()
        if device is not None:
            self.metrics.to(device)
        self.metrics.reset()
        self.per_frame.start(device)
        for stage in (self.faithfulness, self.randomization):
            if stage is not None:
                stage.start(device)
        for extra in (self.faithfulness, self.randomization):
            if extra is not None and self.metrics.records is not None:
                extra.record_into(self.metrics.records)
        self.clips_info = []
        if self.metrics.records is not None:
            self.metrics.records.clear()
        self.kept = []
        if self.cache is not None:
            self.cache.reset_counters()
        self._digest = state_digest(model) if self.cache is not None and self.cache.enabled else None

    def results(self, stage: str) -> dict[str, float]:
        """Every number of the epoch under its logged key (reduced over processes)."""
        if self.cache is not None:
            info = self.cache.info()
            for counter in ("hits", "misses", "corrupt"):
                self.metrics.count(f"cache_{counter}", info[counter])
        values = self.metrics.compute(stage)
        values.update(self.per_frame.results(stage))
        for extra in (self.faithfulness, self.randomization):
            if extra is not None:
                values.update(extra.results(stage))
        if self.cache is not None:
            prefix = "val" if stage == "validate" else stage
            values[f"{prefix}/cache_bytes"] = float(self.cache.info()["bytes"])
            values[f"{prefix}/cache_enabled"] = float(self.cache.enabled)
        return values

    def artifacts(self) -> dict[str, Any]:
        """Non-scalar results of the epoch for figures and ``metrics.json``: mean faithfulness curves per step,
        randomisation stage names."""
        out: dict[str, Any] = dict(self.per_frame.artifacts())
        for extra in (self.faithfulness, self.randomization):
            if extra is not None:
                out.update(extra.artifacts())
        return out

    def temporal_rows(self, stage: str) -> list[dict[str, Any]]:
        """The per-frame relevance shares of the epoch's clips (rows of ``temporal.csv``: stage, clip, video,
        method, frame, value; ``clip`` as in :meth:`clip_rows`)."""
        return self.per_frame.rows(stage)

    def clip_rows(self) -> list[dict[str, Any]]:
        """Every per-clip value of the epoch (``record_clips=True``): rows ``{clip, video, label, target, metric,
        method, value}`` (NaN where undefined)."""
        if self.metrics.records is None:
            return []
        info = {c["clip"]: c for c in self.clips_info}
        return [{**info.get(r["clip"], {"clip": r["clip"]}), **r} for r in self.metrics.records.rows]

    # ------------------------------------------------------------------ batches
    def targets(self, net: nn.Module, clips: Tensor | Sequence[Tensor], labels: Tensor,
                logits: Tensor | None = None) -> Tensor:
        """The explained class of each clip: the label, or the prediction (from ``logits`` when given)."""
        if self.target == "label":
            return labels
        n = labels.shape[0]
        if logits is not None and logits.shape[0] >= n:
            return logits[:n].argmax(dim=1).to(labels.device)
        with torch.no_grad():
            return net(clips).argmax(dim=1)

    def explain(self, net: nn.Module, clips: Tensor | Sequence[Tensor], labels: Tensor, *, stage: str = "test",
                logits: Tensor | None = None, mask: Tensor | None = None, videos: Sequence[str] = ()
                ) -> ExplainedBatch:
        """Explain and measure one batch (``net`` in eval mode, gradients enabled by the caller)."""
        self.check_explainers(net, clips)
        targets = self.targets(net, clips, labels, logits)
        ref = reference_input(clips)
        records = self.metrics.records
        if records is not None:
            records.offset = len(self.clips_info)
            names = list(videos)
            self.clips_info += [{"clip": records.offset + i, "video": names[i] if i < len(names) else "",
                                 "label": int(labels[i]), "target": int(targets[i])} for i in range(labels.shape[0])]
        relevance: dict[str, Tensor] = {}
        for name, explainer in self.explainers.items():
            if name in self.temporal_share and isinstance(clips, Tensor):
                out = self._explain_measuring_flow(name, explainer, net, clips, targets)
            else:
                out = explainer(net, clips, targets, model_digest=self._digest)
            rel = out.relevance
            if not isinstance(rel, Tensor):
                _check_reference_relevance(name, explainer, rel, ref, self.pathways,
                                           self.config_key.format(name=name))
            relevance[name] = rel if isinstance(rel, Tensor) else rel[ref]
            self.metrics.update_overhead(name, out.timings)
            if not isinstance(rel, Tensor) and len(self.pathways) == len(rel) > 1:
                self._measure_pathways(name, rel)
        ref_clips = clips if isinstance(clips, Tensor) else clips[ref]
        batch = ExplainedBatch(stage=stage, clips=ref_clips.detach(), labels=labels, targets=targets,
                               relevance=relevance, videos=list(videos)[: labels.shape[0]])
        if mask is not None:
            batch.mask = mask.to(ref_clips.device).bool()
        if self.transform is not None:
            batch.frames = self.transform.denormalize(batch.clips)
            if self.flow is not None:
                batch.moves, batch.valid = self.flow(batch.frames)
                self.metrics.count("flow_skipped_clips", int((~batch.valid.any(dim=1)).sum()))
        self._measure(batch)
        self.per_frame.update(batch.relevance, batch.selective, videos=batch.videos, mask=batch.mask)
        builder = getattr(net, "pack_inputs", None) if not isinstance(clips, Tensor) else None
        if self.faithfulness is not None:
            self.faithfulness.update(net, batch.clips, targets, batch.relevance, batch.selective, builder)
        if self.randomization is not None:
            self.randomization.update(net, batch.clips, targets, builder)
        self.metrics.count("explained_clips", batch.size)
        if sum(b.size for b in self.kept) < self.keep_clips:
            self.kept.append(batch.cpu())
        return batch

    def _explain_measuring_flow(self, name: str, explainer: CachedExplainer, net: nn.Module, clips: Tensor,
                                targets: Tensor) -> Any:
        """Run an AttnLRP explainer with the flow recorder installed (no extra pass): the cross-frame attention
        share of each clip it explains; clips served from the cache are not recomputed and count as undefined."""
        recorder = FlowRecorder(net, clips, explainer.explainer)
        with recorder:
            out = explainer(net, clips, targets, model_digest=self._digest)
        share = torch.full((clips.shape[0],), float("nan"), device=clips.device)
        if out.explained:
            share[out.explained] = torch.cat(recorder.shares()).to(share.device)
        self.metrics.update_temporal_share(name, share)
        return out

    def _measure_pathways(self, name: str, relevance: tuple[Tensor, ...]) -> None:
        """Each pathway's share of the baseline relevance, and of its selective map (each pathway's temporal
        gradient at its own frame rate)."""
        self.metrics.update_pathways(name, relevance)
        if self.sigmas:
            maps = [selective_relevance(r, list(self.sigmas), padding=self.padding) for r in relevance]
            for i, sigma in enumerate(self.sigmas):
                self.metrics.update_pathways(self.metrics.selective_name(name, sigma), [m[i] for m in maps])

    def _measure(self, b: ExplainedBatch) -> None:
        sums = b.relevance_sum
        flow = {"moves": b.moves, "valid": b.valid, "mask": b.mask}
        for name, rel in b.relevance.items():
            self.metrics.update_baseline(name, sums[name], **flow)
            if not self.sigmas:
                continue
            with OverheadTimer(rel.device) as timer:
                maps = selective_relevance(rel, list(self.sigmas), padding=self.padding)  # G computed once
            self.metrics.update_overhead("selective", [timer.ms / (rel.shape[0] * len(self.sigmas))])
            for sigma, sel in zip(self.sigmas, maps):
                b.selective[self.metrics.selective_name(name, sigma)] = sel
                self.metrics.update_selective(name, sigma, sums[name], sel.sum(dim=1, keepdim=True), **flow)
        self.metrics.update_agreement(sums)

    # ------------------------------------------------------------------ checks before work; live windows (mr-live)
    def check_explainers(self, net: nn.Module, clips: Tensor | Sequence[Tensor]) -> None:
        """The checks that need the model and the clips' shapes, before any explanation: each explainer's map must
        reach the reference input (:func:`check_explainer_input`). Run once per model and input shapes:
        :meth:`explain` runs them before its first batch (mr-explain), mr-live at start-up on a probe window."""
        inputs = [clips] if isinstance(clips, Tensor) else list(clips)
        done = (id(net), tuple(tuple(x.shape[1:]) for x in inputs))
        if getattr(self, "_checked", None) == done:
            return
        for name, explainer in self.explainers.items():
            check_explainer_input(self.config_key.format(name=name), explainer, net, clips, self.pathways)
        self._checked = done

    def explain_window(self, net: nn.Module, clips: Tensor | Sequence[Tensor], labels: Tensor | None = None, *,
                       logits: Tensor | None = None, stage: str = "live"
                       ) -> tuple[ExplainedBatch, Tensor, list[dict[str, float]]]:
        """Explain the window(s) of a live stream as :meth:`explain` explains a batch (same target rule, checks,
        explainers, selective maps and metric suite), for mr-live.

        Args:
            net, clips: as :meth:`explain` (a multi-pathway model's packed inputs).
            labels: ``(B,)`` the class to explain of each window with ``target="label"``; None with ``"predicted"``.
            logits: ``(B, K)`` of ``net(clips)`` when the caller has them (else one no-grad forward here).

        Returns:
            the batch, the logits and, per window, its values of the suite under ``"<metric>/<method>"``
            (``"selectivity_mass/dtd"`` …; NaN where undefined). Needs ``record_clips=True``; the per-window
            records are dropped after each call, so a stream of any length holds constant memory while the suite's
            sums give the means over windows (:meth:`results`).
        """
        if self.metrics.records is None:
            raise ValueError("explain_window reads each window's values from the per-clip records: build the "
                             "pipeline with record_clips=True")
        if logits is None:
            with torch.no_grad():
                logits = net(clips)
        if labels is None:
            if self.target == "label":
                raise ValueError("target='label' explains a given class: pass labels (the class of each window)")
            labels = torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device)
        batch = self.explain(net, clips, labels, stage=stage, logits=logits)
        values: list[dict[str, float]] = [{} for _ in range(batch.size)]
        for row in self.metrics.records.rows:
            values[int(row["clip"])][f"{row['metric']}/{row['method']}"] = float(row["value"])
        self.metrics.records.clear()
        self.clips_info = []
        return batch, logits, values


def check_explainer_input(key: str, explainer: Any, net: nn.Module, clips: Tensor | Sequence[Tensor],
                          pathways: Sequence[str] = ()) -> None:
    """Refuse, before any explanation, a layer explainer (Grad-CAM, Guided Grad-CAM) whose map would lie on another
    input than the full-rate one the metrics measure and mr-live shows, where it would be all zero (Grad-CAM of a
    SlowFast slow-pathway layer). The input is the one the explainer itself maps the layer to (its layer's pathway,
    or ``input_index``); ``key`` names the explainer's config node (``explainers.gradcam``, mr-live's
    ``explainer``). One-input models and explainers that map onto every input pass."""
    base = explainer.explainer if isinstance(explainer, CachedExplainer) else explainer
    if isinstance(clips, Tensor) or len(clips) < 2 or not isinstance(base, (GradCAM, GuidedGradCAM)):
        return
    inputs = tuple(clips)
    structure = analyse_model(net, list(inputs))
    layer = base.layer_map.layer_name(net)
    if structure.output_shapes.get(layer) is None:
        return  # not a module of this model, or no tensor output: the explainer's own checks name it
    mapped, ref = base.layer_map.mapped_input(structure, layer, inputs), reference_input(inputs)
    if mapped == ref:
        return
    label = [pathways[i] if i < len(pathways) else f"input {i}" for i in (mapped, ref)]
    if base.input_index is not None:
        raise ValueError(f"{key}.input_index={base.input_index} maps the map of layer {layer!r} onto the "
                         f"{label[0]!r} input, but the metrics measure (and mr-live shows) the {label[1]!r} one, "
                         f"where it would be all zero; set {key}.input_index={ref} or null")
    own = set(structure.ancestry.get(layer) or ()) == {mapped}
    what = f"a layer of the {label[0]!r} pathway" if own else f"at the {label[0]!r} pathway's frame rate"
    suggested = dict(getattr(net, "explain_layers", None) or {}).get(label[1], "blocks.4.multipathway_blocks.1")
    raise ValueError(f"{key}.layer={layer!r} is {what}: the explainer maps it onto the {label[0]!r} input only, but "
                     f"the metrics measure (and mr-live shows) the {label[1]!r} one, where it would be all zero; "
                     f"explain a layer of the {label[1]!r} pathway, e.g. {key}.layer={suggested}")
