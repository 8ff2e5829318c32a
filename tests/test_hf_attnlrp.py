"""AttnLRP on transformers' video classifiers through canonization by tracing (explain/canonize_trace.py).

References: our own VideoMAE (models/videomae.py, every operation a module) loaded with the same weights, the
transformers model's own logits, and tiny modules whose forward is written the way transformers writes it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from motion_relevance.explain.canonize_trace import canonize, canonized  # noqa: E402
from motion_relevance.explain.explainers import AttnLRP, DeepTaylor  # noqa: E402
from motion_relevance.explain.rules import ATTNLRP, DTD, Pass  # noqa: E402
from motion_relevance.models import from_transformers  # noqa: E402
from motion_relevance.models.layers import Add, MatMul  # noqa: E402
from motion_relevance.models.videomae import TokenPool, VideoMAE  # noqa: E402

FRAMES, SIZE, CLASSES = 4, 16, 3
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TARGET = torch.tensor([1, 2])


def tiny_videomae(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.VideoMAEConfig(image_size=SIZE, patch_size=8, num_frames=FRAMES, tubelet_size=2,
                                         num_labels=CLASSES, **SMALL)
    model = transformers.VideoMAEForVideoClassification(config).eval()
    with torch.no_grad():  # weights large enough that every rule sees non-trivial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def clips(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).clamp(-2, 2)


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, type], int]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = {name: type(m) for name, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return state, classes, hooks


@pytest.mark.parametrize("method", [AttnLRP, DeepTaylor])
def test_relevance_on_transformers_videomae_equals_our_videomae(method: type) -> None:
    hf = tiny_videomae()
    ours = VideoMAE(num_classes=CLASSES, image_size=SIZE, patch_size=8, num_frames=FRAMES, tubelet_size=2,
                    **SMALL).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    net, x = from_transformers(hf), clips()
    with torch.no_grad():
        torch.testing.assert_close(net(x), ours(x), rtol=1e-5, atol=1e-6)
    explainer = method(lower=-2.5, upper=2.5)
    want, got = explainer(ours, x, TARGET), explainer(net, x, TARGET)
    assert float(want.abs().amax()) > 1e-4  # not a trivial map
    scale = float(want.abs().amax())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_canonized_transformers_videomae_has_every_operation_as_a_module_and_equal_logits() -> None:
    hf = tiny_videomae()
    net, x = from_transformers(hf), clips()
    before = snapshot(hf)
    record = canonized(net, x)  # checks the rewritten model's logits against net's on the first clip
    assert not record.unsupported
    modules = dict(record.model.named_modules())
    kinds = [type(modules[name]) for name in record.added]
    blocks = SMALL["num_hidden_layers"]
    assert kinds.count(MatMul) == 2 * blocks  # Q K^T and A V of every block
    assert kinds.count(nn.Softmax) == blocks
    assert kinds.count(Add) == 2 * blocks + 1  # two residual sums per block, the position table
    assert kinds.count(TokenPool) == 1  # mean pooling of the head
    acts = [m for m in record.model.modules() if type(m).__name__ == "GELUActivation"]
    assert len(acts) == blocks and all(isinstance(ATTNLRP.rule_for(m), Pass) for m in acts)  # a rule: kept as is
    with torch.no_grad():
        torch.testing.assert_close(record.model(x), net(x), rtol=1e-6, atol=1e-7)
        # the transformers model itself still computes as before (its own forward, its own classes, no hooks)
        out = hf(pixel_values=x.permute(0, 2, 1, 3, 4).contiguous()).logits
    torch.testing.assert_close(out, net(x).detach(), rtol=0, atol=0)
    state, classes, hooks = before
    after = snapshot(hf)
    assert after[1] == classes and after[2] == hooks
    assert all(torch.equal(state[k], v) for k, v in after[0].items())


class _MaskedBlock(nn.Module):
    """Written as transformers writes its modules: an optional mask tested with ``is not None``, a shape unpacked
    into a new shape, ``**kwargs`` passed on."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        if mask is not None:
            x = x[~mask]
        shape = (*x.shape[:-1], 2, -1)
        heads = self.proj(x).view(shape)
        scores = torch.matmul(heads, heads.transpose(-1, -2))
        return (torch.softmax(scores, dim=-1) @ heads).reshape(x.shape) + x


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _MaskedBlock()
        self.head = nn.Linear(4, 3)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        tokens = clips.flatten(1).unflatten(1, (-1, 4))
        return self.head(self.block(tokens).mean(1))


def test_none_arguments_and_shape_unpacking_are_traced_as_run() -> None:
    model, x = _Model().eval(), clips()
    record = canonized(model, x)
    assert not record.unsupported and not record.notes
    kinds = sorted(type(m).__name__ for name, m in record.model.named_modules() if name in record.added)
    assert kinds == ["Add", "MatMul", "MatMul", "Softmax", "TokenPool"]
    with torch.no_grad():
        torch.testing.assert_close(record.model(x[:1]), model(x[:1]))
        torch.testing.assert_close(record.model(x), model(x))  # another batch size: shapes stayed symbolic


class _OtherMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(clips.flatten(3).mean(2).flatten(1)[:, :16])


def test_a_mean_that_is_not_token_pooling_is_recorded_without_a_rule() -> None:
    record = canonized(_OtherMean().eval(), clips())
    assert len(record.unsupported) == 1
    assert record.unsupported[0].startswith("Tensor.mean other than the mean over the tokens of a (B, N, D) tensor at ")
    assert "test_hf_attnlrp.py" in record.unsupported[0]  # the user's line


def test_canonize_without_clips_still_refuses_strictly_what_it_cannot_trace() -> None:
    net = from_transformers(tiny_videomae())
    # the adapter's own forward is kept as written (canonize_as_written); the wrapped model needs recorded calls
    with pytest.raises(ValueError, match=r"torch.fx cannot trace VideoMAEForVideoClassification 'hf' at \S+"
                                         r"modeling_videomae\.py:\d+"):
        canonize(net)


@pytest.mark.parametrize("name", ["GELUActivation", "FastGELUActivation", "NewGELUActivation", "QuickGELUActivation",
                                  "SiLUActivation"])
def test_transformers_activation_classes_pass_relevance_in_both_composites(name: str) -> None:
    module = getattr(transformers.activations, name)()
    assert isinstance(ATTNLRP.rule_for(module), Pass) and isinstance(DTD.rule_for(module), Pass)

    class Changed(type(module)):  # another forward computes something else: no rule by name
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    assert ATTNLRP.rule_for(Changed()) is None


CONFIGS = {
    "TimesformerForVideoClassification": lambda: transformers.TimesformerConfig(
        image_size=SIZE, patch_size=8, num_frames=FRAMES, num_labels=CLASSES, **SMALL),
    "VivitForVideoClassification": lambda: transformers.VivitConfig(  # hidden_act "gelu_fast": FastGELUActivation
        image_size=SIZE, tubelet_size=[2, 8, 8], num_frames=FRAMES, num_labels=CLASSES, **SMALL),
}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_attnlrp_runs_on_timesformer_and_vivit(arch: str) -> None:
    torch.manual_seed(0)
    hf = getattr(transformers, arch)(CONFIGS[arch]()).eval()
    net, x = from_transformers(hf), clips()
    record = canonized(net, x)  # the logits check passed
    assert not record.unsupported
    kinds = {type(m).__name__ for name, m in record.model.named_modules() if name in record.added}
    assert {"MatMul", "Softmax", "Add"} <= kinds
    with torch.no_grad():
        torch.testing.assert_close(record.model(x), net(x), rtol=1e-6, atol=1e-7)
    relevance = AttnLRP(lower=-2.5, upper=2.5)(net, x, TARGET)
    assert relevance.shape == x.shape and bool(torch.isfinite(relevance).all())
    assert float(relevance.abs().amax()) > 0


class _Flagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, double: bool = False) -> torch.Tensor:
        y = self.proj(x)
        return y + y if double else y + x


class _CallsFlagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Flagged()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.block(clips.flatten(1).unflatten(1, (-1, 4)), double=False).mean(1)


def test_a_flag_traced_as_a_constant_is_checked_on_every_call() -> None:
    model, x = _CallsFlagged().eval(), clips()
    work = canonized(model, x).model
    assert not canonized(model, x).unsupported
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x))
        tokens = x.flatten(1).unflatten(1, (-1, 4))
        torch.testing.assert_close(work.block(tokens), model.block(tokens))
        with pytest.raises(ValueError, match=r"canonize: _Flagged.forward was traced with double=False and is now "
                                             r"called with double=True; canonize the model again"):
            work.block(tokens, double=True)
