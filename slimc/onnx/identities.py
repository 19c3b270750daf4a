"""Multiplications by one that a slim graph carries and the dense export does not.

slimc lowers drop-path / stochastic depth to ``x * F.dropout(x.new_ones(B, 1, …, 1), p,
self.training)`` (:mod:`slimc.lowering`): the same noise in training, the identity in eval.
Exported in eval, torch keeps ``mul(x, dropout(new_ones(…), p, False))``: in ONNX a Shape,
a Concat, an Expand and a Mul over the whole activation per residual block, which the
runtimes cannot fold (the batch is dynamic) and the original's export lacks (torchvision's
``stochastic_depth`` returns its input in eval). :func:`drop_ones` removes them from the
exported program before it is written.
"""
from __future__ import annotations

import torch
from torch import fx

__all__ = ["drop_ones"]

aten = torch.ops.aten
ONES = (aten.new_ones.default, aten.ones.default, aten.ones_like.default)


def _is_ones(n) -> bool:
    """``n`` is a tensor of ones, possibly through an eval-mode dropout (``train=False``)."""
    while isinstance(n, fx.Node) and n.target is aten.dropout.default:
        if len(n.args) < 3 or n.args[2] is not False:
            return False
        n = n.args[0]
    return isinstance(n, fx.Node) and n.target in ONES


def _same(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.dtype == vb.dtype and \
        tuple(va.shape) == tuple(vb.shape)


def drop_ones(gm: fx.GraphModule) -> int:
    """``x * ones`` → ``x`` where the product has x's shape and dtype; how many went."""
    n = 0
    for node in list(gm.graph.nodes):
        if node.target is not aten.mul.Tensor or len(node.args) != 2:
            continue
        for x, other in (node.args, node.args[::-1]):
            if isinstance(x, fx.Node) and _is_ones(other) and _same(node, x):
                node.replace_all_uses_with(x)
                gm.graph.erase_node(node)
                n += 1
                break
    if n:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return n
