"""Convolutions: plain, grouped, depthwise, transposed (shape_rules/conv.py). Each: a small
fragment, random structured masks, ``helpers.assert_contract``."""
from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch import nn

from helpers import ConvChain, SEEDS, assert_contract, build, check
from helpers import mask_rows, n_params, random_filter_masks, removed_idx, slim_module, x_


# --------------------------------------------------------------------------- convs
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
