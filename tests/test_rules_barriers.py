"""Barriers: ops that mix channels, ops without a rule, and how barriers are reported;
argument errors of compile. Each: a small fragment, random structured masks,
``helpers.assert_contract``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import ConvChain, assert_contract, build, check, kept_reasons, mask_rows, n_params, removed_idx, x_
import slimc


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


def test_barrier_report_points_at_user_source():
    m = build(ChannelMix, "cumsum")
    res = slimc.compile(m, {}, x_(2, 3, 5, 5))
    row = next(b for b in res.report["barriers"] if "cumsum" in b["op"])
    assert "torch.cumsum(x, dim=1)" in row["source"], row["source"]
