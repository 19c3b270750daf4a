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

from slimc.passes.context import PassResult, RewriteContext, SizeEvent
from slimc.shape_rules.norm import LAYER_NORMS


def _layer_norm(modules: dict[str, nn.Module], node: fx.Node):
    """(input, weight, bias, eps) of a LayerNorm node — module, functional or ATen — else None.
    weight/bias: a module's attribute target (str), the functional call's node (a get_attr,
    or a cast of one), or None."""
    if node.op == "call_module":
        mod = modules[node.target]
        if not isinstance(mod, nn.LayerNorm):
            return None
        w = f"{node.target}.weight" if mod.weight is not None else None
        b = f"{node.target}.bias" if mod.bias is not None else None
        return node.args[0], w, b, float(mod.eps)
    if node.op == "call_function" and node.target in LAYER_NORMS:
        arg = lambda i, name, default=None: node.args[i] if len(node.args) > i else node.kwargs.get(name, default)  # noqa: E731
        return arg(0, "input"), arg(2, "weight"), arg(3, "bias"), float(arg(4, "eps", 1e-5))
    return None


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    shapes = ctx.shapes
    notes: list[str] = []
    modified = False
    modules = dict(gm.named_modules(remove_duplicate=False))
    for node in list(gm.graph.nodes):
        found = _layer_norm(modules, node)
        if found is None:
            continue
        x, weight, bias, eps = found
        old = shapes.old(x)
        c_old = old[-1]
        c_new = shapes.new_size(x, len(old) - 1)
        if c_new == c_old:
            continue
        if ctx.renorm:
            ctx.approximate = True
            if node.op == "call_function":  # the module form is resized with its params
                node.args = (node.args[0], [c_new], *node.args[2:])
            notes.append(f"{node.name}: plain LayerNorm({c_new}) (--renorm: approximate)")
            continue
        ctx.events.append(SizeEvent.at(node, "layernorm", position=-1, old=c_old, new=c_new,
                                       detail={"eps": eps, "shape": old,
                                               "kept": shapes.kept(x, len(old) - 1)}))
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
            ve = g.call_function(torch.add, (var, eps))
            r = g.call_function(torch.rsqrt, (ve,))
            y = g.call_function(torch.mul, (d, r))
            if weight is not None:
                y = g.call_function(torch.mul, (y, g.get_attr(weight) if isinstance(weight, str) else weight))
            if bias is not None:
                y = g.call_function(torch.add, (y, g.get_attr(bias) if isinstance(bias, str) else bias))
        ctx.replace(node, y)
        modified = True
        notes.append(f"{node.name}: exact LayerNorm over {c_new} of {c_old} channels")
    return PassResult(gm, modified, notes)
