"""One equivalence test per shape-rule family.

Each test builds a small hand-written, fx-traceable fragment (a stem that creates the
channels, the op under test, a consumer), draws random structured masks, and checks the
DESIGN.md contract with ``assert_contract`` (slim == original-with-final-masks on fresh
inputs, final ⊇ user masks, params == what the kept indices imply). Where the masks
allow it, the slim model must also be physically smaller.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import (
    assert_contract,
    kept_reasons,
    masked_idx,
    n_params,
    random_filter_masks,
    removed_idx,
    run_eval,
)
import slimc
from slimc.verify import masked_copy

SEEDS = (0, 1)


# --------------------------------------------------------------------------- utils
@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine params and running stats on every norm layer, so that a wrong
    follower (β left in, γ sliced wrong, stats misaligned) shows up in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            pass
        else:
            continue
        if getattr(m, "weight", None) is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model


def build(cls, *args, seed: int = 0, train: bool = False, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = randomize_norms(cls(*args, **kw), seed)
    return m.train(train)


def x_(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def mask_rows(model: nn.Module, fqn: str, rows, dim: int = 0) -> torch.Tensor:
    w = dict(model.named_parameters())[fqn]
    m = torch.ones_like(w)
    m.index_fill_(dim, torch.as_tensor(list(rows), dtype=torch.long), 0.0)
    return m


def check(model: nn.Module, inputs, masks=None, *, smaller: bool = True, seed: int = 0, ratio: float = 0.5, **kw):
    """Contract + (optionally) a strictly smaller slim model."""
    if masks is None:
        masks = random_filter_masks(model, ratio, seed)
    res = assert_contract(model, masks, inputs, **kw)
    if smaller:
        assert n_params(res.module) < n_params(model), (
            f"masks allow removal but the slim model is not smaller; kept: {kept_reasons(res)}")
    return res


def slim_module(res, name: str) -> nn.Module:
    return res.module.get_submodule(name)


# --------------------------------------------------------------------------- convs
class ConvChain(nn.Module):
    def __init__(self, nd: int = 2, cin: int = 3, c1: int = 8, c2: int = 6, bias: bool = True):
        super().__init__()
        Conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
        BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]
        self.conv1 = Conv(cin, c1, 3, padding=1, bias=bias)
        self.bn1 = BN(c1)
        self.conv2 = Conv(c1, c2, 3, padding=1, bias=bias)
        self.bn2 = BN(c2)
        self.conv3 = Conv(c2, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.conv3(x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("nd,shape", [(1, (2, 3, 16)), (2, (2, 3, 8, 8)), (3, (2, 3, 5, 5, 5))], ids=["conv1d", "conv2d", "conv3d"])
def test_conv_nd(nd, shape, seed):
    m = build(ConvChain, nd, seed=seed)
    res = check(m, x_(*shape), seed=seed)
    assert slim_module(res, "conv1").out_channels == 4
    assert slim_module(res, "conv2").in_channels == 4
    assert slim_module(res, "bn1").num_features == 4


def test_conv_without_bias_and_bias_masked_too():
    m = build(ConvChain, 2, bias=False)
    check(m, x_(2, 3, 8, 8))
    m = build(ConvChain, 2, bias=True)
    check(m, x_(2, 3, 8, 8), random_filter_masks(m, 0.5, 3, bias=True))


class GroupedConv(nn.Module):
    def __init__(self, groups: int, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.gconv = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.gbn = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.gbn(self.gconv(x)))
        return self.head(x)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_random_masks(groups):
    m = build(GroupedConv, groups)
    # random masks rarely align across groups: the contract must still hold
    for seed in SEEDS:
        assert_contract(m, random_filter_masks(m, 0.5, seed), x_(2, 3, 8, 8))


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_aligned_masks(groups):
    """Masking the same in-group positions in every group removes them; groups stay aligned."""
    c = 16
    m = build(GroupedConv, groups)
    per = c // groups
    pos = [0, per - 1]  # positions inside every group
    rows = [g * per + p for g in range(groups) for p in pos]
    masks = {"stem.weight": mask_rows(m, "stem.weight", rows), "gconv.weight": mask_rows(m, "gconv.weight", rows)}
    res = check(m, x_(2, 3, 8, 8), masks)
    g = slim_module(res, "gconv")
    assert g.groups == groups
    assert g.in_channels == g.out_channels == c - len(rows)
    assert slim_module(res, "stem").out_channels == c - len(rows)
    assert removed_idx(res, m, "gconv.weight", 1) == set(pos)


def test_grouped_conv_unaligned_mask_is_kept():
    """One filter masked in one group only cannot go (groups would misalign)."""
    m = build(GroupedConv, 2)
    res = assert_contract(m, {"gconv.weight": mask_rows(m, "gconv.weight", [3])}, x_(2, 3, 8, 8))
    assert n_params(res.module) == n_params(m)
    assert res.report["kept"], "a masked filter that stays must be reported"


class Depthwise(nn.Module):
    def __init__(self, mult: int, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c * mult, 3, padding=1, groups=c)
        self.dbn = nn.BatchNorm2d(c * mult)
        self.pw = nn.Conv2d(c * mult, 5, 1)

    def forward(self, x):
        x = F.relu6(self.bn(self.stem(x)))
        x = F.relu6(self.dbn(self.dw(x)))
        return self.pw(x)


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv(mult):
    m = build(Depthwise, mult)
    for seed in SEEDS:
        res = check(m, x_(2, 3, 8, 8), {"stem.weight": random_filter_masks(m, 0.5, seed)["stem.weight"]})
        dw = slim_module(res, "dw")
        assert dw.groups == dw.in_channels == 4
        assert dw.out_channels == 4 * mult
    # masking depthwise filters directly: with multiplier 1 the channel goes end to end
    res = check(m, x_(2, 3, 8, 8), {"dw.weight": mask_rows(m, "dw.weight", range(0, 2 * mult))},
                smaller=(mult == 1))
    if mult == 1:
        assert removed_idx(res, m, "stem.weight") == {0, 1}
    # random masks on everything: contract only
    assert_contract(m, random_filter_masks(m, 0.5, 7), x_(2, 3, 8, 8))


def test_depthwise_multiplier2_whole_channel():
    """With multiplier 2, masking both outputs of input channel c removes c everywhere."""
    m = build(Depthwise, 2)
    res = check(m, x_(2, 3, 8, 8), {"dw.weight": mask_rows(m, "dw.weight", [0, 1, 6, 7])})
    assert removed_idx(res, m, "stem.weight") == {0, 3}
    assert slim_module(res, "dw").out_channels == 12


class ConvT(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.up(F.relu(self.stem(x))))))


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_transpose2d(seed):
    m = build(ConvT, seed=seed)
    res = check(m, x_(2, 3, 6, 6), seed=seed)
    up = slim_module(res, "up")
    assert (up.in_channels, up.out_channels) == (4, 3)
    assert tuple(up.weight.shape[:2]) == (4, 3)


# --------------------------------------------------------------------------- linear / norms
class Linear3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_on_3d_input(seed):
    m = build(Linear3d, seed=seed)
    res = check(m, x_(2, 5, 8), seed=seed)
    assert slim_module(res, "fc1").out_features == 8
    assert slim_module(res, "fc2").in_features == 8


class BN1dOnLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("variant", ["bn1d_linear", "bn1d_conv1d", "bn2d", "bn3d"])
def test_batchnorm(variant):
    if variant == "bn1d_linear":
        m, x = build(BN1dOnLinear), x_(4, 8)
    else:
        nd = {"bn1d_conv1d": 1, "bn2d": 2, "bn3d": 3}[variant]
        m = build(ConvChain, nd)
        x = x_(*{1: (2, 3, 12), 2: (2, 3, 6, 6), 3: (2, 3, 4, 4, 4)}[nd])
    res = check(m, x)
    # every removed channel's BN affine is zeroed in the final masks (β would leak otherwise)
    bn = "bn" if variant == "bn1d_linear" else "bn1"
    src = "fc1.weight" if variant == "bn1d_linear" else "conv1.weight"
    gone = removed_idx(res, m, src)
    assert gone
    for p in ("weight", "bias"):
        assert masked_idx(res.masks[f"{bn}.{p}"]) == gone


def test_batchnorm_train_mode_batch_statistics():
    """In train mode BN uses batch statistics: the slim model still matches."""
    m = build(ConvChain, 2, train=True)
    res = check(m, x_(2, 3, 6, 6))
    assert res.module.training
    ref = masked_copy(m, res.masks).train()
    x = x_(4, 3, 6, 6, seed=5)
    with torch.no_grad():
        a, b = res.module(x), ref(x)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


class GNNet(nn.Module):
    def __init__(self, groups: int = 4, c: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.gn = nn.GroupNorm(groups, c)
        self.conv2 = nn.Conv2d(c, 6, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.gn(self.conv1(x))))


def test_groupnorm_half_group_removes_nothing():
    m = build(GNNet)
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 1])}, x_(2, 3, 6, 6))
    assert removed_idx(res, m, "conv1.weight") == set()
    gn = slim_module(res, "gn")
    assert (gn.num_groups, gn.num_channels) == (4, 16)
    assert "GroupNorm" in kept_reasons(res)


def test_groupnorm_whole_group_shrinks_num_groups():
    m = build(GNNet)
    res = check(m, x_(2, 3, 6, 6), {"conv1.weight": mask_rows(m, "conv1.weight", [4, 5, 6, 7, 9])})
    assert removed_idx(res, m, "conv1.weight") == {4, 5, 6, 7}
    gn = slim_module(res, "gn")
    assert (gn.num_groups, gn.num_channels) == (3, 12)
    assert slim_module(res, "conv2").in_channels == 12


@pytest.mark.parametrize("seed", SEEDS)
def test_groupnorm_random_masks(seed):
    m = build(GNNet, seed=seed)
    assert_contract(m, random_filter_masks(m, 0.6, seed), x_(2, 3, 6, 6))


class INNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.inorm(self.conv1(x))))


def test_instancenorm_affine():
    m = build(INNet)
    res = check(m, x_(2, 3, 6, 6))
    assert slim_module(res, "inorm").num_features == 4


class LNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.ln(self.fc1(x))))


@pytest.mark.parametrize("seed", SEEDS)
def test_layernorm_exact_form(seed):
    m = build(LNNet, seed=seed)
    masks = {"fc1.weight": random_filter_masks(m, 0.5, seed)["fc1.weight"]}
    res = check(m, x_(2, 5, 8), masks)
    assert removed_idx(res, m, "fc1.weight") == masked_idx(masks["fc1.weight"])
    assert not any(isinstance(mod, nn.LayerNorm) and mod.normalized_shape == (16,) for mod in res.module.modules())


def test_layernorm_renorm_compiles():
    m = build(LNNet)
    masks = {"fc1.weight": random_filter_masks(m, 0.5, 0)["fc1.weight"]}
    res = slimc.compile(m, masks, x_(2, 5, 8), verify=False, renorm=True)
    assert n_params(res.module) < n_params(m)
    lns = [mod for mod in res.module.modules() if isinstance(mod, nn.LayerNorm)]
    assert lns and lns[0].normalized_shape == (8,)
    out = run_eval(res.module, (x_(3, 5, 8),))[0]
    assert out.shape == (3, 5, 4) and torch.isfinite(out).all()


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


# --------------------------------------------------------------------------- pooling / resampling
class PoolNet(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), "adaptive": nn.AdaptiveAvgPool2d(1),
                     "adaptive_max": nn.AdaptiveMaxPool2d((2, 2)), "mean": nn.Identity(), "sum": nn.Identity(),
                     "fmax": nn.Identity()}[kind]
        self.conv2 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        if self.kind == "mean":
            return self.fc(F.relu(self.conv2(x)).mean((2, 3)))
        if self.kind == "sum":
            return self.fc(F.relu(self.conv2(x)).sum((2, 3)))
        if self.kind == "fmax":
            x = F.max_pool2d(x, 2)
        x = F.relu(self.conv2(self.pool(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("kind", ["max", "avg", "adaptive", "adaptive_max", "fmax", "mean", "sum"])
def test_pooling_and_spatial_reductions(kind):
    m = build(PoolNet, kind)
    res = check(m, x_(2, 3, 8, 8))
    assert slim_module(res, "conv2").out_channels == 3
    assert slim_module(res, "fc").in_features == 3


class UpNet(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) if self.functional else self.up(x)
        return self.conv2(x)


@pytest.mark.parametrize("functional", [False, True], ids=["Upsample", "interpolate"])
def test_upsample(functional):
    m = build(UpNet, functional)
    res = check(m, x_(2, 3, 5, 5))
    assert slim_module(res, "conv2").in_channels == 4


class IdentityNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.id = nn.Identity()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.id(F.relu(self.conv1(x))).contiguous())


def test_identity():
    check(build(IdentityNet), x_(2, 3, 5, 5))


# --------------------------------------------------------------------------- reshapes
class FlattenNet(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.out = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if self.kind == "view_size":
            x = x.view(x.size(0), -1)
        elif self.kind == "view_literal":
            x = x.view(-1, 8 * 4 * 4)
        elif self.kind == "reshape_literal":
            x = x.reshape(2, 128)
        elif self.kind == "torch_flatten":
            x = torch.flatten(x, 1)
        else:
            x = self.flat(x)
        return self.out(F.relu(self.fc(x)))


@pytest.mark.parametrize("kind", ["view_size", "view_literal", "reshape_literal", "torch_flatten", "nn_flatten"])
def test_flatten_into_linear(kind):
    m = build(FlattenNet, kind)
    masks = {"conv.weight": mask_rows(m, "conv.weight", [1, 4, 6])}
    res = check(m, x_(2, 3, 4, 4), masks)
    assert slim_module(res, "fc").in_features == 5 * 16
    # the columns that go are exactly the flattened features of the removed channels
    assert removed_idx(res, m, "fc.weight", 1) == {c * 16 + k for c in (1, 4, 6) for k in range(16)}
    check(m, x_(2, 3, 4, 4), seed=3)


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


# --------------------------------------------------------------------------- cat / split / chunk / shuffle
class CatSplit(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 10, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        if kind != "cat":
            self.p = nn.Conv2d(6 if kind == "split" else 8, 5, 1)
            self.q = nn.Conv2d(10 if kind == "split" else 8, 5, 1)
        self.head = nn.Conv2d(16 if kind == "cat" else 10, 4, 1)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        if self.kind == "cat":
            return self.head(y)
        if self.kind == "split":
            u, v = torch.split(y, [6, 10], dim=1)
        elif self.kind == "chunk":
            u, v = y.chunk(2, dim=1)
        else:
            u, v = torch.chunk(y, 2, 1)
        return self.head(torch.cat([self.p(u), self.q(v)], 1))


@pytest.mark.parametrize("kind", ["cat", "split", "chunk", "torch_chunk"])
def test_cat_split_chunk(kind):
    m = build(CatSplit, kind)
    x = x_(2, 3, 5, 5)
    masks = {"a.weight": mask_rows(m, "a.weight", [0, 5]), "b.weight": mask_rows(m, "b.weight", [1, 2, 9])}
    res = check(m, x, masks)
    assert removed_idx(res, m, "bn.weight") == {0, 5, 6 + 1, 6 + 2, 6 + 9}
    if kind == "cat":
        assert removed_idx(res, m, "head.weight", 1) == {0, 5, 7, 8, 15}
    elif kind == "split":
        assert removed_idx(res, m, "p.weight", 1) == {0, 5}
        assert removed_idx(res, m, "q.weight", 1) == {1, 2, 9}
    else:  # chunk(2): halves of 8
        assert removed_idx(res, m, "p.weight", 1) == {0, 5, 7}
        assert removed_idx(res, m, "q.weight", 1) == {0, 7}
    for seed in SEEDS:
        check(m, x, seed=seed)


class Shuffle(nn.Module):
    def __init__(self, groups: int = 2, c: int = 8, hw: int = 4):
        super().__init__()
        self.g, self.c, self.hw = groups, c, hw
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        n = x.size(0)
        x = x.view(n, self.g, self.c // self.g, self.hw, self.hw)
        x = torch.transpose(x, 1, 2).contiguous()
        x = x.view(n, -1, self.hw, self.hw)
        return self.conv2(x)


def test_channel_shuffle_whole_group_goes():
    m = build(Shuffle)  # channel c = h * 4 + d  →  after shuffle c' = d * 2 + h
    res = check(m, x_(2, 3, 4, 4), {"conv1.weight": mask_rows(m, "conv1.weight", [4, 5, 6, 7])})
    assert removed_idx(res, m, "conv1.weight") == {4, 5, 6, 7}
    assert removed_idx(res, m, "conv2.weight", 1) == {1, 3, 5, 7}


def test_channel_shuffle_same_position_in_every_group_goes():
    m = build(Shuffle)
    res = check(m, x_(2, 3, 4, 4), {"conv1.weight": mask_rows(m, "conv1.weight", [1, 5])})
    assert removed_idx(res, m, "conv1.weight") == {1, 5}
    assert removed_idx(res, m, "conv2.weight", 1) == {2, 3}


def test_channel_shuffle_non_rectangle_is_kept():
    m = build(Shuffle)
    # masked (h, d): (0,1) (1,1) (1,0) → d=1 goes in both groups; (1,0) alone would break
    # the rectangle {0,1} × {0,2,3}, so it stays (masked, zero) and is reported
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [1, 5, 4])}, x_(2, 3, 4, 4))
    assert removed_idx(res, m, "conv1.weight") == {1, 5}
    assert "rectangle" in kept_reasons(res)
    assert masked_idx(res.masks["conv1.weight"]) == {1, 4, 5}
    for seed in SEEDS:
        assert_contract(m, random_filter_masks(m, 0.5, seed), x_(2, 3, 4, 4))


class SE(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Linear(c, 4)
        self.fc2 = nn.Linear(4, c)
        self.conv2 = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return self.conv2(x * s.unsqueeze(-1).unsqueeze(-1))


def test_se_gating():
    m = build(SE)
    x = x_(2, 3, 5, 5)
    res = check(m, x, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3, 4])})
    # the gate needs no mask of its own: fc2 rows and fc1 columns of the channel go too
    assert removed_idx(res, m, "fc2.weight") == {0, 3, 4}
    assert removed_idx(res, m, "fc1.weight", 1) == {0, 3, 4}
    assert slim_module(res, "conv2").in_channels == 5
    # masking the gate's producer only: sigmoid(β) ≠ 0, so the channel must stay
    res = assert_contract(m, {"fc2.weight": mask_rows(m, "fc2.weight", [1])}, x)
    assert removed_idx(res, m, "conv1.weight") == set()
    for seed in SEEDS:
        check(m, x, seed=seed)


# --------------------------------------------------------------------------- barriers
class ChannelMix(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        if self.kind == "softmax":
            x = torch.softmax(x, dim=1)
        elif self.kind == "F.softmax":
            x = F.softmax(x, 1)
        elif self.kind == "mean1":
            x = x - x.mean(1, keepdim=True)
        elif self.kind == "mean1_gate":
            x = x * x.mean(1).unsqueeze(1)
        elif self.kind == "sum1":
            x = x * torch.sum(x, dim=1, keepdim=True).sigmoid()
        elif self.kind == "sigmoid_mean1":
            x = torch.sigmoid(x)
            x = x - x.mean(1, keepdim=True)
        elif self.kind == "amax1":
            x = x - x.amax(1, keepdim=True)
        elif self.kind == "cumsum":
            x = torch.cumsum(x, dim=1)
        elif self.kind == "fft":
            x = torch.fft.fft(x, dim=1).abs()
        return self.conv2(x)


@pytest.mark.parametrize("kind", ["mean1", "mean1_gate", "sum1"])
def test_mean_or_sum_over_channels_is_exact(kind):
    """A mean over channels reads every channel: removed ones must be zero at its input,
    and the mean is rewritten to divide by the original count (RMSNorm, channels-first LN)."""
    m = build(ChannelMix, kind)
    rows = [0, 2, 3]
    masks = {"conv1.weight": mask_rows(m, "conv1.weight", rows), "conv1.bias": mask_rows(m, "conv1.bias", rows)}
    res = assert_contract(m, masks, x_(2, 3, 5, 5))
    assert removed_idx(res, m, "conv1.weight") == set(rows)
    # exact mode with the bias left in: relu(bias) is what the mean reads, so nothing goes
    res = assert_contract(m, {"conv1.weight": masks["conv1.weight"]}, x_(2, 3, 5, 5), mode="exact")
    assert removed_idx(res, m, "conv1.weight") == set()


def test_mean_over_channels_that_are_not_zero_keeps_them():
    m = build(ChannelMix, "sigmoid_mean1")  # sigmoid(0) = 0.5: a removed channel would shift the mean
    rows = [0, 2, 3]
    masks = {"conv1.weight": mask_rows(m, "conv1.weight", rows), "conv1.bias": mask_rows(m, "conv1.bias", rows)}
    res = assert_contract(m, masks, x_(2, 3, 5, 5))
    assert removed_idx(res, m, "conv1.weight") == set()
    assert "sums over dim 1" in kept_reasons(res)


@pytest.mark.parametrize("kind", ["softmax", "F.softmax", "amax1", "cumsum", "fft"])
def test_channel_mixing_is_a_barrier(kind):
    m = build(ChannelMix, kind)
    masks = {"conv1.weight": mask_rows(m, "conv1.weight", [0, 2, 3]), "conv1.bias": mask_rows(m, "conv1.bias", [0, 2, 3])}
    res = assert_contract(m, masks, x_(2, 3, 5, 5))
    assert removed_idx(res, m, "conv1.weight") == set()
    assert removed_idx(res, m, "conv2.weight", 1) == set()
    assert n_params(res.module) == n_params(m)
    assert "barrier" in kept_reasons(res)


@pytest.mark.parametrize("kind,needle", [("cumsum", "cumsum"), ("fft", "fft")])
def test_op_without_rule_is_reported(kind, needle):
    m = build(ChannelMix, kind)
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [1, 2])}, x_(2, 3, 5, 5))
    rows = [b for b in res.report["barriers"] if needle in b["op"] or needle in b["node"]]
    assert rows, res.report["barriers"]
    assert needle in rows[0]["reason"] and len(rows[0]["reason"]) > 10
    assert removed_idx(res, m, "conv1.weight") == set()


def test_barrier_only_stops_its_own_channels():
    """A barrier after conv2 must not freeze conv1's channels, which conv2 consumes."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 6, 1)
            self.conv3 = nn.Conv2d(6, 4, 1)

        def forward(self, x):
            return self.conv3(torch.cumsum(self.conv2(F.relu(self.conv1(x))), 1))

    m = build(Net)
    res = check(m, x_(2, 3, 5, 5), {"conv1.weight": mask_rows(m, "conv1.weight", [0, 1]),
                                    "conv2.weight": mask_rows(m, "conv2.weight", [0])})
    assert removed_idx(res, m, "conv1.weight") == {0, 1}
    assert removed_idx(res, m, "conv2.weight") == set()


# --------------------------------------------------------------------------- indexing
class Index(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d({"channel_slice": 4, "channel_step": 4}.get(kind, 8), 4, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        if self.kind == "crop":
            y = y[:, :, 1:-1, 1:-1]
        elif self.kind == "ellipsis":
            y = y[..., 1:]
        elif self.kind == "none_squeeze":
            y = y[:, None].squeeze(1)
        elif self.kind == "spatial_int":
            y = y[:, :, 0].unsqueeze(2)
        elif self.kind == "channel_step":
            y = y[:, ::2]
        else:
            y = y[:, 2:6]
        return self.conv2(y)


@pytest.mark.parametrize("kind", ["crop", "ellipsis", "none_squeeze", "spatial_int"])
def test_spatial_indexing_leaves_channels_free(kind):
    m = build(Index, kind)
    res = check(m, x_(2, 3, 5, 5), {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3])})
    assert removed_idx(res, m, "conv1.weight") == {0, 3}


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_channel_slice_is_an_offset(front_end):
    """y[:, 2:6]: channel 3 (masked) goes at offset 1 of the slice; channels the slice never
    reads (0, 1, 6, 7) go too; the slice bounds move to where the kept ones lie. The user's
    class holds the bounds as literals: it cannot follow, and the report names the line."""
    m = build(Index, "channel_slice")
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3])}, x_(2, 3, 5, 5),
                          front_end=front_end)
    assert removed_idx(res, m, "conv1.weight") == {0, 1, 3, 6, 7}
    assert removed_idx(res, m, "conv2.weight", dim=1) == {1}
    assert res.module.get_parameter("conv2.weight").shape[1] == 3
    assert res.model is None
    assert "y[:, 2:6]" in res.report["user_model"]["reason"]


def test_stepped_channel_slice_is_a_barrier():
    m = build(Index, "channel_step")
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3])}, x_(2, 3, 5, 5))
    assert removed_idx(res, m, "conv1.weight") == set()
    assert "barrier" in kept_reasons(res)


# --------------------------------------------------------------------------- API errors
def test_compile_argument_errors():
    m = build(ConvChain, 2)
    x = x_(2, 3, 5, 5)
    with pytest.raises(slimc.PlanError, match="mode"):
        slimc.compile(m, {}, x, mode="bogus")
    with pytest.raises(slimc.SlimcError, match="example_inputs"):
        slimc.compile(m, {})
    with pytest.raises(slimc.SlimcError, match="nn.Module"):
        slimc.compile(lambda t: t, {}, x)
    with pytest.raises(slimc.TraceError):
        slimc.compile(m, {}, x, front_end="bogus")


# --------------------------------------------------------------------------- known bugs
class FlattenTwoFree(nn.Module):
    """conv channels (8) × linear features (6) flattened together into a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(25, 6)
        self.head = nn.Linear(8 * 6, 3)

    def forward(self, x):
        y = F.relu(self.conv(x)).view(2, 8, 25)
        y = F.relu(self.fc(y))
        return self.head(y.flatten(1))


def test_flatten_of_two_free_dims_is_exact():
    m = build(FlattenTwoFree)
    for masks in ({"conv.weight": mask_rows(m, "conv.weight", [0, 1, 3])},
                  {"fc.weight": mask_rows(m, "fc.weight", [0, 5])}):
        assert_contract(m, masks, x_(2, 3, 5, 5))


@pytest.mark.parametrize("which", ["whole_channels", "same_feature_in_every_channel"])
def test_flatten_of_two_free_dims_removes_whole_rows(which):
    m = build(FlattenTwoFree)
    if which == "whole_channels":  # (c, f) for c in {0, 1, 3}, every f: a whole 'head'
        masks = {"conv.weight": mask_rows(m, "conv.weight", [0, 1, 3])}
        want = ("conv.weight", {0, 1, 3}, 5 * 6)
    else:  # f in {0, 5} for every c: 'the same d in every head'
        masks = {"fc.weight": mask_rows(m, "fc.weight", [0, 5])}
        want = ("fc.weight", {0, 5}, 8 * 4)
    res = assert_contract(m, masks, x_(2, 3, 5, 5))
    fqn, rows, head_in = want
    assert removed_idx(res, m, fqn) == rows, kept_reasons(res)
    assert slim_module(res, "head").in_features == head_in


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.b.weight = self.a.weight  # one Parameter, two modules
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.b(F.relu(self.a(self.stem(x)))))


def test_tied_weights():
    m = build(Tied)
    masks = {"a.weight": mask_rows(m, "a.weight", [0, 1])}
    res = slimc.compile(m, masks, x_(2, 3, 5, 5))  # verify=True
    assert res.report["verify"]["ok"]
    assert res.module.a.weight is res.module.b.weight
    assert_contract(m, masks, x_(2, 3, 5, 5))


def test_layernorm_renorm_with_verify_is_reported_approximate():
    m = build(LNNet)
    masks = {"fc1.weight": random_filter_masks(m, 0.5, 0)["fc1.weight"]}
    res = slimc.compile(m, masks, x_(2, 5, 8), renorm=True)  # verify=True
    assert res.report["verify"]["max_abs_diff"] > 0
    assert "approximate" in str(res.report).lower()


def test_barrier_report_points_at_user_source():
    m = build(ChannelMix, "cumsum")
    res = slimc.compile(m, {}, x_(2, 3, 5, 5))
    row = next(b for b in res.report["barriers"] if "cumsum" in b["op"])
    assert "torch.cumsum(x, dim=1)" in row["source"], row["source"]


class NoAffineNorms(nn.Module):
    """Norm layers whose sizes no parameter carries: GroupNorm/LayerNorm/InstanceNorm without affine."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8, affine=False)
        self.inorm = nn.InstanceNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.fc1 = nn.Linear(6, 12)
        self.ln = nn.LayerNorm(12, elementwise_affine=False)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        y = self.c2(F.relu(self.inorm(self.gn(self.c1(x)))))
        return self.fc2(self.ln(self.fc1(y.mean((2, 3)))))


def test_norms_without_affine_are_resized():
    torch.manual_seed(0)
    m = NoAffineNorms().eval()
    wm = torch.ones(8, 3, 3, 3)
    wm[:2] = 0  # one whole GroupNorm group (channels 0, 1)
    bm = torch.ones(8)
    bm[:2] = 0
    fm = torch.ones(12, 6)
    fm[:4] = 0
    fb = torch.ones(12)
    fb[:4] = 0
    res = assert_contract(m, {"c1.weight": wm, "c1.bias": bm, "fc1.weight": fm, "fc1.bias": fb}, x_(2, 3, 6, 6))
    gn = slim_module(res, "gn")
    assert (gn.num_groups, gn.num_channels) == (3, 6)
    assert slim_module(res, "c1").out_channels == 6 and slim_module(res, "fc1").out_features == 8


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


class SubPixel(nn.Module):
    """ESPCN-style upsampler (PixelShuffle) and its inverse (PixelUnshuffle)."""

    def __init__(self, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.conv1 = nn.Conv2d(3, 8 if inverse else 32, 3, padding=1)
        self.shuffle = nn.PixelUnshuffle(2) if inverse else nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(32 if inverse else 8, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.shuffle(self.conv1(x))))


def test_pixel_shuffle_removes_whole_output_channels():
    m = build(SubPixel)
    whole = [4 * c + k for c in (1, 5) for k in range(4)]  # all 4 sub-pixels of output channels 1 and 5
    masks = {"conv1.weight": mask_rows(m, "conv1.weight", whole), "conv1.bias": mask_rows(m, "conv1.bias", whole)}
    res = assert_contract(m, masks, x_(2, 3, 6, 6))
    assert removed_idx(res, m, "conv1.weight") == set(whole)
    assert removed_idx(res, m, "conv2.weight", 1) == {1, 5}
    part = [4, 5]  # half of output channel 1: kept
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", part)}, x_(2, 3, 6, 6))
    assert removed_idx(res, m, "conv1.weight") == set()


def test_pixel_unshuffle_removes_its_r2_channels():
    m = build(SubPixel, inverse=True)
    masks = {"conv1.weight": mask_rows(m, "conv1.weight", [2, 6]), "conv1.bias": mask_rows(m, "conv1.bias", [2, 6])}
    res = assert_contract(m, masks, x_(2, 3, 6, 6))
    assert removed_idx(res, m, "conv2.weight", 1) == {4 * c + k for c in (2, 6) for k in range(4)}
