"""Remove nodes whose results are no longer used."""
from __future__ import annotations

from torch import fx

from slimc.passes.context import PassResult, RewriteContext


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    modified = gm.graph.eliminate_dead_code()
    return PassResult(gm, bool(modified))
