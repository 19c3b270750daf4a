"""LayerNorm over a pruned dim, kept exact.

The reference normalizes over all C channels, k of them zero. A standard LayerNorm over
C−k does not. Unless ``renorm`` is asked for, replace it by graph nodes that take mean
and variance as if the k removed channels were zeros:
    μ = Σx / C,  σ² = (Σ(x−μ)² + k·μ²) / C,  y = (x−μ)/√(σ²+ε)·γ + β
(plain torch ops, so the slim model still loads with torch alone).
"""
from __future__ import annotations

import torch
from torch import fx, nn

from slimc.passes import PassResult, RewriteContext


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    plan = ctx.plan
    notes: list[str] = []
    modified = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if not isinstance(mod, nn.LayerNorm):
            continue
        x = node.args[0]
        old = plan.dg.shapes[x.name]
        c_old = old[-1]
        c_new = plan.new_size(("v", x.name, len(old) - 1))
        if c_new == c_old:
            continue
        if ctx.renorm:
            ctx.approximate = True
            notes.append(f"{node.target}: plain LayerNorm({c_new}) (--renorm: approximate)")
            continue
        k = c_old - c_new
        g = gm.graph
        with g.inserting_before(node):
            s = g.call_method("sum", (x, -1), {"keepdim": True})
            mean = g.call_function(torch.div, (s, float(c_old)))
            d = g.call_function(torch.sub, (x, mean))
            sq = g.call_function(torch.mul, (d, d))
            ssq = g.call_method("sum", (sq, -1), {"keepdim": True})
            mm = g.call_function(torch.mul, (mean, mean))
            kmm = g.call_function(torch.mul, (mm, float(k)))
            tot = g.call_function(torch.add, (ssq, kmm))
            var = g.call_function(torch.div, (tot, float(c_old)))
            ve = g.call_function(torch.add, (var, float(mod.eps)))
            r = g.call_function(torch.rsqrt, (ve,))
            y = g.call_function(torch.mul, (d, r))
            if mod.weight is not None:
                w = g.get_attr(f"{node.target}.weight")
                y = g.call_function(torch.mul, (y, w))
            if mod.bias is not None:
                b = g.get_attr(f"{node.target}.bias")
                y = g.call_function(torch.add, (y, b))
        node.replace_all_uses_with(y)
        g.erase_node(node)
        modified = True
        notes.append(f"{node.target}: exact LayerNorm over {c_new} of {c_old} channels")
    return PassResult(gm, modified, notes)
