"""``torch.einsum``: every dim is named by a letter of the equation.

A letter in the output passes each operand's dim to that output dim (an operand of size
1 there is broadcast); a letter only in the operands is contracted: the operands' dims
are joined, and used iff the output is (attention ``bhqd,bhkd->bhqk``, ``bhqk,bhkd->bhqd``).
A parameter operand is a weight (``bchw,oc->bohw``): its output letters create channels
(source) and its contracted letters consume the other operands' (sink). A letter of one
operand alone that the output lacks is summed: its removed channels must be zero there.
All operands are factors of one product. Diagonals (``ii->i``) are not supported. In a
contraction of two values with several batch letters the last one is marked as the head
axis (a hint for pruners, as for ``matmul``).
"""
from __future__ import annotations

import torch
from torch import fx

from slimc.shape_rules import Coupling, HeadAxis, Link, NeedsZero, OpView, Unsupported, aten, shape_rule

ELLIPSIS = "…"


def parse(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """Operand letter strings and the output's, with ``...`` expanded into letters of its own."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    n_ell = max((r - (len(t) - 3) for t, r in zip(terms, ranks) if "..." in t), default=0)
    ell = "".join(chr(0x2460 + i) for i in range(n_ell))  # ①②…: never einsum letters
    out_terms = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            k = r - (len(t) - 3)
            t = t.replace("...", ell[n_ell - k:])
        if len(t) != r:
            return None
        out_terms.append(t)
    if arrow:
        rhs = rhs.replace("...", ell)
    else:  # implicit output: the ellipsis, then the letters seen once, sorted
        once = sorted(ch for ch in set("".join(out_terms)) if "".join(out_terms).count(ch) == 1 and ch not in ell)
        rhs = ell + "".join(once)
    return out_terms, rhs


@shape_rule(torch.einsum, *aten("einsum.default"))
def einsum(op: OpView) -> Coupling | Unsupported:
    """einsum: output letters pass (a weight operand's are sources), contracted letters join
    the operands' dims (a weight's are sinks), used iff the output is; one product."""
    eq = op.arg(0, "equation")
    ops = list(op.node.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    if not isinstance(eq, str) or not all(isinstance(x, fx.Node) and op.shape(x) is not None for x in ops):
        return Unsupported("einsum with a computed equation or non-tensor operands")
    out = op.out_shape
    parsed = parse(eq, [len(op.shape(x)) for x in ops])
    if parsed is None or not isinstance(out, tuple):
        return Unsupported(f"einsum equation '{eq}' not understood")
    terms, rhs = parsed
    if any(len(set(t)) != len(t) for t in terms) or len(set(rhs)) != len(rhs):
        return Unsupported("einsum with a repeated letter (a diagonal)")
    if all(op.is_param(x) for x in ops):
        return Unsupported("einsum of parameters only")
    used_by = op.out(next((j for j, n in enumerate(out) if n > 1), 0)) if out else None
    c = Coupling()
    anchor: dict[str, tuple] = {}  # contracted letter → the first value operand's slot
    for x, t in zip(ops, terms):
        for d, ch in enumerate(t):
            slot, n = op.slot(x, d), op.shape(x)[d]
            if ch in rhs:
                j = rhs.index(ch)
                if n == 1 and out[j] > 1:  # broadcast: a factor of every output position
                    c.cover(slot)
                    if not op.is_param(x):
                        c.feed(slot, op.out(j))
                elif op.is_param(x):
                    c.param("source", slot, op.out(j))
                else:
                    c.flow(slot, op.out(j))
            elif sum(ch in s for s in terms) == 1:  # summed over in this operand only
                c.cover(slot)
                if not op.is_param(x):
                    c.constraints.append(NeedsZero(slot, f"einsum '{eq}' sums over '{ch}'"))
            elif ch not in anchor and not op.is_param(x):
                anchor[ch] = slot
                if used_by is not None:
                    c.use(slot, used_by)
    for x, t in zip(ops, terms):  # contracted dims join the anchor
        for d, ch in enumerate(t):
            if ch in rhs or ch not in anchor or anchor[ch] == op.slot(x, d):
                continue
            if op.is_param(x):
                c.param("sink", op.slot(x, d), anchor[ch])
            else:
                c.links.append(Link("tie", op.slot(x, d), anchor[ch], None, None, term=None))
                if used_by is not None:
                    c.use(op.slot(x, d), used_by)
    for ch in {ch for t in terms for ch in t if ch not in rhs and ch not in anchor and sum(ch in s for s in terms) > 1}:
        return Unsupported(f"einsum '{eq}' contracts '{ch}' between parameters only")
    batch = [ch for ch in rhs if all(ch in t for t in terms)]
    if len(ops) == 2 and anchor and len(batch) >= 2 and not any(op.is_param(x) for x in ops):
        c.constraints.append(HeadAxis(op.out(rhs.index(batch[-1]))))  # (batch, heads, …) as in attention
    return c
