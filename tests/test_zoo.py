"""Tests for the model zoo (slimc.zoo)."""

from __future__ import annotations

import functools
import operator

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from helpers import zoo_params
from slimc import zoo

ALL = zoo.names()
CNN = zoo.names("cnn")
TRANSFORMER = zoo.names("transformer")
TOKEN_MODELS = {"bert_tiny": 100, "gpt_tiny": 128, "llama_tiny": 128}  # name -> vocab
CAUSAL = ("gpt_tiny", "llama_tiny")

EXPECTED_OUT = {name: (2, 10) for name in ALL}
EXPECTED_OUT["unet_small"] = (2, 2, 32, 32)
EXPECTED_OUT["bert_tiny"] = (2, 3)
EXPECTED_OUT["gpt_tiny"] = (2, 16, 128)
EXPECTED_OUT["llama_tiny"] = (2, 16, 128)

# Exact parameter counts (CIFAR variants, 10 classes).
GOLDEN_PARAMS = {
    "vgg16": 14_990_922,  # 13 conv(+bias)+BN, Linear(512,512), Linear(512,10)
    "resnet18": 11_173_962,
    "resnet50": 23_520_842,
}


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    return zoo.build(name)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry():
    cnn = {
        "vgg16", "vgg11_small", "resnet18", "resnet50", "resnet_tiny",
        "mobilenetv2", "mobilenetv2_small", "densenet_small",
        "shufflenetv2_small", "senet_small", "unet_small",
    }
    transformer = {"vit_tiny", "bert_tiny", "gpt_tiny", "llama_tiny"}
    assert set(CNN) == cnn
    assert set(TRANSFORMER) == transformer
    assert CNN + TRANSFORMER == ALL
    assert zoo.names("no-such-family") == []
    assert zoo.names("bench") == ["vit_small", "bert_small", "gpt_small", "llama_small"]
    for name, entry in zoo.ZOO.items():
        assert entry.name == name
        assert entry.family == ("cnn" if name in cnn else "transformer" if name in transformer else "bench")
    with pytest.raises(KeyError):
        zoo.build("no-such-model")


@pytest.mark.parametrize("name", zoo_params(ALL))
def test_build_run_trace(name):
    model = _model(name)
    assert not model.training
    inputs = zoo.example_inputs(name)
    assert inputs[0].shape == (2, *zoo.ZOO[name].input_shape)
    with torch.no_grad():
        out = model(*inputs)
    assert tuple(out.shape) == EXPECTED_OUT[name]
    assert torch.isfinite(out).all()
    # The output must actually depend on the input (not just on BN constants).
    assert not torch.allclose(out[0], out[1], atol=1e-3)

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        traced_out = traced(*inputs)
    torch.testing.assert_close(traced_out, out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", zoo_params(CNN))  # the transformers have no BN: test_norms_randomized
def test_bn_randomized(name):
    bns = [m for m in _model(name).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns, "every zoo model uses BatchNorm"
    for bn in bns:
        assert bn.bias.abs().min() > 0  # non-zero beta everywhere
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
        assert bn.running_var.min() >= 0.5
        assert bn.running_mean.abs().max() > 0


def test_deterministic():
    a, b = zoo.build("resnet_tiny"), zoo.build("resnet_tiny")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        assert torch.equal(va, vb), ka
    x1, x2 = zoo.example_inputs("resnet_tiny", batch=3), zoo.example_inputs("resnet_tiny", batch=3)
    assert x1[0].shape == (3, 3, 16, 16)
    assert torch.equal(x1[0], x2[0])


@pytest.mark.parametrize("name", zoo_params(sorted(GOLDEN_PARAMS)))
def test_param_counts(name):
    n = _n_params(_model(name))
    print(f"{name}: {n:,} parameters")
    assert n == GOLDEN_PARAMS[name]


def test_structural_features():
    """The graph patterns each family is meant to exercise are present."""

    def targets(name):
        gm = torch.fx.symbolic_trace(_model(name))
        return {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")}

    assert torch.cat in targets("densenet_small")
    assert {torch.cat, torch.transpose, "chunk", "view", "contiguous"} <= targets("shufflenetv2_small")
    assert {"mean", "view", torch.sigmoid} <= targets("senet_small")
    assert torch.cat in targets("unet_small")
    mnv2 = _model("mobilenetv2_small")
    assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in mnv2.modules())
    unet = _model("unet_small")
    assert any(isinstance(m, nn.ConvTranspose2d) for m in unet.modules())
    assert any(isinstance(m, nn.Upsample) for m in unet.modules())


# --------------------------------------------------------------------------- transformers
@pytest.mark.parametrize("name", TRANSFORMER)
def test_transformer_inputs(name):
    (x,) = zoo.example_inputs(name)
    (x3,) = zoo.example_inputs(name, batch=3, seed=5)
    if name in TOKEN_MODELS:
        assert x.dtype == x3.dtype == torch.long
        assert x.shape == (2, 16) and x3.shape == (3, 16)
        assert 0 <= int(x.min()) and int(x.max()) < TOKEN_MODELS[name]
        assert len(torch.unique(x)) > 8  # not a constant sequence
    else:
        assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    assert torch.equal(x, zoo.example_inputs(name)[0])  # deterministic
    assert not torch.equal(x3[:2], x)  # the seed is used


def _perturbed(name: str, x: torch.Tensor, pos: int | None = None) -> torch.Tensor:
    """``x`` with one token (at ``pos``) changed, or images with noise added."""
    if name not in TOKEN_MODELS:
        return x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:, pos] = (y[:, pos] + 1) % TOKEN_MODELS[name]
    return y


@pytest.mark.parametrize("name", TRANSFORMER)
def test_transformer_build_trace_exact(name):
    """Builds, traces with plain fx, traced == eager, expected shape, O(1) outputs,
    deterministic across builds, and the output depends on the input."""
    model = _model(name)
    assert not model.training
    inputs = zoo.example_inputs(name)
    with torch.no_grad():
        out = model(*inputs)
    assert tuple(out.shape) == EXPECTED_OUT[name]
    assert torch.isfinite(out).all()
    rms = float(out.pow(2).mean().sqrt())
    assert 0.1 < rms < 10, rms  # normalize_scales calibrated on the entry's own inputs

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        traced_out = traced(*inputs)
    torch.testing.assert_close(traced_out, out, rtol=1e-6, atol=1e-6)
    # the traced module is not tied to the example batch size
    x5 = zoo.example_inputs(name, batch=5, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(traced(*x5), model(*x5), rtol=1e-6, atol=1e-6)

    # deterministic: a second build has identical state and outputs
    other = zoo.build(name)
    sa, sb = model.state_dict(), other.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(other(*inputs), out)

    # the output depends on the input: across the batch, and on a single changed token
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    (x,) = inputs
    with torch.no_grad():
        changed = model(_perturbed(name, x, pos=0))
    assert (changed - out).abs().max() > 1e-3


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_models_are_causal(name):
    """Changing token j changes the logits at positions >= j only."""
    model = _model(name)
    (x,) = zoo.example_inputs(name)
    j = 10
    with torch.no_grad():
        out, changed = model(x), model(_perturbed(name, x, pos=j))
    torch.testing.assert_close(changed[:, :j], out[:, :j], rtol=1e-6, atol=1e-6)
    assert (changed[:, j:] - out[:, j:]).abs().amax(dim=(0, 2)).min() > 1e-4


@pytest.mark.parametrize("name", TRANSFORMER)
def test_norms_randomized(name):
    model = _model(name)
    norms = [m for m in model.modules() if isinstance(m, zoo._NORM_TYPES)]
    assert norms, "every zoo transformer uses LayerNorm or RMSNorm"
    for m in norms:
        assert not torch.allclose(m.weight, torch.ones_like(m.weight))
        assert m.weight.min() >= 0.5
        if getattr(m, "bias", None) is not None:
            assert m.bias.abs().min() > 0


def test_transformer_structure():
    """The idioms each transformer is meant to exercise are in its fx graph."""

    def graph(name):
        return torch.fx.symbolic_trace(_model(name)).graph

    def targets(name):
        return {n.target for n in graph(name).nodes if n.op in ("call_function", "call_method")}

    vit = targets("vit_tiny")
    assert {torch.cat, "flatten", "transpose", "reshape", "permute", "unbind", "softmax", operator.matmul} <= vit
    bert = targets("bert_tiny")
    assert {"size", "narrow", torch.zeros_like, "view", "permute", "contiguous", torch.matmul, torch.tanh} <= bert
    assert any(n.op == "get_attr" and n.target == "embeddings.position_ids" for n in graph("bert_tiny").nodes)
    gpt = targets("gpt_tiny")
    assert {"size", torch.arange, "split", "view", "transpose", F.scaled_dot_product_attention} <= gpt
    llama = targets("llama_tiny")
    assert {torch.arange, torch.rsqrt, "expand", "reshape", torch.cat, F.silu, F.scaled_dot_product_attention} <= llama
    for name in TRANSFORMER:  # shapes are read from tensors (x.shape / x.size()), not hard-coded
        t = targets(name)
        assert getattr in t or "size" in t, name

    gpt_model = _model("gpt_tiny")
    assert gpt_model.transformer.wte.weight is gpt_model.lm_head.weight  # nanoGPT weight tying
    llama_model = _model("llama_tiny")
    attn = llama_model.model.layers[0].self_attn
    assert attn.k_proj.out_features * 2 == attn.q_proj.out_features  # GQA: 2 kv heads for 4 q heads
    assert llama_model.model.embed_tokens.weight is not llama_model.lm_head.weight


@pytest.mark.parametrize("name", TRANSFORMER)
def test_transformer_forward_is_small(name):
    """The zoo's transformers are tiny, so that the suite stays fast: a forward of the example
    (batch 2) costs under 100 MFLOPs (counted, not timed: timing belongs to benchmarks/)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = _model(name), zoo.example_inputs(name)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*x)
    assert 0 < fc.get_total_flops() < 100e6, f"{name}: {fc.get_total_flops() / 1e6:.1f} MFLOPs"
