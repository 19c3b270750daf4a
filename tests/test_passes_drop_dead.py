"""passes/drop_dead.py: nodes whose results nothing uses any more are removed."""
from __future__ import annotations

import torch
from torch import fx, nn

from slimc.passes import RewriteContext
from slimc.passes.drop_dead import run


class Dead(nn.Module):
    def forward(self, x):
        unused = x * 2  # noqa: F841
        return x + 1


def test_dead_nodes_go_and_the_graph_lints():
    gm = fx.symbolic_trace(Dead())
    n_before = len(gm.graph.nodes)
    res = run(gm, RewriteContext(plan=None))
    assert res.modified and len(res.gm.graph.nodes) == n_before - 1
    res.gm.graph.lint()
    res.gm.recompile()
    assert torch.equal(res.gm(torch.ones(2)), torch.full((2,), 2.0))
    assert not run(res.gm, RewriteContext(plan=None)).modified
