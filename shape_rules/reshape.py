"""view / reshape / flatten / squeeze / unsqueeze: decided from shapes alone.

Dims are matched in blocks of equal product. A 1↔1 block passes one-to-one; a merge
(C, H, W → F) or split (F → C, H, W) becomes a :class:`Reshape` fact that propagation
resolves once it knows which dims are fixed: with one free part the big dim's elements
join that part's channels (a flatten into a Linear); with several (channel shuffle,
heads) elements are matched by coordinates and the kept set stays a rectangle.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from slimc.shape_rules import Coupling, Link, OpView, Reshape, Unsupported, aten, shape_rule


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


SIZED_RESHAPES = ("view", "reshape", torch.reshape, *aten("view.default", "reshape.default", "_unsafe_view.default"))
"""Reshapes whose target sizes are written in the call (``x.view(B, H, D)``)."""
UNFLATTENS = ("unflatten", torch.unflatten, *aten("unflatten.int"))
"""Reshapes that split one dim into sizes written in the call (``x.unflatten(-1, (H, D))``)."""
RESHAPES_AS = ("reshape_as", "view_as", *aten("reshape_as.default", "view_as.default"))
"""Reshapes to another tensor's shape, read at run time (LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``)."""


@shape_rule(
    *SIZED_RESHAPES, *UNFLATTENS, "flatten", torch.flatten, nn.Flatten, nn.Unflatten,
    "squeeze", torch.squeeze, "unsqueeze", torch.unsqueeze, *RESHAPES_AS,
    *aten("flatten.using_ints", "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default"),
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
        if len(bi) == 1 and len(bj) == 1 and op.is_param(x):  # self.gamma.view(1, -1, 1, 1): it follows
            c.param("follower", op.slot(x, bi[0]), op.out(bj[0]), term=0)
        elif len(bi) == 1 and len(bj) == 1:
            c.flow(op.slot(x, bi[0]), op.out(bj[0]))
        elif len(bj) == 1:
            c.reshapes.append(Reshape(op.out(bj[0]), [op.slot(x, d) for d in bi], [ins[d] for d in bi], False, op.node.name))
        elif len(bi) == 1:
            c.reshapes.append(Reshape(op.slot(x, bi[0]), [op.out(d) for d in bj], [outs[d] for d in bj], True, op.node.name))
        else:
            _regroup(op, c, x, bi, bj)
    like = op.arg(1, "other") if op.node.target in RESHAPES_AS else None
    if isinstance(like, fx.Node) and op.shape(like) == outs:  # the shape is read from ``like`` at run time
        for d in range(len(outs)):
            c.links.append(Link("tie", op.slot(like, d), op.out(d), None, None, term=None))
    return c


def refinement(a: list[int], b: list[int]) -> list[int] | None:
    """Finest sizes that both ``a`` and ``b`` are row-major products of consecutive runs of
    ((B, H·D) and (B·H, D) → (B, H, D)); None when their boundaries do not nest."""
    cuts = sorted({int(v) for v in (*np.cumprod(a), *np.cumprod(b))})
    out, prev = [], 1
    for v in cuts:
        if v % prev:
            return None
        out.append(v // prev)
        prev = v
    return out


def _regroup(op: OpView, c: Coupling, x: fx.Node, bi: list[int], bj: list[int]) -> None:
    """Dims regrouped (``view(L, B * H, D)`` of (L, B, H·D)): split the input dims into
    their common refinement — virtual slots — and merge those into the output dims."""
    ins, outs = op.shape(x), op.out_shape
    a, b = [ins[d] for d in bi], [outs[d] for d in bj]
    ref = refinement(a, b)
    if ref is None:
        why = f"reshape regroups dims {a} → {b}"
        for d in bi:
            c.barrier(op.slot(x, d), why)
        for d in bj:
            c.barrier(op.out(d), why)
        return
    virt = [("v", f"{op.node.name}#r{k}", 0) for k in range(len(ref))]
    c.virtual.update(zip(virt, ref))

    def runs(sizes: list[int]):
        k = 0
        for n in sizes:
            j, p = k, 1
            while p < n:
                p *= ref[j]
                j += 1
            yield k, j
            k = j

    for d, (k, j) in zip(bi, runs(a)):
        if j - k == 1:
            c.flow(op.slot(x, d), virt[k])
        else:
            c.reshapes.append(Reshape(op.slot(x, d), virt[k:j], ref[k:j], True, op.node.name))
    for d, (k, j) in zip(bj, runs(b)):
        if j - k == 1:
            c.flow(virt[k], op.out(d))
        else:
            c.reshapes.append(Reshape(op.out(d), virt[k:j], ref[k:j], False, op.node.name))


@shape_rule("repeat", *aten("repeat.default"))
def repeat(op: OpView) -> Coupling | Unsupported:
    """repeat(r₀, r₁, …): output dim d tiles input dim d r_d times, a merge (r_d, n_d) like a
    reshape's (Bloom's ALiBi ``slopes.repeat(batch, 1, 1)`` beside q's (batch·heads)); the
    repeat counts are written in the call, so the tiles stay (fixed) while the tiled dim
    may lose channels; a dim of size 1 repeated holds copies of one value."""
    x = op.arg(0, "input")
    sizes = op.node.args[1:] if op.node.op == "call_method" else op.arg(1, "repeats")
    if op.node.op == "call_method" and len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = sizes[0]
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(out, tuple) or not isinstance(sizes, (list, tuple)) or len(sizes) < len(xs):
        return Unsupported("repeat with computed or too few counts")
    c = Coupling()
    lead = len(out) - len(xs)
    why = "tiles of a repeat (the count is written in the call)"
    for od in range(lead):
        c.barrier(op.out(od), why) if out[od] > 1 else c.cover(op.out(od))
    for d, n in enumerate(xs):
        od = lead + d
        r = out[od] // n if n else 0
        if r == 1:
            c.flow(op.slot(x, d), op.out(od))
        elif n == 1:
            c.cover(op.slot(x, d))
            c.barrier(op.out(od), why)
        else:
            tiles = ("v", f"{op.node.name}#tiles{od}", 0)
            c.virtual[tiles] = r
            c.barrier(tiles, why)
            c.reshapes.append(Reshape(op.out(od), [tiles, op.slot(x, d)], [r, n], False, op.node.name))
    return c
