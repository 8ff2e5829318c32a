"""Canonization's one-off cost without changing its result (explain/canonize_trace.py): each distinct module structure
traced once, the calls recorded on the ``meta`` device, the logits check reusing the recording pass; and strict
``canonize()`` on transformers' models through the adapter (models/hf.py).

The references: the same rewrite with each shortcut switched off (every module traced, calls recorded by a real
forward pass, the structure traced on the clips' device), the model's own logits, and the user's model as it was.
No test times anything.
"""

from __future__ import annotations

import inspect
import linecache

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from motion_relevance.explain import AttnLRP, canonize
from motion_relevance.explain import canonize_trace as ct
from motion_relevance.explain._copy import eval_copy
from motion_relevance.explain.canonize_trace import CanonizationError, canonized
from motion_relevance.explain.validation import analyse_model
from motion_relevance.models.layers import Add

transformers = pytest.importorskip("transformers")

from motion_relevance.models import from_transformers  # noqa: E402

FRAMES, SIZE, CLASSES = 4, 16, 3
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def clips(batch: int = 2, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).clamp(-2, 2)


def hf_model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    configs = {
        "VideoMAEForVideoClassification": lambda: transformers.VideoMAEConfig(
            image_size=SIZE, patch_size=8, num_frames=FRAMES, tubelet_size=2, num_labels=CLASSES, **SMALL),
        "TimesformerForVideoClassification": lambda: transformers.TimesformerConfig(
            image_size=SIZE, patch_size=8, num_frames=FRAMES, num_labels=CLASSES, **SMALL),
        "VivitForVideoClassification": lambda: transformers.VivitConfig(
            image_size=SIZE, tubelet_size=[2, 8, 8], num_frames=FRAMES, num_labels=CLASSES, **SMALL),
    }
    return getattr(transformers, arch)(configs[arch]()).eval()


ARCHS = ["VideoMAEForVideoClassification", "TimesformerForVideoClassification", "VivitForVideoClassification"]


def snapshot(model: nn.Module) -> tuple:
    state = {k: (v.clone(), v.data_ptr(), v.requires_grad) for k, v in model.state_dict(keep_vars=True).items()}
    classes = {name: (type(m), sorted(vars(m))) for name, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return state, classes, hooks, model.training


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    state, classes, hooks, training = snapshot(model)
    assert classes == before[1] and hooks == before[2] and training == before[3]
    assert state.keys() == before[0].keys()
    for k, (v, ptr, grad) in state.items():
        assert torch.equal(v, before[0][k][0]) and ptr == before[0][k][1] and grad == before[0][k][2]


def generated_source(cls: type) -> str | None:
    """The source torch.fx generated for a regenerated class's ``forward`` (None for a class kept as written)."""
    forward = cls.__dict__.get("forward")
    cells = [c.cell_contents for c in getattr(forward, "__closure__", None) or ()]
    for f in [forward, *cells]:
        code = getattr(f, "__code__", None)
        if code is not None and code.co_filename.startswith("<canonized"):
            return "".join(linecache.getlines(code.co_filename))
    return None


def rewrite_record(record: ct.Canonized) -> tuple:
    """Everything a rewrite decided: added modules (path, type, origin), rewritten paths, notes, unsupported ops,
    modules made out of place, and each module's class and generated forward."""
    modules = dict(record.model.named_modules())
    added = {name: (type(modules[name]).__name__, origin) for name, origin in record.added.items()}
    code = {name: (type(m).__qualname__, generated_source(type(m))) for name, m in modules.items()}
    return added, list(record.rewritten), list(record.notes), list(record.unsupported), list(record.out_of_place), code


# ------------------------------------------------------------------------------ each structure traced once


@pytest.mark.parametrize("arch", ARCHS)
def test_identical_blocks_are_traced_once_and_the_rewrite_equals_the_uncached_one(
        arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = hf_model(arch)
    net, x = from_transformers(hf), clips()
    traced: list[str] = []
    real = ct._OneLevel.trace

    def counting(self: ct._OneLevel, root: nn.Module, concrete_args: dict | None = None) -> object:
        traced.append(type(root).__name__)
        return real(self, root, concrete_args)

    monkeypatch.setattr(ct._OneLevel, "trace", counting)
    plain = ct._canonize(net, x, strict=True, check=False, reuse=False, on_meta=False)
    every = list(traced)
    traced.clear()
    fast = ct._canonize(net, x, strict=True, check=False)
    blocks = SMALL["num_hidden_layers"]
    layer = {"VideoMAEForVideoClassification": "VideoMAELayer", "TimesformerForVideoClassification":
             "TimesformerLayer", "VivitForVideoClassification": "VivitLayer"}[arch]
    assert every.count(layer) == blocks and traced.count(layer) == 1  # the blocks: traced once
    assert len(traced) < len(every) - blocks
    assert rewrite_record(fast) == rewrite_record(plain)
    # identical blocks got the same regenerated class (one graph, one generated forward)
    layers = [m for name, m in fast.model.named_modules() if type(m).__name__ == layer]
    assert len(layers) == blocks and len({type(m) for m in layers}) == 1
    assert hasattr(type(layers[0]), "_canonized_from")
    with torch.no_grad():
        want = net(x)
        assert torch.equal(fast.model(x), plain.model(x))
        torch.testing.assert_close(fast.model(x), want, rtol=1e-6, atol=1e-7)


class Scaled(nn.Module):
    """Same class, different attributes: the scale is a constant of the traced graph, the flag picks a branch."""

    def __init__(self, scale: float, gate: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale, self.gate = scale, gate

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc(x)) * self.scale
        if self.gate:
            h = torch.sigmoid(h)
        return h + x


class Flagged(Scaled):
    """A branch on the module's own buffer, evaluated while tracing: such modules are traced each."""

    def __init__(self, gate: bool) -> None:
        super().__init__(1.0)
        self.register_buffer("flag", torch.tensor(1.0 if gate else -1.0))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc(x))
        if self.flag > 0:
            h = torch.sigmoid(h)
        return h + x


class Stack(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, clips: Tensor) -> Tensor:
        tokens = clips.flatten(1).unflatten(1, (-1, 4))
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(tokens.mean(1))


def test_blocks_that_differ_in_an_attribute_or_buffer_are_traced_each() -> None:
    torch.manual_seed(0)
    model = Stack([Scaled(1.0), Scaled(1.0), Scaled(3.0), Scaled(1.0, gate=True), Flagged(False),
                   Flagged(True)]).eval()
    x = clips()
    record = ct._canonize(model, x, strict=True, check=False)
    plain = ct._canonize(model, x, strict=True, check=False, reuse=False, on_meta=False)
    assert rewrite_record(record) == rewrite_record(plain)
    kinds = [sorted(type(m).__name__ for m in block.children()) for block in record.model.blocks]
    assert kinds[0] == kinds[4] == ["Add", "Linear", "ReLU"]
    assert kinds[3] == kinds[5] == ["Add", "Linear", "ReLU", "Sigmoid"]
    with torch.no_grad():
        torch.testing.assert_close(record.model(x), model(x), rtol=0, atol=0)
    # the same class and code, different constants: separate graphs (the scale is baked into the generated code)
    classes = [type(b) for b in record.model.blocks]
    assert classes[0] is classes[1] and classes[2] is not classes[0] and classes[3] is not classes[0]
    assert classes[4] is not classes[5]


def test_fingerprints_tell_apart_what_the_traced_graph_depends_on() -> None:
    torch.manual_seed(0)
    model = Stack([Scaled(1.0), Scaled(1.0), Scaled(2.0), Flagged(False), Flagged(False)]).eval()
    work = eval_copy(model)
    calls, _ = ct._record_calls(work, clips(), on_meta=True)
    keys = [ct._fingerprint(b, calls) for b in work.blocks]
    assert keys[0] == keys[1] and keys[0] != keys[2]
    assert keys[3] != keys[4]  # own buffers by identity: equal values are not enough
    other = eval_copy(model)
    other_calls, _ = ct._record_calls(other, clips().flatten(2)[..., :64].reshape(2, 3, 4, 4, 4), on_meta=True)
    assert ct._fingerprint(other.blocks[0], other_calls) != keys[0]  # other recorded shapes
    work.blocks[1].forward = work.blocks[1].forward  # a forward of its own object: never reused
    assert ct._fingerprint(work.blocks[1], calls) is None


# ------------------------------------------------------------------------------ calls recorded on meta


def _calls_by_name(model: nn.Module, calls: dict[int, ct._Call]) -> dict[str, tuple]:
    return {name: (ct._key(calls[id(m)].arguments), ct._key(calls[id(m)].outputs), calls[id(m)].varying)
            for name, m in model.named_modules() if id(m) in calls}


@pytest.mark.parametrize("arch", ARCHS)
def test_calls_recorded_on_meta_equal_those_of_a_real_forward(arch: str) -> None:
    net, x = from_transformers(hf_model(arch)), clips()
    work = eval_copy(net)
    meta, meta_out = ct._record_calls(work, x, on_meta=True)
    real, real_out = ct._record_calls(work, x, on_meta=False)
    assert meta_out.device.type == "meta" and real_out.device == x.device
    assert _calls_by_name(work, meta) == _calls_by_name(work, real)
    with torch.no_grad():
        assert torch.equal(real_out, net(x[:1]))  # the recording pass is the model's own forward


class ItemNet(nn.Module):
    """A forward that reads a value (``.item()``): it does not run on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, clips: Tensor) -> Tensor:
        tokens = clips.flatten(1).unflatten(1, (-1, 4))
        scale = 1.0 + abs(tokens.sum().item()) * 0.0
        return self.fc(F.relu(tokens).mean(1) * scale)


def test_a_model_that_does_not_run_on_meta_is_recorded_on_its_device() -> None:
    model, x = ItemNet().eval(), clips()
    work = eval_copy(model)
    calls, out = ct._record_calls(work, x, on_meta=True)
    assert out.device == x.device
    real, _ = ct._record_calls(eval_copy(model), x, on_meta=False)
    assert len(calls) == len(real) == 2
    record = canonized(model, probe=x)
    with torch.no_grad():
        torch.testing.assert_close(record.model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_canonized_structure_traced_on_meta_equals_the_real_trace(arch: str) -> None:
    net, x = from_transformers(hf_model(arch)), clips()
    record = ct._canonize(net, None, strict=True, probe=x)
    structure = ct._structure(record, x)
    assert structure == analyse_model(record.model, x)
    assert ct._structure(record, x) is structure  # once per clip shape
    assert structure.num_outputs == CLASSES and structure.output_shapes


# ------------------------------------------------------------------------------ the logits check


class _Counted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, CLASSES)

    def forward(self, clips: Tensor) -> Tensor:
        tokens = clips.flatten(1).unflatten(1, (-1, 4))
        return self.fc2(F.relu(self.fc1(tokens)) + tokens).mean(1)


def test_the_logits_check_costs_one_forward_pass_more_than_the_recording() -> None:
    model, x = _Counted().eval(), clips()
    devices: list[str] = []
    model.fc1.register_forward_pre_hook(lambda _m, args: devices.append(args[0].device.type))  # copies share it
    before = snapshot(model)
    checked = canonize(model, x)
    assert devices == ["cpu", "cpu"]  # the recording pass (the model's own logits) and the rewritten model
    devices.clear()
    unchecked = canonize(model, x, check=False)
    assert devices == ["meta"]  # shapes only
    devices.clear()
    assert_unchanged(model, before)
    with torch.no_grad():
        assert torch.equal(checked(x), unchecked(x))
        torch.testing.assert_close(checked(x), model(x), rtol=0, atol=0)


def test_the_logits_check_still_refuses_a_rewrite_that_changes_the_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _Counted().eval(), clips()
    monkeypatch.setattr(Add, "forward", lambda self, a, b: a - b)  # a rewrite that changes the logits
    with pytest.raises(CanonizationError, match=r"canonize: the rewritten _Counted gives other logits \(max "):
        canonize(model, x)
    canonize(model, x, check=False)  # without the check nothing compares


def test_canonized_parameters_share_the_users_storage_and_the_model_is_unchanged() -> None:
    hf = hf_model("VideoMAEForVideoClassification")
    net, x = from_transformers(hf), clips()
    before = snapshot(net)
    work = canonize(net, x)
    assert_unchanged(net, before)
    ours = {k: v.data_ptr() for k, v in net.state_dict().items()}
    theirs = {k: v.data_ptr() for k, v in work.state_dict().items()}
    assert theirs == ours  # no parameter or buffer copied
    assert all(not p.requires_grad for p in work.parameters()) and all(p.requires_grad for p in net.parameters())


# ------------------------------------------------------------------------------ strict canonize() through the adapter


@pytest.mark.parametrize("arch", ARCHS)
def test_strict_canonize_runs_on_the_adapter(arch: str) -> None:
    net, x = from_transformers(hf_model(arch)), clips()
    work = canonize(net, x)  # strict, with the logits check
    record = canonized(work)
    assert record.model is work and not record.notes and not record.unsupported
    assert type(work) is type(net)  # the adapter's forward is kept as written
    assert any(name.startswith("hf.") for name in record.rewritten)
    with torch.no_grad():
        torch.testing.assert_close(work(x), net(x), rtol=1e-6, atol=1e-7)


_ROUTING = {"permute", "contiguous", "dim", "numel", "is_floating_point", "shape", "size", "__get__"}


def test_the_adapters_forward_holds_no_operation_that_needs_a_rule() -> None:
    net, x = from_transformers(hf_model("VideoMAEForVideoClassification")), clips()
    depth = [0]
    seen: list[str] = []
    net.hf.register_forward_pre_hook(lambda *_: depth.__setitem__(0, depth[0] + 1))
    net.hf.register_forward_hook(lambda *_: depth.__setitem__(0, depth[0] - 1))

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if depth[0] == 0:
                seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Spy():
        net(x)
    assert "permute" in seen and set(seen) <= _ROUTING, seen


class ExpIntermediate(transformers.models.videomae.modeling_videomae.VideoMAEIntermediate):
    def forward(self, hidden_states: Tensor) -> Tensor:
        return torch.exp(self.dense(hidden_states))


def test_strict_canonize_refuses_an_operation_without_a_rule_through_the_adapter() -> None:
    hf = hf_model("VideoMAEForVideoClassification")
    hf.videomae.encoder.layer[1].intermediate.__class__ = ExpIntermediate
    net = from_transformers(hf)
    line = inspect.getsourcelines(ExpIntermediate.forward)[1] + 1
    pattern = (rf"canonize: no module with a rule for the operation torch\.exp at \S+test_canonize_speed\.py:{line} "
               r"\(`return torch\.exp\(self\.dense\(hidden_states\)\)`\); write it with a module")
    with pytest.raises(CanonizationError, match=pattern) as info:
        canonize(net, clips())
    assert "\n" not in str(info.value)
    record = ct._canonize(net, clips(), strict=False)  # not strict: recorded, the rest rewritten
    assert len(record.unsupported) == 1 and "layer.1.attention" in " ".join(record.rewritten)
    with pytest.raises(TypeError, match=rf"AttnLRP has no rule for the operation torch\.exp at "
                                        rf"\S+test_canonize_speed\.py:{line} "):
        AttnLRP(lower=-2.5, upper=2.5)(net, clips(), torch.tensor([1, 2]))


# ------------------------------------------------------------------------------ branches on sizes


class SizeBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, clips: Tensor) -> Tensor:
        tokens = clips.flatten(1).unflatten(1, (-1, 4))
        if tokens.shape[1] != 64:
            tokens = tokens[:, :64]
        return self.fc(tokens.mean(1))


def test_a_branch_on_sizes_is_traced_as_it_ran_and_guarded() -> None:
    model, x = SizeBranch().eval(), clips()  # 3 * 4 * 16 * 16 / 4 = 768 tokens: the branch is taken
    work = canonize(model, x)
    assert not canonized(work).notes
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x), rtol=0, atol=0)
        small = torch.randn(2, 1, 4, 8, 8)  # 64 tokens: the other branch
        line = inspect.getsourcelines(SizeBranch.forward)[1] + 2
        with pytest.raises(ValueError, match=rf"canonize: the condition at \S+test_canonize_speed\.py:{line} .* was "
                                             r"True for the clips the model was canonized with and is not for these"):
            work(small)
        model(small)


class Caching(nn.Module):
    """Keeps tensors from its forward: a cache attribute, a buffer registered on the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, CLASSES)
        self.last = torch.zeros(1)

    def forward(self, clips: Tensor) -> Tensor:
        tokens = clips.flatten(1).unflatten(1, (-1, 4))
        self.last = tokens[:, 0]
        if "seen" not in self._buffers:
            self.register_buffer("seen", tokens[:1, :1].clone())
        return self.fc(tokens.mean(1))


def test_tensors_a_forward_keeps_during_the_meta_pass_are_undone() -> None:
    model = Caching().eval()
    before = model.last
    work = eval_copy(model)
    calls, out = ct._record_calls(work, clips(), on_meta=True)
    assert out.is_meta and len(calls) == 2  # the pass ran on meta
    assert work.last is before and "seen" not in work._buffers  # nothing of it stayed on the copy
    assert model.last is before and "seen" not in model._buffers


def test_a_subclass_with_its_own_forward_is_not_kept_as_written() -> None:
    from motion_relevance.models.hf import HFVideoClassifier

    class Changed(HFVideoClassifier):
        def forward(self, clips: Tensor) -> Tensor:
            return torch.exp(super().forward(clips))

    net = from_transformers(hf_model("VideoMAEForVideoClassification"))
    assert ct._kept_as_written(net)
    net.__class__ = Changed
    assert not ct._kept_as_written(net)
    with pytest.raises(CanonizationError, match="torch.fx cannot trace Changed '<model>'"):
        canonize(net, clips())
