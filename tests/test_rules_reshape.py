"""Reshapes: flatten into a linear, flatten of two free dims, pixel (un)shuffle
(shape_rules/reshape.py). Each: a small fragment, random structured masks,
``helpers.assert_contract``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_contract, build, check, kept_reasons, mask_rows, removed_idx, slim_module, x_


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
