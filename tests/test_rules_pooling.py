"""Pooling, spatial reductions, resampling, identity (shape_rules/pooling.py). Each: a
small fragment, random structured masks, ``helpers.assert_contract``."""
from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch import nn

from helpers import build, check, slim_module, x_


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
