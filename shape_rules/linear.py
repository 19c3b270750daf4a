"""Linear layers and embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimc.shape_rules import Coupling, OpView, Unsupported, aten, resizer, shape_rule


@shape_rule(nn.Linear, F.linear, *aten("linear.default"))
def linear(op: OpView) -> Coupling | Unsupported:
    """out features ← weight rows (source); in features → weight cols (sink); leading dims pass."""
    x = op.arg(0, "input")
    wb = op.weight_bias()
    if wb is None:
        return Unsupported("F.linear with a computed weight or bias")
    w, b = wb
    xs = op.shape(x)
    c = Coupling()
    for d in range(len(xs) - 1):
        c.flow(op.slot(x, d), op.out(d))
    c.param("sink", w(1), op.slot(x, -1))
    c.param("source", w(0), op.out(-1))
    if b is not None:
        c.param("follower", b(0), op.out(-1), term=1)
        for d in range(len(xs) - 1):  # the bias is added along every leading dim too
            c.feed(b(0), op.out(d), term=1)
    return c


@shape_rule(torch.addmm, *aten("addmm.default"))
def addmm(op: OpView) -> Coupling | Unsupported:
    """bias + x @ W (HF's GPT-2 Conv1D): W rows are sinks of x's columns, W columns and the
    bias are the output's source and follower."""
    bias, x, w = op.arg(0, "input"), op.arg(1, "mat1"), op.arg(2, "mat2")
    if not (op.is_param(w) and op.is_param(bias)) or op.is_param(x) or len(op.shape(bias)) != 1:
        return Unsupported("addmm whose weight and bias are not parameters")
    if op.arg(3, "beta", 1) != 1 or op.arg(4, "alpha", 1) != 1:
        return Unsupported("addmm with beta/alpha")
    c = Coupling()
    c.flow(op.slot(x, 0), op.out(0))
    c.param("sink", op.slot(w, 0), op.slot(x, 1))
    c.param("source", op.slot(w, 1), op.out(1))
    c.param("follower", op.slot(bias, 0), op.out(1), term=1)
    c.feed(op.slot(bias, 0), op.out(0), term=1)
    return c


@shape_rule(nn.Embedding, F.embedding, *aten("embedding.default"))
def embedding(op: OpView) -> Coupling | Unsupported:
    """Embedding columns are sources of the hidden dim; index dims pass through."""
    # module and F.embedding(input, weight); aten.embedding(weight, indices)
    functional_aten = op.module is None and op.node.target is not F.embedding
    x = op.arg(1) if functional_aten else op.arg(0, "input")
    wb = op.weight_bias(w_pos=0 if functional_aten else 1, b_pos=None)
    if wb is None:
        return Unsupported("embedding with a computed table")
    w = wb[0]
    c = Coupling()
    for d in range(len(op.shape(x))):
        c.flow(op.slot(x, d), op.out(d))
    c.param("source", w(1), op.out(-1))
    return c


@resizer(nn.Linear)
def _resize_linear(m: nn.Module, new: dict) -> None:
    m.out_features, m.in_features = new["weight"]


@resizer(nn.Embedding)
def _resize_embedding(m: nn.Module, new: dict) -> None:
    m.embedding_dim = new["weight"][1]
