"""Tests for the model zoo (slimc.zoo)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.fx
from torch import nn

from slimc import zoo

ALL = zoo.names()

EXPECTED_OUT = {name: (2, 10) for name in ALL}
EXPECTED_OUT["unet_small"] = (2, 2, 32, 32)

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
    expected = {
        "vgg16", "vgg11_small", "resnet18", "resnet50", "resnet_tiny",
        "mobilenetv2", "mobilenetv2_small", "densenet_small",
        "shufflenetv2_small", "senet_small", "unet_small",
    }
    assert set(ALL) == expected
    assert zoo.names("cnn") == ALL
    assert zoo.names("no-such-family") == []
    for name, entry in zoo.ZOO.items():
        assert entry.name == name
        assert entry.family == "cnn"
    with pytest.raises(KeyError):
        zoo.build("no-such-model")


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", sorted(GOLDEN_PARAMS))
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
