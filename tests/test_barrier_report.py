"""The barriers a compile reports say whether they hold channels: an op without a rule over a
layer's channels may keep what the masks remove (shown in the summary); one over positions or
a mask computed from the input touches no channel (counted in one line, listed in report.json)."""
from __future__ import annotations

import io

import torch
from rich.console import Console
from torch import nn

from helpers import assert_contract
from slimc.report import render


class TwoBarriers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.e, self.f = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x, keep):
        h = self.a(x)
        gate = (torch.cumsum(keep, dim=1) > 0).float()[:, None, None, :]  # integer positions: no channel
        y = torch.cumsum(self.c(h), dim=1)  # over the channels: holds c's
        return self.e(self.d(h) * gate) + self.f(y)


def test_a_barrier_over_positions_holds_no_channel_and_is_counted_not_tabled():
    m = TwoBarriers().eval()
    x = (torch.randn(2, 3, 5, 6), torch.randint(0, 2, (2, 6)))
    rows = torch.ones(8, 1, 1, 1)
    rows[[1, 4]] = 0
    res = assert_contract(m, {"c.weight": rows, "d.weight": rows.clone()}, x)
    holds = {b["node"]: b["holds_channels"] for b in res.report["barriers"]}
    assert holds == {"cumsum": False, "cumsum_1": True}, res.report["barriers"]
    assert res.model.c.out_channels == 8 and res.model.d.out_channels == 6  # the channel barrier keeps c's

    buf = io.StringIO()
    render(res.report, Console(file=buf, width=200))
    out = buf.getvalue()
    assert "unsupported ops (barriers)" in out and "cumsum_1" in out
    assert "│ cumsum " not in out and "1 op(s) without a rule touch no channel of a layer" in out, out
