"""Means over a pruned dim, kept exact.

The reference averages over all C channels, k of them zero (propagation made sure of
that); a mean over the C−k kept ones would divide by the wrong count. Replace it by
``sum / C`` (RMSNorm written out as ``x.pow(2).mean(-1)``, a channels-first LayerNorm
``x.mean(1)``), and the mean of squares inside ``F.rms_norm`` (``nn.RMSNorm``), written
out as ``x·rsqrt(Σx²/C + ε)·γ``. With ``renorm`` the plain mean stays, reported as
approximate.
"""
from __future__ import annotations

import math

import torch
from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent
from slimc.shape_rules.norm import RMS_NORMS
from slimc.shape_rules.pooling import MEANS


def _dims_keep(node: fx.Node, nd: int) -> tuple[list[int], bool]:
    arg = lambda i, name, default=None: node.args[i] if len(node.args) > i else node.kwargs.get(name, default)  # noqa: E731
    dim = arg(1, "dim")
    dims = list(range(nd)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % nd for d in dims), bool(arg(2, "keepdim", False))


def _rms_norm(gm: fx.GraphModule, ctx: RewriteContext, node: fx.Node, notes: list[str]) -> bool:
    """F.rms_norm over a pruned last dim → x·rsqrt(Σx²/C + ε)·γ with the original C (ε: the
    call's, or the float32 one that F.rms_norm takes for None)."""
    arg = lambda i, name, default=None: node.args[i] if len(node.args) > i else node.kwargs.get(name, default)  # noqa: E731
    x, weight, eps = arg(0, "input"), arg(2, "weight"), arg(3, "eps")
    old = ctx.shapes.old(x)
    if not isinstance(old, tuple):
        return False
    d = len(old) - 1
    c_old, c_new = old[d], ctx.shapes.new_size(x, d)
    if c_new == c_old:
        return False
    if ctx.renorm:
        ctx.approximate = True
        node.args = (x, [c_new], *node.args[2:])
        notes.append(f"{node.name}: plain RMSNorm({c_new}) (--renorm: approximate)")
        return True
    ctx.events.append(SizeEvent.at(node, "mean", position=[d], old=c_old, new=c_new,
                                   detail={"shape": old, "kept": {d: ctx.shapes.kept(x, d)}}))
    g = gm.graph
    with g.inserting_before(node):
        sq = g.call_function(torch.mul, (x, x))
        s = g.call_function(torch.sum, (sq, [d]), {"keepdim": True})
        ms = g.call_function(torch.div, (s, float(c_old)))
        r = g.call_function(torch.rsqrt, (g.call_function(torch.add, (ms, torch.finfo(torch.float32).eps if eps is None
                                                                        else float(eps))),))
        y = g.call_function(torch.mul, (x, r))
        if weight is not None:
            y = g.call_function(torch.mul, (y, weight))
    ctx.replace(node, y)
    notes.append(f"{node.name}: exact RMSNorm over {c_new} of {c_old} channels")
    return True


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    shapes = ctx.shapes
    notes: list[str] = []
    modified = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in RMS_NORMS:
            modified |= _rms_norm(gm, ctx, node, notes)
            continue
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
