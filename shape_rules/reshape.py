"""view / reshape / flatten / squeeze / unsqueeze: decided from shapes alone.

Dims are matched in blocks of equal product. A 1↔1 block passes one-to-one; a merge
(C, H, W → F) or split (F → C, H, W) becomes a :class:`Reshape` fact that propagation
resolves once it knows which dims are fixed: with one free part the big dim's elements
join that part's channels (a flatten into a Linear); with several (channel shuffle,
heads) elements are matched by coordinates and the kept set stays a rectangle.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from slimc.shape_rules import Coupling, OpView, Reshape, Unsupported, aten, shape_rule


def blocks(ins: tuple, outs: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Pair dims of equal product, ignoring size-1 dims. None if the shapes do not pair."""
    i_d = [d for d, n in enumerate(ins) if n != 1]
    o_d = [d for d, n in enumerate(outs) if n != 1]
    res, i, j = [], 0, 0
    while i < len(i_d) and j < len(o_d):
        bi, bj = [i_d[i]], [o_d[j]]
        pi, pj = ins[i_d[i]], outs[o_d[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(i_d):
                    return None
                pi *= ins[i_d[i]]
                bi.append(i_d[i])
                i += 1
            else:
                if j >= len(o_d):
                    return None
                pj *= outs[o_d[j]]
                bj.append(o_d[j])
                j += 1
        res.append((bi, bj))
    if i != len(i_d) or j != len(o_d):
        return None
    return res


@shape_rule(
    "view", "reshape", torch.reshape, "flatten", torch.flatten, nn.Flatten, nn.Unflatten,
    "squeeze", torch.squeeze, "unsqueeze", torch.unsqueeze, "unflatten", torch.unflatten,
    *aten("view.default", "reshape.default", "_unsafe_view.default", "flatten.using_ints", "squeeze.dim",
          "squeeze.dims", "squeeze.default", "unsqueeze.default", "unflatten.int"),
)
def reshape(op: OpView) -> Coupling | Unsupported:
    """Reshape: pass 1↔1 dims, record merges/splits for propagation to resolve."""
    x = op.arg(0, "input")
    if not isinstance(x, fx.Node):
        return Unsupported("reshape of a non-tensor")
    ins, outs = op.shape(x), op.out_shape
    if not isinstance(outs, tuple):
        return Unsupported("reshape with a non-tensor result")
    pairs = blocks(ins, outs)
    if pairs is None:
        return Unsupported(f"cannot pair dims of {ins} → {outs}")
    c = Coupling()
    for d, n in enumerate(ins):
        if n == 1:
            c.cover(op.slot(x, d))
    for d, n in enumerate(outs):
        if n == 1:
            c.cover(op.out(d))
    for bi, bj in pairs:
        if len(bi) == 1 and len(bj) == 1:
            c.flow(op.slot(x, bi[0]), op.out(bj[0]))
        elif len(bj) == 1:
            c.reshapes.append(Reshape(op.out(bj[0]), [op.slot(x, d) for d in bi], [ins[d] for d in bi], False, op.node.name))
        elif len(bi) == 1:
            c.reshapes.append(Reshape(op.slot(x, bi[0]), [op.out(d) for d in bj], [outs[d] for d in bj], True, op.node.name))
        else:
            why = f"reshape regroups dims {[ins[d] for d in bi]} → {[outs[d] for d in bj]}"
            for d in bi:
                c.barrier(op.slot(x, d), why)
            for d in bj:
                c.barrier(op.out(d), why)
    return c
