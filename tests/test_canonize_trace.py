"""Canonization by tracing: a user's model written with functional ReLUs, ``+`` / ``+=`` and shared modules is
explained exactly like the same network written with modules (the independent reference: a second spelling of the
network with the same weights)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motion_relevance.explain import canonize
from motion_relevance.explain import canonize_trace as ct
from motion_relevance.explain.canonize_trace import CanonizationError, canonized
from motion_relevance.explain.explainers import DeepTaylor, GradCAM, GuidedBackprop, GuidedGradCAM
from motion_relevance.models.layers import Add, Concat, GateMul

LOW, HIGH = -1.0, 1.0


def clips(batch: int = 2, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 4, 8, 8, generator=g) * 2 - 1


# --------------------------------------------------------------------------------- network 1: functional


class UserBlock(nn.Module):
    """Residual block as users write it: functional ReLUs, ``+=`` and ``torch.relu``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, padding=1)
        self.conv2 = nn.Conv3d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        out = self.conv2(h)
        out += x
        return torch.relu(out)


class UserNet(nn.Module):
    def __init__(self, c: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, c, 3, padding=1)
        self.layer1 = nn.Sequential(UserBlock(c), UserBlock(c))
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.stem(x).relu())
        return self.fc(F.adaptive_avg_pool3d(x, 1).flatten(1))


class RefBlock(nn.Module):
    """The same block written with modules: one nn.ReLU per place and models.layers.Add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv3d(c, c, 3, padding=1)
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu2(self.add(self.conv2(self.relu1(self.conv1(x))), x))


class RefNet(nn.Module):
    def __init__(self, c: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(RefBlock(c), RefBlock(c))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.layer1(self.relu(self.stem(x))))))


# ------------------------------------------------------------------ network 2: torchvision's BasicBlock style


class TVBlock(nn.Module):
    """Written like torchvision's ResNet BasicBlock: one ``self.relu`` (in place) called twice, ``out += identity``,
    BatchNorm after each conv, a downsampling shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(TVBlock(4, 4), TVBlock(4, 6, stride=2))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.stem(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class RefTVBlock(TVBlock):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(cin, cout, stride)
        self.relu = nn.ReLU()
        self.relu_out = nn.ReLU()
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu_out(self.add(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))), identity))


class RefTVNet(TVNet):
    def __init__(self, classes: int = 5) -> None:
        super().__init__(classes)
        self.stem[2] = nn.ReLU()
        self.layer1 = nn.Sequential(RefTVBlock(4, 4), RefTVBlock(4, 6, stride=2))
        self.flatten = nn.Flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(self.layer1(self.stem(x)))))


def _randomise_batchnorm(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def pair(kind: str) -> tuple[nn.Module, nn.Module]:
    """(user's spelling, module spelling) of one network with the same weights."""
    torch.manual_seed(0)
    user, ref = (UserNet(), RefNet()) if kind == "functional" else (TVNet(), RefTVNet())
    _randomise_batchnorm(user)
    assert list(user.state_dict()) == list(ref.state_dict())  # parameter-free modules hold no keys
    ref.load_state_dict(user.state_dict())
    return user.eval(), ref.eval()


def snapshot(model: nn.Module) -> dict:
    return {
        "modules": [(n, id(m), type(m)) for n, m in model.named_modules(remove_duplicate=False)],
        "params": [(n, id(p), p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()],
        "buffers": [(n, b.clone()) for n, b in model.named_buffers()],
        "training": [m.training for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "dicts": [sorted(vars(m)) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("modules", "training", "inplace", "dicts"):
        assert after[key] == before[key], key
    for (n, i, g, v), (n2, i2, g2, v2) in zip(before["params"], after["params"]):
        assert (n, i, g) == (n2, i2, g2) and torch.equal(v, v2)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(before["buffers"], after["buffers"]))
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert "forward" not in vars(m) and not hasattr(type(m), "_canonized_from")


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["functional", "torchvision"])
def test_same_logits_keys_and_shared_storage(kind: str) -> None:
    user, ref = pair(kind)
    x = clips()
    before = snapshot(user)
    work = canonize(user, x)
    assert torch.equal(work(x), user(x)) and torch.equal(work(x), ref(x))
    assert list(work.state_dict()) == list(user.state_dict())
    ptrs = {k: v.data_ptr() for k, v in user.state_dict().items()}
    assert all(v.data_ptr() == ptrs[k] for k, v in work.state_dict().items())  # shared, not cloned
    assert_unchanged(user, before)


def test_every_place_gets_its_own_module() -> None:
    user, _ = pair("torchvision")
    record = canonized(user, clips())
    work = dict(record.model.named_modules())
    # the shared in-place self.relu: one non-in-place nn.ReLU per call; += is an Add module
    for block in ("layer1.0", "layer1.1"):
        relus = [n for n, m in work.items() if n.startswith(block + ".relu") and isinstance(m, nn.ReLU)]
        assert len(relus) == 2 and len({id(work[n]) for n in relus}) == 2
        assert not any(work[n].inplace for n in relus)
        assert isinstance(work[f"{block}.add"], Add)
    assert not work["stem.2"].inplace
    assert "layer1.0.relu_1" in record.added and "TVBlock" not in record.added["layer1.0.add"]
    line = inspect.getsourcelines(TVBlock.forward)[1] + 6  # `out += identity`
    assert record.added["layer1.0.add"].startswith("+ at ") and f"test_canonize_trace.py:{line}" in \
        record.added["layer1.0.add"]


@pytest.mark.parametrize("kind", ["functional", "torchvision"])
def test_relevance_equals_the_module_spelling(kind: str) -> None:
    user, ref = pair(kind)
    x = clips()
    before = snapshot(user)
    for explainer in (DeepTaylor(LOW, HIGH), GuidedBackprop(), GuidedGradCAM(layer="layer1")):
        got, want = explainer(user, x), explainer(ref, x)
        assert want.abs().sum() > 0
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale)
    # Grad-CAM finds the user's layer names (no rewrite needed)
    torch.testing.assert_close(GradCAM(layer="layer1")(user, x), GradCAM(layer="layer1")(ref, x))
    assert_unchanged(user, before)


def test_dtd_conserves_the_logit_on_a_canonized_bias_free_net() -> None:
    torch.manual_seed(3)
    user = TVNet().eval()
    _randomise_batchnorm(user)
    x = clips()
    r = DeepTaylor(LOW, HIGH)(user, x)
    logits = user(x).gather(1, user(x).argmax(1, keepdim=True)).squeeze(1)
    # BatchNorm shifts make biases, which absorb some relevance: the sum is near the logit, not equal
    assert torch.isfinite(r).all() and r.flatten(1).sum(1).shape == logits.shape


def test_canonization_runs_once_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    user, _ = pair("functional")
    x = clips()
    calls = []
    real = ct._canonize
    monkeypatch.setattr(ct, "_canonize", lambda *a, **k: calls.append(1) or real(*a, **k))
    explainer = DeepTaylor(LOW, HIGH)
    first = explainer(user, x)
    explainer(user, x)
    GuidedBackprop()(user, x)
    assert len(calls) == 1
    with torch.no_grad():
        user.fc.weight.mul_(2.0)  # a new parameter version: canonized again, relevance follows the weights
    second = explainer(user, x)
    assert len(calls) == 2 and not torch.allclose(first, second)


def test_canonize_false_keeps_the_refusal() -> None:
    user, _ = pair("functional")
    with pytest.raises(ValueError, match="functional ReLU"):
        DeepTaylor(LOW, HIGH, canonize=False)(user, clips())
    with pytest.raises(ValueError, match="functional ReLU"):
        GuidedBackprop(canonize=False)(user, clips())


class ControlFlow(UserNet):
    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            x = -x
        return self.fc(F.relu(F.adaptive_avg_pool3d(self.layer1(self.stem(x)), 1).flatten(1)))


def test_data_dependent_control_flow_gives_the_tracer_error() -> None:
    model = ControlFlow().eval()
    line = inspect.getsourcelines(ControlFlow.forward)[1] + 1
    pattern = (rf"torch\.fx cannot trace ControlFlow '<model>' at \S+test_canonize_trace\.py:{line} "
               r"\(`if x\.sum\(\) > 0:`\): .*control flow.*; write that forward\(\) without Python control flow")
    with pytest.raises(CanonizationError, match=pattern) as info:
        canonize(model, clips())
    assert "\n" not in str(info.value)
    before = snapshot(model)
    with pytest.raises(ValueError, match="functional ReLU.*canonization kept a module as written: " + pattern):
        DeepTaylor(LOW, HIGH)(model, clips())
    assert_unchanged(model, before)
    # the blocks inside were still rewritten
    record = canonized(model)
    assert "layer1.0.add" in record.added and record.notes


class ExpNet(UserNet):
    def forward(self, x: Tensor) -> Tensor:
        h = self.layer1(self.stem(x))
        h = torch.exp(h)
        return self.fc(F.adaptive_avg_pool3d(h, 1).flatten(1))


class TanhNet(UserNet):
    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.layer1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool3d(h, 1).flatten(1))


class ProductNet(UserNet):
    def forward(self, x: Tensor) -> Tensor:
        h = self.layer1(self.stem(x))
        h = h * h
        return self.fc(F.adaptive_avg_pool3d(h, 1).flatten(1))


@pytest.mark.parametrize(("cls", "offset", "what"), [
    (ExpNet, 2, r"the operation torch\.exp at "),
    (TanhNet, 1, r"Tanh, the operation torch\.tanh at "),
    (ProductNet, 2, r"the operation product \* of two input-dependent tensors, neither a sigmoid/softmax gate.* at "),
])
def test_an_operation_without_a_rule_names_the_op_and_its_line(cls, offset: int, what: str) -> None:  # type: ignore[no-untyped-def]
    model = cls().eval()
    line = inspect.getsourcelines(cls.forward)[1] + offset
    before = snapshot(model)
    with pytest.raises(TypeError, match=rf"DTD has no rule for {what}\S+test_canonize_trace\.py:{line} "):
        DeepTaylor(LOW, HIGH)(model, clips())
    assert_unchanged(model, before)
    GuidedBackprop()(model, clips())  # a gradient method needs no rule for them


class GatedNet(nn.Module):
    """Squeeze-excitation gate and a concatenation written functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.squeeze = nn.Conv3d(4, 4, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x))
        gate = torch.sigmoid(self.squeeze(F.adaptive_avg_pool3d(h, 1)))
        both = torch.cat([h * gate, h], dim=1)
        return self.fc(F.adaptive_avg_pool3d(both, 1).flatten(1))


def test_gates_and_concatenation_become_modules() -> None:
    torch.manual_seed(0)
    model = GatedNet().eval()
    x = clips()
    record = canonized(model, x)
    kinds = {type(m) for m in record.model.modules()}
    assert {GateMul, Concat, nn.Sigmoid, nn.ReLU, nn.AdaptiveAvgPool3d} <= kinds
    assert torch.equal(record.model(x), model(x))
    r = DeepTaylor(LOW, HIGH)(model, x)
    assert torch.isfinite(r).all() and r.abs().sum() > 0


def test_zoo_models_are_explained_as_before() -> None:
    from motion_relevance.models import r3d_18

    torch.manual_seed(0)
    model = r3d_18(num_classes=5, width=0.0625).eval()
    x = clips(1)
    assert DeepTaylor(LOW, HIGH)(model, x).shape == x.shape
    from motion_relevance.explain.rules import DTD
    from motion_relevance.explain.validation import analyse_model

    structure = analyse_model(model, x)
    # written with modules: nothing to canonize, the model itself is explained (no tracing, no copy)
    assert ct.prepare(model, x, structure, DTD, "DTD") == (model, structure, None)
