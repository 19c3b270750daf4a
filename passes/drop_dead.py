"""Remove nodes whose results are no longer used."""
from __future__ import annotations

from torch import fx

from slimc.passes.context import PassResult, RewriteContext


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    """``Graph.eliminate_dead_code`` with the cheap test first: it asks every node whether it
    is impure (a module lookup per call_module node) before looking at its users."""
    graph, removed = gm.graph, False
    for node in reversed(graph.nodes):
        if not node.users and node.op not in ("placeholder", "output") and not node.is_impure():
            graph.erase_node(node)
            removed = True
    return PassResult(gm, removed)
