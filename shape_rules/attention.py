"""Attention: matrix products, softmax and fused scaled-dot-product attention.

Heads need no op of their own: ``view(B, N, H, D)`` splits the channel dim into a head
axis and a head-dim axis (a :class:`Reshape` fact), the head axis passes through the
batch dims of the products below, and propagation keeps the removed set a rectangle —
whole heads, or the same channels of every head.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import Coupling, HeadAxis, OpView, Unsupported, aten, arange, shape_rule, tie
from slimc.shape_rules.elementwise import broadcast_term


def _batch_dims(op: OpView, c: Coupling, x: fx.Node, n_batch: int, *, zero_ok: bool = True,
                head_dim: int | None = None, term: int = 0) -> str | None:
    """Right-aligned broadcast of ``x``'s leading (batch) dims onto the output's, as factors
    of ``term``.

    ``head_dim``: the output dim where ``x`` may carry fewer heads that several output
    heads share (grouped-query attention): output head h reads head h // g of ``x``.
    """
    sx, out = op.shape(x), op.out_shape
    lead = n_batch - (len(sx) - 2)
    if lead < 0:
        return "operand with more batch dims than the result"
    for d in range(len(sx) - 2):
        od = lead + d
        if sx[d] == out[od]:
            c.flow(op.slot(x, d), op.out(od), term=term, zero_ok=zero_ok)
        elif sx[d] == 1:
            c.cover(op.slot(x, d))
        elif od == head_dim and out[od] % sx[d] == 0:
            g = out[od] // sx[d]
            c.flow(op.slot(x, d), op.out(od), arange(out[od]) // g, arange(out[od]), term=term, zero_ok=zero_ok)
        else:
            return f"dim {d} of size {sx[d]} does not broadcast to {out[od]}"
    return None


@shape_rule(operator.matmul, torch.matmul, "matmul", torch.bmm, "bmm", torch.mm, "mm",
            *aten("matmul.default", "bmm.default", "mm.default"))
def matmul(op: OpView) -> Coupling | Unsupported:
    """a @ b: batch dims broadcast and pass; rows of a and columns of b pass; the contracted
    dim joins a's columns with b's rows (a 2-D parameter there is a sink, its other dim a source)."""
    a, b = op.arg(0, "input"), op.arg(1, "other", op.arg(1, "mat2"))
    sa, sb, out = op.shape(a), op.shape(b), op.out_shape
    if sa is None or sb is None or not isinstance(out, tuple):
        return Unsupported("matmul of non-tensors")
    if len(sa) < 2 or len(sb) < 2:
        return Unsupported("matmul with a 1-D operand (a vector product)")
    c = Coupling()
    nb = len(out) - 2
    pa, pb = op.is_param(a), op.is_param(b)
    if (pa and len(sa) != 2) or (pb and len(sb) != 2) or (pa and pb):
        return Unsupported("matmul with a batched parameter or of two parameters")
    for x in (a, b):
        if not op.is_param(x):
            why = _batch_dims(op, c, x, nb)
            if why:
                return Unsupported(f"matmul: {why}")
    if pb:  # x @ W: W rows consume x's channels, W columns create the output's
        c.flow(op.slot(a, -2), op.out(-2))
        c.param("sink", op.slot(b, 0), op.slot(a, -1))
        c.param("source", op.slot(b, 1), op.out(-1))
    elif pa:  # W @ x
        c.param("source", op.slot(a, 0), op.out(-2))
        c.param("sink", op.slot(a, 1), op.slot(b, -2))
        c.flow(op.slot(b, -1), op.out(-1))
    else:
        c.flow(op.slot(a, -2), op.out(-2))
        c.flow(op.slot(b, -1), op.out(-1))
        c.links.append(tie(op.slot(a, -1), op.slot(b, -2)))
        c.use(op.slot(a, -1), op.out(-1)).use(op.slot(b, -2), op.out(-1))
        if nb >= 1:  # (batch, heads, n, m), or (batch·heads, n, m) as Bloom's bmm: multi-head attention
            c.constraints.append(HeadAxis(op.out(nb - 1)))
    return c


@shape_rule(torch.baddbmm, "baddbmm", *aten("baddbmm.default"))
def baddbmm(op: OpView) -> Coupling | Unsupported:
    """β·input + α·(b1 @ b2) (Bloom's attention scores on its ALiBi bias): the product as
    ``matmul``'s, one term; the input broadcast onto the result, another (none where β = 0)."""
    x, b1, b2 = op.arg(0, "input"), op.arg(1, "batch1"), op.arg(2, "batch2")
    beta = op.node.kwargs.get("beta", 1)
    if not all(isinstance(t, fx.Node) and op.shape(t) is not None for t in (x, b1, b2)) or \
            not isinstance(beta, (int, float)):
        return Unsupported("baddbmm of non-tensors or with a computed beta")
    c = matmul(_ProductView(op, b1, b2))
    if isinstance(c, Unsupported):
        return c
    for link in c.links:  # the product is the second term
        if link.term == 0:
            link.term = 1
    if beta == 0:
        for d in range(len(op.shape(x))):
            c.cover(op.slot(x, d))
    else:
        broadcast_term(op, c, x, term=0)
    return c


class _ProductView(OpView):
    """``op`` seen as ``a @ b`` (its other operands left out): for rules built on a product."""

    def __init__(self, op: OpView, a: fx.Node, b: fx.Node):
        super().__init__(op.node, op.gm, op.shapes)
        self._ab = (a, b)
        self.viewed = op.viewed

    def arg(self, i: int, name: str | None = None, default=None):
        return self._ab[i] if i < 2 else default


SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)


@shape_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax", *SOFTMAX_MODULES,
            *aten("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default", "_safe_softmax.default"))
def softmax(op: OpView) -> Coupling | Unsupported:
    """softmax over dim d: d is mixed (fixed); the other dims pass (softmax(0) ≠ 0)."""
    x = op.arg(0, "input")
    dim = op.module.dim if op.module is not None else op.arg(1, "dim")
    xs = op.shape(x)
    if xs is None or not isinstance(dim, int):
        return Unsupported("softmax with an implicit or computed dim")
    dim %= len(xs)
    c = Coupling()
    for d in range(len(xs)):
        if d == dim:
            why = f"softmax over dim {d} mixes its entries"
            c.barrier(op.slot(x, d), why)
            c.barrier(op.out(d), why)
        else:
            c.flow(op.slot(x, d), op.out(d), zero_ok=False)
    return c


SDPA = (F.scaled_dot_product_attention, *aten("scaled_dot_product_attention.default"))


@shape_rule(*SDPA)
def sdpa(op: OpView) -> Coupling | Unsupported:
    """softmax(q·kᵀ·s + mask)·v: batch and head dims pass (a key/value head goes with every
    query head that shares it); q's and k's head dim is contracted (they lose the same
    channels, the scale is patched to stay 1/√E); v's head dim passes; keys are mixed (fixed)."""
    # Terms and factors as the eager form has them: a head's output is v's times the softmax
    # of q·kᵀ + mask, so it is dead where v's head is, or where q's or k's is *and* the mask's
    # is — (v ∨ q ∨ k) ∧ (v ∨ mask). An additive mask is a term of the scores, not a factor of
    # the output: a mask of zeros (T5's cross-attention position bias) kills no head.
    q, k, v = op.arg(0, "query"), op.arg(1, "key"), op.arg(2, "value")
    sq, sk, sv, out = op.shape(q), op.shape(k), op.shape(v), op.out_shape
    if None in (sq, sk, sv) or not isinstance(out, tuple) or min(len(sq), len(sk), len(sv)) < 2:
        return Unsupported("attention on non-tensors or vectors")
    c = Coupling()
    nb = len(out) - 2
    head = nb - 1 if nb >= 1 else None
    mask = op.arg(3, "attn_mask")
    operands = [(q, False, 0), (k, False, 0), (v, True, 0)]
    if isinstance(mask, fx.Node):
        operands.append((v, True, 1))  # v is a factor of the mask's term too
    for x, zero_ok, term in operands:
        why = _batch_dims(op, c, x, nb, zero_ok=zero_ok, head_dim=head if x is not q else None, term=term)
        if why:
            return Unsupported(f"attention: {why}")
    if head is not None:
        c.constraints.append(HeadAxis(op.out(head)))
    c.flow(op.slot(q, -2), op.out(-2), zero_ok=False)
    why = "attention mixes key positions (softmax over keys)"
    c.barrier(op.slot(k, -2), why)
    c.barrier(op.slot(v, -2), why)
    c.links.append(tie(op.slot(q, -1), op.slot(k, -1)))
    c.use(op.slot(q, -1), op.out(-1)).use(op.slot(k, -1), op.out(-1))
    c.flow(op.slot(v, -1), op.out(-1))
    if isinstance(mask, fx.Node):
        sm = op.shape(mask)
        if sm is None:
            return Unsupported("attention mask that is not a tensor")
        lead = len(out) - len(sm)
        for d, n in enumerate(sm):
            od = lead + d
            if od == len(out) - 1:
                c.barrier(op.slot(mask, d), why)
            elif n == 1:
                c.cover(op.slot(mask, d))
            elif n == out[od]:
                c.flow(op.slot(mask, d), op.out(od), term=1, zero_ok=False)
            else:
                return Unsupported(f"attention mask dim {d} ({n}) does not broadcast to {out[od]}")
    return c


def sdpa_scale(node: fx.Node, e_old: int) -> float | None:
    """The scale the reference used if the node leaves it implicit (None if explicit)."""
    s = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
    return float(1.0 / np.sqrt(e_old)) if s is None else None
