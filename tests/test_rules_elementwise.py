"""Elementwise ops: activations, dropout, arithmetic (add joins, mul drops either side),
residuals, broadcast terms (shape_rules/elementwise.py). Each: a small fragment, random
structured masks, ``helpers.assert_contract``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import SEEDS, assert_contract, build, check, kept_reasons
from helpers import mask_rows, n_params, random_filter_masks, removed_idx, slim_module, x_
import slimc


# --------------------------------------------------------------------------- activations
ACTIVATIONS = {
    "relu": lambda c: nn.ReLU(), "relu6": lambda c: nn.ReLU6(), "leaky_relu": lambda c: nn.LeakyReLU(0.1),
    "elu": lambda c: nn.ELU(), "gelu": lambda c: nn.GELU(), "silu": lambda c: nn.SiLU(),
    "hardswish": lambda c: nn.Hardswish(), "sigmoid": lambda c: nn.Sigmoid(), "tanh": lambda c: nn.Tanh(),
    "prelu_single": lambda c: nn.PReLU(), "prelu_channel": lambda c: nn.PReLU(c),
    "softplus": lambda c: nn.Softplus(), "mish": lambda c: nn.Mish(),
}


class ActNet(nn.Module):
    def __init__(self, act: str, bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.act = ACTIVATIONS[act](8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act(self.bn(self.conv1(x))))


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activation(act, bn):
    m = build(ActNet, act, bn)
    if act == "prelu_channel":
        with torch.no_grad():
            m.act.weight.copy_(torch.linspace(-0.5, 0.5, 8))
    res = check(m, x_(2, 3, 6, 6))
    assert slim_module(res, "conv2").in_channels == 4
    if act == "prelu_channel":
        assert slim_module(res, "act").weight.shape == (4,)
        assert slim_module(res, "act").num_parameters == 4


class DropNet(nn.Module):
    def __init__(self, functional: bool = False):
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.drop2d = nn.Dropout2d(0.2)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.drop(F.relu(self.conv1(x)))
        if self.functional:
            x = F.dropout(x, 0.1, self.training)
        return self.conv2(self.drop2d(x))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_dropout(train):
    m = build(DropNet, train=train)
    res = check(m, x_(2, 3, 6, 6))
    assert res.module.training == train
    assert m.training == train
    # the slim module switches modes like the original: in train mode dropout is active
    res.module.train()
    x = x_(2, 3, 6, 6, seed=4)
    with torch.no_grad():
        assert not torch.equal(res.module(x), res.module(x))


def test_functional_dropout_follows_mode():
    m = build(DropNet, True, train=True)
    res = slimc.compile(m, random_filter_masks(m, 0.5, 0), x_(2, 3, 6, 6), verify=False)
    res.module.eval()
    x = x_(2, 3, 6, 6, seed=4)
    with torch.no_grad():
        a, b = res.module(x), res.module(x)
    assert torch.equal(a, b), "slim model in eval mode is not deterministic: dropout still active"


# --------------------------------------------------------------------------- arithmetic
class Binary(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = {
            "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
            "div": lambda: a / (b.abs() + 1.0), "torch_add": lambda: torch.add(a, b, alpha=2),
            "torch_mul": lambda: torch.mul(a, b), "iadd": lambda: a.add_(b),
        }[self.op]()
        return self.head(F.relu(y))


@pytest.mark.parametrize("op", ["add", "sub", "torch_add", "iadd"])
def test_additive_binary(op):
    m = build(Binary, op)
    x = x_(2, 3, 5, 5)
    rows = [0, 3, 5]
    # the same channel masked in both operands goes
    both = {"a.weight": mask_rows(m, "a.weight", rows), "b.weight": mask_rows(m, "b.weight", rows)}
    both["a.bias"] = mask_rows(m, "a.bias", rows)
    both["b.bias"] = mask_rows(m, "b.bias", rows)
    res = check(m, x, both)
    assert removed_idx(res, m, "a.weight") == set(rows) == removed_idx(res, m, "b.weight")
    # masked in one operand only: held by the other
    res = assert_contract(m, {"a.weight": mask_rows(m, "a.weight", rows)}, x)
    assert n_params(res.module) == n_params(m)
    assert "held by" in kept_reasons(res)
    # random masks on everything
    assert_contract(m, random_filter_masks(m, 0.5, 1), x)


@pytest.mark.parametrize("op", ["mul", "torch_mul"])
def test_mul_either_operand(op):
    m = build(Binary, op)
    x = x_(2, 3, 5, 5)
    res = check(m, x, {"a.weight": mask_rows(m, "a.weight", [1, 2]), "a.bias": mask_rows(m, "a.bias", [1, 2])})
    assert removed_idx(res, m, "b.weight") == {1, 2}
    res = check(m, x, {"b.weight": mask_rows(m, "b.weight", [4]), "b.bias": mask_rows(m, "b.bias", [4])})
    assert removed_idx(res, m, "a.weight") == {4}
    assert_contract(m, random_filter_masks(m, 0.5, 1), x)


def test_div_follows_numerator():
    m = build(Binary, "div")
    x = x_(2, 3, 5, 5)
    res = check(m, x, {"a.weight": mask_rows(m, "a.weight", [1, 2]), "a.bias": mask_rows(m, "a.bias", [1, 2])})
    assert removed_idx(res, m, "b.weight") == {1, 2}
    # a zero denominator channel (|0| + 1 = 1) kills nothing
    res = assert_contract(m, {"b.weight": mask_rows(m, "b.weight", [4]), "b.bias": mask_rows(m, "b.bias", [4])}, x)
    assert removed_idx(res, m, "a.weight") == set()


SCALAR_OPS = {
    "add": lambda t: t + 1.5, "radd": lambda t: 1.5 + t, "sub": lambda t: t - 0.5, "rsub": lambda t: 1.0 - t,
    "mul": lambda t: t * 2.0, "rmul": lambda t: 3.0 * t, "div": lambda t: t / 4.0, "neg": lambda t: -t,
    "pow": lambda t: t.pow(2), "clamp": lambda t: t.clamp(-0.5, 0.5), "torch_add": lambda t: torch.add(t, 2.0),
}


class ScalarNet(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(SCALAR_OPS[self.op](self.bn(self.conv1(x))))


@pytest.mark.parametrize("op", list(SCALAR_OPS))
def test_scalar_arithmetic(op):
    m = build(ScalarNet, op)
    res = check(m, x_(2, 3, 5, 5))
    assert slim_module(res, "conv2").in_channels == 4


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.c2(F.relu(self.bn1(self.c1(x)))))
        return self.head(F.relu(x + y))


def test_residual_add():
    m = build(ResidualNet)
    x = x_(2, 3, 6, 6)
    # stream channels masked in both writers go; the inner width goes on its own
    rows = [2, 5]
    masks = {"stem.weight": mask_rows(m, "stem.weight", rows), "c2.weight": mask_rows(m, "c2.weight", rows),
             "c1.weight": mask_rows(m, "c1.weight", [0, 1, 2])}
    res = check(m, x, masks)
    assert removed_idx(res, m, "stem.weight") == set(rows)
    assert removed_idx(res, m, "head.weight", 1) == set(rows)
    assert slim_module(res, "c1").out_channels == 3
    # only the branch masked: the stream channels are held by the stem
    res = assert_contract(m, {"c2.weight": mask_rows(m, "c2.weight", rows)}, x)
    assert removed_idx(res, m, "c2.weight") == set()
    assert "held by unmasked source 'stem.weight'" in kept_reasons(res)
    for seed in SEEDS:
        assert_contract(m, random_filter_masks(m, 0.5, seed), x)


# --------------------------------------------------------------------------- broadcast terms
class TokenMix(nn.Module):
    """MLP-Mixer: a Linear over the token dim, so the channels are a *leading* dim of that
    Linear and its bias lands on every channel (a removed channel is not zero after it)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.tok = nn.Linear(5, 5)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.tok(x.transpose(1, 2)).transpose(1, 2)
        return self.head(self.norm(x))


class ChannelsFirstLN(nn.Module):
    """ConvNeXt's channels-first LayerNorm written with means: x - mean is not zero where x is."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.conv1(x)
        u = x.mean(1, keepdim=True)
        v = (x - u).pow(2).mean(1, keepdim=True)
        return self.conv2((x - u) / torch.sqrt(v + 1e-6))


@pytest.mark.parametrize("cls,shape,fqn", [(TokenMix, (2, 5, 6), "embed"), (ChannelsFirstLN, (2, 3, 5, 5), "conv1")],
                         ids=["token_mix_bias", "channels_first_ln"])
def test_broadcast_term_keeps_a_channel_alive(cls, shape, fqn):
    m = build(cls)
    masks = {f"{fqn}.weight": mask_rows(m, f"{fqn}.weight", [1, 4]), f"{fqn}.bias": mask_rows(m, f"{fqn}.bias", [1, 4])}
    res = assert_contract(m, masks, x_(*shape))
    assert removed_idx(res, m, f"{fqn}.weight") == set()
    assert "not zero at its input" in kept_reasons(res)
