"""passes/exact_mean.py: a mean over a dim that lost channels still divides by the
original count (the reference averages the removed channels as zeros)."""
from __future__ import annotations

import operator

import torch
from torch import nn

from helpers import assert_contract, mask_rows, run_pass


class ChannelMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y) * y.mean(1, keepdim=True)


def test_mean_becomes_sum_over_the_original_count():
    torch.manual_seed(0)
    m = ChannelMean().eval()
    masks = {"conv.weight": mask_rows(m, "conv.weight", [2, 5]), "conv.bias": mask_rows(m, "conv.bias", [2, 5])}
    x = (torch.randn(1, 3, 4, 4),)
    res, ctx = run_pass("exact_mean", m, masks, x)
    assert res.modified
    assert any(n.target is operator.truediv or "div" in str(n.target) for n in res.gm.graph.nodes)
    assert any(ev.kind == "mean" for ev in ctx.events)
    assert_contract(m, masks, x)
