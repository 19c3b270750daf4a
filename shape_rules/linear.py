"""Linear layers and embeddings."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from slimc.shape_rules import Coupling, OpView, Unsupported, aten, resizer, shape_rule


@shape_rule(nn.Linear, F.linear, *aten("linear.default"))
def linear(op: OpView) -> Coupling | Unsupported:
    """out features ← weight rows (source); in features → weight cols (sink); leading dims pass."""
    x = op.arg(0, "input")
    if op.module is not None:
        w = lambda d: op.p("weight", d)  # noqa: E731
        b = (lambda d: op.p("bias", d)) if op.module.bias is not None else None
    else:
        wn, bn = op.arg(1, "weight"), op.arg(2, "bias")
        if not op.is_param(wn) or (bn is not None and not op.is_param(bn)):
            return Unsupported("F.linear with a computed weight or bias")
        w = lambda d: op.slot(wn, d)  # noqa: E731
        b = (lambda d: op.slot(bn, d)) if bn is not None else None
    xs = op.shape(x)
    c = Coupling()
    for d in range(len(xs) - 1):
        c.flow(op.slot(x, d), op.out(d))
    c.param("sink", w(1), op.slot(x, -1))
    c.param("source", w(0), op.out(-1))
    if b is not None:
        c.param("follower", b(0), op.out(-1), term=1)
    return c


@shape_rule(nn.Embedding)
def embedding(op: OpView) -> Coupling:
    """Embedding columns are sources of the hidden dim; index dims pass through."""
    x = op.arg(0, "input")
    c = Coupling()
    for d in range(len(op.shape(x))):
        c.flow(op.slot(x, d), op.out(d))
    c.param("source", op.p("weight", 1), op.out(-1))
    return c


@resizer(nn.Linear)
def _resize_linear(m: nn.Module, new: dict) -> None:
    m.out_features, m.in_features = new["weight"]


@resizer(nn.Embedding)
def _resize_embedding(m: nn.Module, new: dict) -> None:
    m.embedding_dim = new["weight"][1]
