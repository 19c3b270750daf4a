"""Means over a pruned dim, kept exact.

The reference averages over all C channels, k of them zero (propagation made sure of
that); a mean over the C−k kept ones would divide by the wrong count. Replace it by
``sum / C`` (RMSNorm written out as ``x.pow(2).mean(-1)``, a channels-first LayerNorm
``x.mean(1)``). With ``renorm`` the plain mean stays, reported as approximate.
"""
from __future__ import annotations

import math

import torch
from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent
from slimc.shape_rules.pooling import MEANS


def _dims_keep(node: fx.Node, nd: int) -> tuple[list[int], bool]:
    arg = lambda i, name, default=None: node.args[i] if len(node.args) > i else node.kwargs.get(name, default)  # noqa: E731
    dim = arg(1, "dim")
    dims = list(range(nd)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % nd for d in dims), bool(arg(2, "keepdim", False))


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    shapes = ctx.shapes
    notes: list[str] = []
    modified = False
    for node in list(gm.graph.nodes):
        if node.target not in MEANS or node.op not in ("call_method", "call_function"):
            continue
        x = node.args[0]
        old = shapes.old(x)
        if not isinstance(old, tuple):
            continue
        dims, keep = _dims_keep(node, len(old))
        n_old = math.prod(old[d] for d in dims)
        n_new = math.prod(shapes.new_size(x, d) for d in dims)
        if n_new == n_old:
            continue
        if ctx.renorm:
            ctx.approximate = True
            notes.append(f"{node.name}: mean over {n_new} of {n_old} (--renorm: approximate)")
            continue
        ctx.events.append(SizeEvent.at(node, "mean", position=dims, old=n_old, new=n_new,
                                       detail={"shape": old, "kept": {d: shapes.kept(x, d) for d in dims}}))
        with gm.graph.inserting_before(node):
            s = gm.graph.call_function(torch.sum, (x, dims), {"keepdim": keep})
            y = gm.graph.call_function(torch.div, (s, float(n_old)))
        ctx.replace(node, y)
        modified = True
        notes.append(f"{node.name}: mean over {n_new} kept of {n_old} channels → sum / {n_old}")
    return PassResult(gm, modified, notes)
