"""temporal_share on transformers' ViViT (joint space-time attention over a class token and tubelet tokens).

The reference is a hand computation (float64) of the AttnLRP rules through a two-block ViViT from the input of its
first block to the target logit, with no call into the engine, and of the per-pair flows of its attention products;
the class token is in no frame, so its pairs count in neither sum (``docs/method.md``, "How much relevance flows
through time"). Also: the run metric ``temporal_share/<method>`` of the explanation pipeline for ViViT and V-JEPA 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from motion_relevance.explain.canonize_trace import canonized  # noqa: E402
from motion_relevance.explain.explainers import AttnLRP  # noqa: E402
from motion_relevance.explain.temporal_flow import NO_FRAME, hf_token_frames, temporal_share  # noqa: E402
from motion_relevance.explain.transformer import TokenGradCAM  # noqa: E402
from motion_relevance.models import from_transformers  # noqa: E402
from motion_relevance.pipeline import ExplanationPipeline  # noqa: E402
from tests.test_hf_references import add_back, lin, lin_back, ln, ln_back, matmul_back, stab  # noqa: E402
from tests.tiny_models import bounded_clips, merge_heads, perturbed, split_heads  # noqa: E402

FRAMES, SIZE, PATCH, TUBELET, DIM, HEADS = 4, 16, 8, 2, 16, 2
EPS, LOWER, UPPER = 1e-6, -2.5, 2.5
TARGET = torch.tensor([1, 2])


def vivit(layers: int = 2, frames: int = FRAMES, double: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.VivitConfig(image_size=SIZE, tubelet_size=[TUBELET, PATCH, PATCH], num_frames=frames,
                                      num_labels=3, hidden_size=DIM, num_hidden_layers=layers,
                                      num_attention_heads=HEADS, intermediate_size=32)
    model = transformers.VivitForVideoClassification(config).eval()
    return perturbed(model, double=double)  # weights large enough that every rule sees non-trivial values


def clips(batch: int = 2, frames: int = FRAMES, dtype: torch.dtype = torch.float64) -> Tensor:
    return bounded_clips(batch, frames, SIZE, dtype)


def heads(t: Tensor) -> Tensor:
    return split_heads(t, HEADS)


merge = merge_heads


def reference(hf: nn.Module, h: Tensor, target: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits and the per-pair flows ``F[b, head, q, k] = sum_d |A[q, k] V[k, d] R_o[q, d] / (2 o[q, d] + eps)|``
    of every block's attention product, from the first block's input ``h (B, 1 + N, D)``."""
    saved = []
    x = h
    for layer in hf.vivit.layers:  # forward
        att = layer.attention
        z = ln(layer.layernorm_before, x)[0]
        q, k, v = heads(lin(att.q_proj, z)), heads(lin(att.k_proj, z)), heads(lin(att.v_proj, z))
        kt = k.transpose(-1, -2)
        scores = (q @ kt) * att.scaling
        probs = scores.float().softmax(-1).double()  # transformers runs the softmax in float32
        ctx = probs @ v
        a = lin(att.o_proj, merge(ctx))
        y = a + x
        z2 = ln(layer.layernorm_after, y)[0]
        act = layer.mlp.activation_fn(lin(layer.mlp.fc1, z2))
        m = lin(layer.mlp.fc2, act)
        saved.append(dict(x=x, z=z, q=q, kt=kt, v=v, scores=scores, probs=probs, ctx=ctx, a=a, y=y, z2=z2, act=act,
                          m=m))
        x = m + y
    e = ln(hf.vivit.layernorm, x)[0]
    logits = lin(hf.classifier, e[:, 0])
    # backward: the classifier reads the class token only
    r = torch.zeros_like(logits).scatter_(1, target.view(-1, 1), logits.gather(1, target.view(-1, 1)))
    r_e = torch.zeros_like(e)
    r_e[:, 0] = lin_back(hf.classifier, e[:, 0], r)
    r_x = ln_back(hf.vivit.layernorm, x, r_e)
    flows = []
    for layer, f in zip(reversed(hf.vivit.layers), reversed(saved)):
        att = layer.attention
        r_m, r_y = add_back(f["m"], f["y"], r_x)
        r_z2 = lin_back(layer.mlp.fc1, f["z2"], lin_back(layer.mlp.fc2, f["act"], r_m))  # GELU: unchanged
        r_y = r_y + ln_back(layer.layernorm_after, f["y"], r_z2)
        r_a, r_x = add_back(f["a"], f["x"], r_y)
        r_ctx = heads(lin_back(att.o_proj, merge(f["ctx"]), r_a))
        s = r_ctx / stab(2 * f["ctx"], EPS)
        flows.append(torch.einsum("bhqk,bhkd,bhqd->bhqk", f["probs"].abs(), f["v"].abs(), s.abs()))
        r_probs, r_v = matmul_back(f["probs"], f["v"], r_ctx)
        r_scores = f["scores"] * (r_probs - f["probs"] * r_probs.sum(-1, keepdim=True))
        r_q, r_kt = matmul_back(f["q"], f["kt"], r_scores)
        r_z = sum(lin_back(p, f["z"], merge(rr)) for p, rr in ((att.q_proj, r_q), (att.k_proj, r_kt.transpose(-1, -2)),
                                                                (att.v_proj, r_v)))
        r_x = r_x + ln_back(layer.layernorm_before, f["x"], r_z)
    return logits, flows[::-1]


def share_of(flows: list[Tensor], frames: Tensor) -> Tensor:
    valid = (frames.view(-1, 1) != NO_FRAME) & (frames.view(1, -1) != NO_FRAME)
    cross = valid & (frames.view(-1, 1) != frames.view(1, -1))
    return sum(f[..., cross].sum((1, 2)) for f in flows) / sum(f[..., valid].sum((1, 2)) for f in flows)


def block_input(net: nn.Module, x: Tensor) -> Tensor:
    work = canonized(net, probe=x).model
    got: dict[str, Tensor] = {}

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        got["h"] = args[0].detach()

    handle = work.hf.vivit.layers[0].register_forward_pre_hook(before)
    try:
        with torch.no_grad():
            work(x)
    finally:
        handle.remove()
    return got["h"]


def test_vivit_frames_put_the_class_token_in_no_frame() -> None:
    net, x = from_transformers(vivit(double=False)), clips(dtype=torch.float32)
    frames = hf_token_frames(net, x)
    assert list(frames) == [f"hf.vivit.layers.{i}.attention.matmul_1" for i in range(2)]
    query, key = frames["hf.vivit.layers.0.attention.matmul_1"]
    assert query.tolist() == key.tolist() == [NO_FRAME, 0, 0, 0, 0, 1, 1, 1, 1]  # (T', H', W') = (2, 2, 2)


def test_vivit_temporal_share_equals_the_hand_computed_flows() -> None:
    hf = vivit()
    net, x = from_transformers(hf), clips()
    share = temporal_share(net, x, TARGET)
    h = block_input(net, x)
    with torch.no_grad():
        logits, flows = reference(hf, h, TARGET)
        torch.testing.assert_close(logits, net(x), rtol=1e-6, atol=1e-9)
    n = h.shape[1] - 1
    frames = torch.cat((torch.tensor([NO_FRAME]), torch.arange(n) // ((SIZE // PATCH) ** 2)))
    want = share_of(flows, frames)
    assert share.shape == (2,) and bool(((share > 0.05) & (share < 0.95)).all())
    torch.testing.assert_close(share.double(), want, rtol=1e-5, atol=1e-7)
    # the decision matters: counting the class token's pairs as cross-frame (a frame of its own) gives more
    own_frame = torch.cat((torch.tensor([99]), frames[1:]))
    assert bool((share_of(flows, own_frame) > want + 0.01).all())
    # the last block passes relevance through the class token's row only: nothing of it is counted
    last = flows[-1]
    assert float(last[:, :, 1:].abs().amax()) == 0.0 and float(last[:, :, 0].sum()) > 0


def test_vivit_temporal_share_is_zero_when_attention_cannot_cross_frames() -> None:
    net = from_transformers(vivit(frames=TUBELET, double=False))  # one tubelet in time: every patch in frame 0
    assert bool((temporal_share(net, clips(frames=TUBELET, dtype=torch.float32)) == 0).all())
    one_block = from_transformers(vivit(layers=1, double=False))  # only the class token's row carries relevance
    assert bool((temporal_share(one_block, clips(dtype=torch.float32)) == 0).all())


def _vjepa2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.VJEPA2Config(crop_size=SIZE, patch_size=PATCH, frames_per_clip=FRAMES, tubelet_size=TUBELET,
                                       hidden_size=24, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2.0,
                                       num_pooler_layers=1, pred_hidden_size=16, pred_num_hidden_layers=1,
                                       pred_num_attention_heads=2, num_labels=3)
    return transformers.VJEPA2ForVideoClassification(config).eval()


@pytest.mark.parametrize("make", [lambda: vivit(double=False), _vjepa2], ids=["vivit", "vjepa2"])
def test_pipeline_reports_temporal_share_for_vivit_and_vjepa2(make: Any) -> None:
    net, x = from_transformers(make()), clips(dtype=torch.float32)
    target = torch.tensor([0, 2])
    pipe = ExplanationPipeline({"attnlrp": AttnLRP(lower=LOWER, upper=UPPER), "token_gradcam": TokenGradCAM()},
                               sigma=None, target="label", keep_clips=0)
    pipe.start(net)
    assert pipe.temporal_share == ["attnlrp"]
    pipe.explain(net, x, target)
    values = pipe.results("test")
    want = temporal_share(net, x, target, explainer=AttnLRP(lower=LOWER, upper=UPPER)).double()
    assert values["test/temporal_share/attnlrp"] == pytest.approx(float(want.mean()), rel=1e-5)
    assert values["test/temporal_share_n/attnlrp"] == 2
    assert not any("temporal_share" in k and k.endswith("/token_gradcam") for k in values)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hf_vivit_tiny", "hf_vjepa2_tiny"])
def test_mr_explain_logs_temporal_share_on_hf_tiny_configs(tmp_path: Path, data_root: Path, model: str) -> None:
    from motion_relevance.explain_app import explain
    from motion_relevance.train import train
    from tests.conftest import TINY_DATA, compose_config

    common = [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", "logger=csv",
              "~callbacks.progress_bar", *TINY_DATA]
    train_cfg = compose_config("train", [*common, f"model={model}", "callbacks=default", "trainer.max_epochs=1",
                                         "test=false"], tmp_path / "train")
    train(train_cfg)
    ckpt = Path(train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = compose_config("explain", [*common, f"ckpt_path={ckpt}", "num_clips=2", "~explainers.dtd", "~explainers.gbp",
                                     "~explainers.guided_gradcam", "~explainers.gradcam",
                                     "+explainer@explainers.attnlrp=attnlrp", "objective.method=attnlrp",
                                     "faithfulness.enabled=false", "randomization.enabled=false", "cache=none"],
                         tmp_path / "explain")
    metrics, _ = explain(cfg)
    assert 0.0 <= float(metrics["test/temporal_share/attnlrp"]) <= 1.0
    assert int(metrics["test/temporal_share_n/attnlrp"]) == 2
