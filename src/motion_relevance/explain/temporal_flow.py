"""How much relevance flows through time in a video transformer: the cross-frame share of the attention products.

:func:`temporal_share` runs AttnLRP once and measures, at every attention product ``o = A @ V``
(``models.layers.MatMul``), how much of the relevance the engine's uniform rule passes through that product travels
between tokens of different frames (tubelet time indices). The definition is in ``docs/method.md`` ("How much
relevance flows through time").

Which products are attention products, and which frame each query row and key column belongs to, is model
knowledge: a function ``token_frames(model, clips) -> {module name: (query_frames, key_frames)}`` per model type,
registered with :func:`register_token_frames`. VideoMAE (joint space-time attention, tokens ordered
``(T', H', W')``) is registered here, and so are transformers' joint-attention classifiers (``models.hf``: VideoMAE,
ViViT, V-JEPA 2), whose products are found in the model's canonized copy. A token in no frame (a class token) has
frame ``-1``: pairs with it are left out of the share.

Divided space-time attention (TimeSformer) adds each attention's output to the residual stream in its own sum, so
there the share is measured at those sums instead: a function ``branch_adds(model, clips) -> {name of a residual
models.layers.Add: True where its second input is a temporal-attention branch, False where a spatial one}``,
registered with :func:`register_branch_adds`, names them, and the share is the relevance the sums' epsilon rule
gives the temporal branches (absolute values) over that given to all branches. transformers' TimeSformer
(``models.hf``, ``attention_type="divided_space_time"``) is registered; its sums are found in the model's
canonized copy (``explain.canonize_trace.canonized``), the model AttnLRP runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from motion_relevance.checks import check_clips
from motion_relevance.explain.canonize_trace import canonized
from motion_relevance.explain.explainers import AttnLRP
from motion_relevance.explain.rules import EpsilonAdd, Uniform
from motion_relevance.models.hf import PREFIX, HFVideoClassifier
from motion_relevance.models.layers import Add, MatMul
from motion_relevance.models.videomae import VideoMAE

__all__ = ["BRANCH_ADDS", "NO_FRAME", "TOKEN_FRAMES", "FlowRecorder", "hf_token_frames", "measures_temporal_share",
           "pair_flows", "register_branch_adds", "register_token_frames", "temporal_share", "timesformer_branch_adds",
           "videomae_token_frames"]

#: ``token_frames(model, clips) -> {name of an A @ V MatMul module: (query_frames (Nq,), key_frames (Nk,))}``.
TokenFrames = Callable[[nn.Module, Tensor], dict[str, tuple[Tensor, Tensor]]]

#: The registered token -> frame maps, by model type (a subclass uses its base class's entry).
TOKEN_FRAMES: dict[type[nn.Module], TokenFrames] = {}
#: Whether an instance of a registered type has the layout its map describes (default: always).
_TOKEN_FRAMES_APPLY: dict[type[nn.Module], Callable[[nn.Module], bool]] = {}

#: The frame of a token that belongs to no frame (a class token): (query, key) pairs with it count in neither sum.
NO_FRAME = -1


def register_token_frames(model_type: type[nn.Module], fn: TokenFrames,
                          applies: Callable[[nn.Module], bool] | None = None) -> None:
    """Let :func:`temporal_share` measure models of ``model_type``: ``fn(model, clips)`` names the modules computing
    ``A @ V`` (``models.layers.MatMul`` with ``A`` of shape ``(B * groups, heads..., Nq, Nk)``, batch outermost; in
    the model, or else in its canonized copy) and gives the frame index of each query row ``(Nq,)`` and each key
    column ``(Nk,)`` of ``A`` (:data:`NO_FRAME` for a token in no frame); ``applies(model)`` (default: always) says
    whether an instance has that layout (one adapter class wraps several architectures)."""
    if not (isinstance(model_type, type) and issubclass(model_type, nn.Module)):
        raise TypeError(f"register_token_frames takes an nn.Module subclass, got {model_type!r}")
    TOKEN_FRAMES[model_type] = fn
    _TOKEN_FRAMES_APPLY[model_type] = applies or (lambda _model: True)


def videomae_token_frames(model: nn.Module, clips: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """VideoMAE: joint attention over all ``T' * H' * W'`` tokens, token ``n`` in frame ``n // (H' * W')``; the
    products are ``<block>.attention.attention.av_matmul``."""
    assert isinstance(model, VideoMAE)
    t, h, w = model.token_grid(clips.shape)
    frames = torch.arange(t * h * w, device=clips.device) // (h * w)
    return {f"{block}.attention.attention.av_matmul": (frames, frames) for block in model.block_names}


register_token_frames(VideoMAE, videomae_token_frames)

#: transformers' classifiers with joint space-time attention (``models.hf``): architecture -> the module paths of
#: their ``A @ V`` products in the canonized copy (``explain.canonize_trace`` names a forward's second matmul
#: ``matmul_1``), given the adapter.
_HF_JOINT: dict[str, Callable[[nn.Module], list[str]]] = {
    "VideoMAEForVideoClassification": lambda m: [
        f"{PREFIX}videomae.encoder.layer.{i}.attention.attention.matmul_1"
        for i in range(len(m.hf.videomae.encoder.layer))],
    "VivitForVideoClassification": lambda m: [
        f"{PREFIX}vivit.layers.{i}.attention.matmul_1" for i in range(len(m.hf.vivit.layers))],
    # the encoder's blocks and the attentive pooler's self-attention layers (over the same tokens); not its
    # cross-attention, whose one query is a learned token in no frame
    "VJEPA2ForVideoClassification": lambda m: [
        *(f"{PREFIX}vjepa2.encoder.layer.{i}.attention.matmul_1" for i in range(len(m.hf.vjepa2.encoder.layer))),
        *(f"{PREFIX}pooler.self_attention_layers.{i}.self_attn.matmul_1"
          for i in range(len(m.hf.pooler.self_attention_layers)))],
}


def _is_hf_joint(model: nn.Module) -> bool:
    return getattr(model, "architecture", None) in _HF_JOINT


def hf_token_frames(model: nn.Module, clips: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """transformers' VideoMAE, ViViT and V-JEPA 2 (``models.hf``): joint attention over the class tokens (ViViT's
    one; frame :data:`NO_FRAME`) and the ``T' * H' * W'`` patch tokens in ``(T', H', W')`` order, patch token ``n``
    in frame ``n // (H' * W')`` (V-JEPA 2's rotary positions do not change which tokens attend to which)."""
    assert isinstance(model, HFVideoClassifier) and _is_hf_joint(model)
    t, h, w = model.token_grid(clips.shape)  # refuses clips of another size, naming the config
    patches = torch.arange(t * h * w, device=clips.device) // (h * w)
    frames = torch.cat((torch.full((model.num_prefix_tokens,), NO_FRAME, device=clips.device), patches))
    return {name: (frames, frames) for name in _HF_JOINT[model.architecture](model)}


register_token_frames(HFVideoClassifier, hf_token_frames, _is_hf_joint)

#: ``branch_adds(model, clips) -> {name of a residual models.layers.Add module: True where its second input is a
#: temporal-attention branch, False where a spatial-attention one}`` (names in the model AttnLRP runs: the model
#: itself, or its canonized copy where the model lacks them).
BranchAdds = Callable[[nn.Module, Tensor], dict[str, bool]]

#: The registered residual-branch maps, by model type: ``(applies(model) -> bool, branch_adds)``.
BRANCH_ADDS: dict[type[nn.Module], tuple[Callable[[nn.Module], bool], BranchAdds]] = {}


def register_branch_adds(model_type: type[nn.Module], fn: BranchAdds,
                         applies: Callable[[nn.Module], bool] | None = None) -> None:
    """Let :func:`temporal_share` measure models of ``model_type`` with divided attention at their residual sums:
    ``fn(model, clips)`` names the ``models.layers.Add`` modules adding an attention branch (their second input,
    batch outermost) to the residual stream, ``True`` for a temporal branch; ``applies(model)`` (default: always)
    says whether an instance has that layout (one adapter class wraps several architectures)."""
    if not (isinstance(model_type, type) and issubclass(model_type, nn.Module)):
        raise TypeError(f"register_branch_adds takes an nn.Module subclass, got {model_type!r}")
    BRANCH_ADDS[model_type] = (applies or (lambda _model: True), fn)


def _is_divided_timesformer(model: nn.Module) -> bool:
    return isinstance(model, HFVideoClassifier) and model.divided_attention


def timesformer_branch_adds(model: nn.Module, clips: Tensor) -> dict[str, bool]:
    """transformers' TimeSformer with divided space-time attention: in every layer, canonization makes the sum
    ``h[:, 1:] + temporal_dense(temporal_attention(h))`` the module ``add`` (temporal branch) and
    ``cat(cls, temporal_embedding) + cat(mean of the CLS copies, spatial attention)`` the module ``add_1``
    (spatial branch); ``add_2`` is the MLP's sum (not counted)."""
    assert isinstance(model, HFVideoClassifier) and _is_divided_timesformer(model)
    model.token_grid(clips.shape)  # refuses clips of another size, naming the config
    prefix = f"{PREFIX}{model.spec.blocks}"
    out: dict[str, bool] = {}
    for i in range(len(model.hf.get_submodule(model.spec.blocks))):
        out[f"{prefix}.{i}.add"] = True
        out[f"{prefix}.{i}.add_1"] = False
    return out


register_branch_adds(HFVideoClassifier, timesformer_branch_adds, _is_divided_timesformer)


def _branch_adds_for(model: nn.Module) -> BranchAdds | None:
    for cls in type(model).__mro__:
        if cls in BRANCH_ADDS:
            applies, fn = BRANCH_ADDS[cls]
            return fn if applies(model) else None
    return None


def _registered_token_frames(model: nn.Module) -> TokenFrames | None:
    for cls in type(model).__mro__:
        if cls in TOKEN_FRAMES:
            return TOKEN_FRAMES[cls] if _TOKEN_FRAMES_APPLY.get(cls, lambda _m: True)(model) else None
    return None


def _token_frames_for(model: nn.Module) -> TokenFrames:
    found = _registered_token_frames(model)
    if found is not None:
        return found
    supported = ", ".join(sorted({t.__name__ for t in TOKEN_FRAMES if t is not HFVideoClassifier}
                                 | {"TimeSformer, VideoMAE, ViViT, V-JEPA 2 (models.hf)"}))
    name = type(model).__name__ + (f" ({model.architecture})" if isinstance(model, HFVideoClassifier) else "")
    raise ValueError(
        f"temporal_share cannot measure {name}: it needs attention products A @ V computed by "
        f"models.layers.MatMul modules and a token->frame map, or divided attention's residual sums; supported: "
        f"{supported} (add one with motion_relevance.explain.temporal_flow.register_token_frames or "
        "register_branch_adds)"
    )


def pair_flows(a: Tensor, v: Tensor, out: Tensor, relevance: Tensor, epsilon: float) -> Tensor:
    """Relevance through each (query, key) pair of ``out = a @ v``: ``F[q, k] = sum_d |a[q, k] v[k, d] s[q, d]|``,
    ``s = R / (2 out + eps sign(out))`` (sign(0) = +1), the term the uniform rule (``explain.rules.Uniform``) sends
    to the value ``v[k, d]`` — and equally to ``a[q, k]``: the two halves agree term by term.

    Args:
        a: attention ``(..., Nq, Nk)``; v: values ``(..., Nk, d)``; out: ``a @ v`` as the model computed it
            ``(..., Nq, d)``; relevance: relevance of ``out`` (same shape); epsilon: the rule's stabiliser.

    Returns:
        ``(..., Nq, Nk)``, non-negative. Computed as ``|a| * (|s| @ |v|^T)`` (no ``(Nq, Nk, d)`` tensor).
    """
    den = torch.full_like(out, epsilon).copysign_(out).add_(out, alpha=2.0)
    s = relevance / den
    return a.abs() * (s.abs() @ v.abs().transpose(-1, -2))


class _Recorder:
    """Forward hooks on the A @ V modules keeping ``(A, V, out)`` until ``out``'s relevance arrives; a tensor hook
    on ``out`` then reduces them to per-clip sums ``(cross-frame, all)`` of :func:`pair_flows` and lets them go.
    The batch size of each forward is read from the model's input (a forward pre-hook on the model), so one
    recorder measures every explainer pass made while it is installed, whatever its batch."""

    what = "attention products"

    def __init__(self, frames: dict[str, Any], epsilon: float) -> None:
        self.frames, self.epsilon, self.batch = frames, epsilon, 0
        self.sums: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def model_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        while isinstance(first, (list, tuple)) and first:
            first = first[0]
        if isinstance(first, Tensor):
            self.batch = int(first.shape[0])

    def _reduce(self, name: str, batch: int, a: Tensor, v: Tensor, out: Tensor, relevance: Tensor) -> None:
        flows = pair_flows(a, v, out, relevance, self.epsilon)
        flows = flows.reshape(batch, -1, *flows.shape[-2:])
        total = flows.sum(-1).double().sum((1, 2))
        query_frames, key_frames = (f.to(flows.device) for f in self.frames[name])
        query_frames, key_frames = query_frames.view(-1, 1), key_frames.view(1, -1)
        if bool((query_frames == NO_FRAME).any() or (key_frames == NO_FRAME).any()):
            flows = flows.masked_fill_((query_frames == NO_FRAME) | (key_frames == NO_FRAME), 0.0)
            total = flows.sum(-1).double().sum((1, 2))
        cross = flows.masked_fill_(query_frames == key_frames, 0.0).sum(-1).double().sum((1, 2))
        self.sums.setdefault(name, []).append((cross, total))

    def hook(self, name: str) -> Callable[..., None]:
        def forward_hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if not (isinstance(out, Tensor) and out.requires_grad and len(args) == 2):
                return  # a forward without autograd (model analysis): no relevance will arrive
            kept = [args[0].detach(), args[1].detach(), out.detach()]
            batch = self.batch

            def reduce(relevance: Tensor) -> None:
                if kept:
                    self._reduce(name, batch, *kept, relevance.detach())
                    kept.clear()

            out.register_hook(reduce)

        return forward_hook

    def shares(self, device: torch.device) -> list[Tensor]:
        """One ``(b,)`` float32 share per explainer pass, in call order (every product must have received
        relevance once per pass)."""
        got = {name: len(self.sums.get(name, [])) for name in self.frames}
        passes = max(got.values(), default=0)
        bad = next((name for name, n in got.items() if n != passes or n == 0), None)
        if bad is not None:
            raise RuntimeError(f"temporal_share: module {bad!r} received relevance {got[bad]} times where the "
                               f"{self.what} received it in {passes} AttnLRP passes (expected once per pass)")
        out = []
        for i in range(passes):
            cross = sum(self.sums[name][i][0].to(device) for name in self.frames)
            total = sum(self.sums[name][i][1].to(device) for name in self.frames)
            assert isinstance(cross, Tensor) and isinstance(total, Tensor)
            share = torch.where(total > 0, cross / total.clamp(min=torch.finfo(torch.float64).tiny),
                                torch.zeros_like(total))
            out.append(share.clamp(0.0, 1.0).to(torch.float32))
        return out


class _BranchRecorder(_Recorder):
    """Forward hooks on residual sums ``out = a + b`` keeping ``(b, out)``; a tensor hook on ``out`` reduces its
    relevance to the per-clip sum of ``|R_b|``, ``R_b = b R / (out + eps sign(out))`` (the epsilon rule on a sum,
    ``explain.rules.EpsilonAdd``), kept as ``(that sum, that sum)`` for a temporal branch and ``(0, that sum)``
    for a spatial one, so :meth:`shares` gives temporal / (temporal + spatial)."""

    what = "residual sums"

    def hook(self, name: str) -> Callable[..., None]:
        temporal = bool(self.frames[name])

        def forward_hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if not (isinstance(out, Tensor) and out.requires_grad and len(args) == 2):
                return
            kept = [args[1].detach(), out.detach()]
            batch = self.batch

            def reduce(relevance: Tensor) -> None:
                if kept:
                    branch, total = kept
                    den = torch.full_like(total, self.epsilon).copysign_(total).add_(total)
                    part = (branch * relevance.detach() / den).abs().reshape(batch, -1).double().sum(1)
                    self.sums.setdefault(name, []).append((part if temporal else torch.zeros_like(part), part))
                    kept.clear()

            out.register_hook(reduce)

        return forward_hook


class FlowRecorder:
    """Context manager measuring :func:`temporal_share` of every AttnLRP pass ``explainer`` makes on ``model``
    while it is entered (e.g. inside a caching wrapper that explains only some clips): hooks only, no pass of its
    own. :meth:`shares` gives one ``(b,)`` share per pass, in call order.

    Args: as :func:`temporal_share`; ``clips`` fixes the token grid (any batch of clips of that shape).
    """

    def __init__(self, model: nn.Module, clips: Tensor, explainer: Any) -> None:
        branch_adds = _branch_adds_for(model)
        token_frames = _token_frames_for(model) if branch_adds is None else None
        if not isinstance(explainer, AttnLRP):
            raise TypeError(f"temporal_share explainer must be an AttnLRP, got {type(explainer).__name__}")
        self.device = clips.device
        self.handles: list[Any] = []
        if branch_adds is not None:
            self._branches(model, clips, branch_adds(model, clips), _rule_epsilon(explainer, True))
            return
        assert token_frames is not None
        epsilon = _rule_epsilon(explainer, False)
        frames = token_frames(model, clips)
        modules = dict(model.named_modules())
        if frames and not all(isinstance(modules.get(n), MatMul) for n in frames):
            model = canonized(model, probe=clips).model  # the products are made by canonization (models.hf)
            modules = dict(model.named_modules())
        missing = [n for n in frames if not isinstance(modules.get(n), MatMul)]
        if missing:
            raise ValueError(f"temporal_share: the token->frame map of {type(model).__name__} names {missing[0]!r}, "
                             "which is not a models.layers.MatMul module of the model or its canonized copy; fix its "
                             "registered map (register_token_frames)")
        self.model, self.modules = model, modules
        self.recorder = _Recorder(frames, epsilon)

    def _branches(self, model: nn.Module, clips: Tensor, adds: dict[str, bool], epsilon: float) -> None:
        """Hook the residual sums where they are: in ``model``, or else in its canonized copy (the model the
        explainer runs; made once per model and shared with the explainer through the canonization cache)."""
        modules = dict(model.named_modules())
        if not all(isinstance(modules.get(n), Add) for n in adds):
            model = canonized(model, probe=clips).model
            modules = dict(model.named_modules())
        missing = [n for n in adds if not isinstance(modules.get(n), Add)]
        if missing or not adds:
            raise ValueError(f"temporal_share: the residual-branch map of {type(model).__name__} names "
                             f"{(missing or ['nothing'])[0]!r}, which is not a models.layers.Add module of the model "
                             "or its canonized copy; fix its registered map (register_branch_adds)")
        self.model, self.modules = model, modules
        self.recorder = _BranchRecorder(adds, epsilon)

    def __enter__(self) -> FlowRecorder:
        self.handles = [self.model.register_forward_pre_hook(self.recorder.model_hook)]
        self.handles += [self.modules[n].register_forward_hook(self.recorder.hook(n)) for n in self.recorder.frames]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def shares(self) -> list[Tensor]:
        """One ``(b,)`` share in ``[0, 1]`` per AttnLRP pass made inside the context, in call order."""
        return self.recorder.shares(self.device)


def measures_temporal_share(model: nn.Module, explainer: Any) -> bool:
    """Whether :func:`temporal_share` can measure ``explainer`` on ``model``: an AttnLRP with the rule the model's
    attention layout is measured at (:func:`_measured_rule`), and a registered map of that layout."""
    if not isinstance(explainer, AttnLRP):
        return False
    divided = _branch_adds_for(model) is not None
    module, rule_type, _ = _measured_rule(divided)
    if not isinstance(explainer.composite.rule_for(module), rule_type):
        return False
    return divided or _registered_token_frames(model) is not None


def _measured_rule(divided: bool) -> tuple[nn.Module, type, str]:
    """The module type, the rule measured at it, and how a refusal says so: the epsilon rule on residual sums for
    divided attention, the uniform rule on the attention products otherwise."""
    if divided:
        return Add(), EpsilonAdd, "on divided attention measures the epsilon rule on residual sums"
    return MatMul(), Uniform, "measures the uniform rule on the attention products"


def _rule_epsilon(explainer: Any, divided: bool) -> float:
    """The epsilon of the rule temporal_share measures, or ``ValueError`` when ``explainer`` uses another rule."""
    module, rule_type, what = _measured_rule(divided)
    rule = explainer.composite.rule_for(module)
    if not isinstance(rule, rule_type):
        raise ValueError(
            f"temporal_share {what} (explain.rules.{rule_type.__name__}); explainer {explainer!r} uses {rule!r}: "
            f"drop its rules= entry for {type(module).__name__}"
        )
    return rule.epsilon


def temporal_share(model: nn.Module, clips: Tensor, target: Any = None, *, explainer: Any = None) -> Tensor:
    """Share ``(B,)`` in ``[0, 1]`` of the relevance AttnLRP passes through attention products that crosses frames.

    For every attention product ``o = A @ V`` of the model (all blocks and heads) the relevance through each
    (query, key) pair, :func:`pair_flows`, is summed over pairs whose query and key lie in different frames
    (tubelet time indices), and divided by the sum over all pairs. A clip through whose attention no relevance
    passes gets 0.

    Args:
        model: a model with a registered token -> frame map (:func:`register_token_frames`; VideoMAE, and
            transformers' VideoMAE, ViViT and V-JEPA 2 through ``models.hf``), or with
            registered residual-branch sums (:func:`register_branch_adds`; transformers' TimeSformer, where the
            share is the temporal branches' part of the relevance the residual sums give the attention branches).
        clips: ``(B, C, T, H, W)``.
        target: class per clip (int, sequence or ``(B,)`` tensor); ``None``: the predicted class.
        explainer: the :class:`~motion_relevance.explain.AttnLRP` to run (its MatMul rule must be the uniform rule);
            default: one whose zB bounds enclose the clips (the first layer's rule does not change the relevance
            that reaches the attention products).
    """
    if _branch_adds_for(model) is None:
        _token_frames_for(model)
    check_clips("temporal_share clips", clips, finite=True)
    if explainer is None:
        lo, hi = float(clips.min()), float(clips.max())
        explainer = AttnLRP(lower=lo - 1.0, upper=hi + 1.0)
    recorder = FlowRecorder(model, clips, explainer)
    with recorder:
        explainer(model, clips, target)
    shares = recorder.shares()
    if len(shares) != 1:
        raise RuntimeError(f"temporal_share: the {recorder.recorder.what} received relevance {len(shares)} times in "
                           "one AttnLRP call (expected once)")
    return shares[0]
