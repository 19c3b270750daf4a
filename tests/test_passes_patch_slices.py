"""passes/patch_slices.py: a slice along a dim that lost channels picks the kept ones of
its range: each bound becomes the count of kept positions before it."""
from __future__ import annotations

import operator

from torch import nn

from helpers import assert_contract, build, mask_rows, run_pass, x_


class Halves(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a = nn.Conv2d(4, 2, 1)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.a(y[:, :4]) + self.b(y[:, 4:])


def test_slice_bounds_move_to_the_kept_channels():
    m = build(Halves)
    masks = {"stem.weight": mask_rows(m, "stem.weight", [1, 2, 6])}
    res, ctx = run_pass("patch_slices", m, masks, (x_(1, 3, 4, 4),))
    items = [n.args[1] for n in res.gm.graph.nodes if n.target is operator.getitem]
    bounds = sorted((it[1].start, it[1].stop) for it in items)
    assert bounds == [(0, 2), (2, None)]  # kept [0, 3 | 4, 5, 7]: 2 before the cut at 4
    assert any(ev.kind == "slice" for ev in ctx.events)
    assert_contract(m, masks, (x_(1, 3, 4, 4),))
