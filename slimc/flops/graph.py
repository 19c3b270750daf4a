"""FLOPs read off the traced graph's shapes: nothing runs.

A FLOP is a multiply or an add: 2 × the multiply-accumulates of the ops that do nearly all
the arithmetic of a network — convolutions, linear layers, matrix products, attention
(what ``torch.utils.flop_counter`` counts too); elementwise ops, norms and pooling count 0.
The same formulas give the slim model's FLOPs from the plan's new sizes, so the before and
after numbers are comparable by construction.
"""
from __future__ import annotations

import math
import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import aten, class_keys, op_key
from slimc.shape_rules.experts import EXPERTS

Shape = tuple[int, ...]
ShapeOf = Callable[[fx.Node], "Shape | None"]  # a node's value shape (None: not one tensor)
ParamShape = Callable[[str], Shape]  # a parameter's or buffer's shape by FQN


def _weight(node: fx.Node, gm: fx.GraphModule, pos: int, shape_of: ShapeOf, param_shape: ParamShape) -> Shape | None:
    if node.op == "call_module":
        return param_shape(f"{node.target}.weight")
    w = node.args[pos] if len(node.args) > pos else node.kwargs.get("weight")
    if not isinstance(w, fx.Node):
        return None
    return param_shape(w.target) if w.op == "get_attr" else shape_of(w)


def _arg_shape(node: fx.Node, pos: int, shape_of: ShapeOf) -> Shape | None:
    a = node.args[pos] if len(node.args) > pos else None
    return shape_of(a) if isinstance(a, fx.Node) else None


def conv(node, gm, shape_of, param_shape) -> int:
    """out positions × (in channels per group · kernel) per output channel."""
    out, w = shape_of(node), _weight(node, gm, 1, shape_of, param_shape)
    return 2 * math.prod(out) * math.prod(w[1:]) if out and w else 0


def conv_transpose(node, gm, shape_of, param_shape) -> int:
    """in positions × (out channels per group · kernel) per input channel."""
    x, w = _arg_shape(node, 0, shape_of), _weight(node, gm, 1, shape_of, param_shape)
    return 2 * math.prod(x) * math.prod(w[1:]) if x and w else 0


def linear(node, gm, shape_of, param_shape) -> int:
    out, w = shape_of(node), _weight(node, gm, 1, shape_of, param_shape)
    return 2 * math.prod(out) * w[-1] if out and w else 0


def matmul(node, gm, shape_of, param_shape) -> int:
    """Every output element sums over the contracted dim (a's last)."""
    out, a = shape_of(node), _arg_shape(node, 0, shape_of)
    return 2 * math.prod(out) * a[-1] if out is not None and a else 0


def addmm(node, gm, shape_of, param_shape) -> int:
    """bias + a @ b (``baddbmm``: batched): a is the second argument."""
    out, a = shape_of(node), _arg_shape(node, 1, shape_of)
    return 2 * math.prod(out) * a[-1] if out is not None and a else 0


def sdpa(node, gm, shape_of, param_shape) -> int:
    """softmax(q·kᵀ)·v: L×S scores of E each, then L×Ev outputs of S each."""
    q, k, v = (_arg_shape(node, i, shape_of) for i in range(3))
    if not (q and k and v):
        return 0
    return 2 * math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def experts(node, gm, shape_of, param_shape) -> int:
    """Stacked MoE experts: every token's k experts each run their up (gate and up) and down
    projections: T·k × (rows·H + H·I)."""
    out, idx = shape_of(node), _arg_shape(node, 1, shape_of)
    m = gm.get_submodule(node.target)
    up = "gate_up_proj" if getattr(m, "has_gate", True) else "up_proj"
    if not (out and idx and hasattr(m, up) and hasattr(m, "down_proj")):
        return 0
    return 2 * out[0] * idx[-1] * (math.prod(param_shape(f"{node.target}.{up}")[1:])
                                   + math.prod(param_shape(f"{node.target}.down_proj")[1:]))


FORMULAS: dict = {}
for _keys, _fn in [
    ([nn.Conv1d, nn.Conv2d, nn.Conv3d, F.conv1d, F.conv2d, F.conv3d,
      *aten("conv1d.default", "conv2d.default", "conv3d.default", "convolution.default")], conv),
    ([nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, F.conv_transpose1d, F.conv_transpose2d,
      F.conv_transpose3d, *aten("conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input")],
     conv_transpose),
    ([nn.Linear, F.linear, *aten("linear.default")], linear),
    ([torch.matmul, torch.mm, torch.bmm, operator.matmul, "matmul", "mm", "bmm",
      *aten("matmul.default", "mm.default", "bmm.default")], matmul),
    ([torch.addmm, torch.baddbmm, "addmm", "baddbmm", *aten("addmm.default", "baddbmm.default")], addmm),
    ([F.scaled_dot_product_attention, *aten("scaled_dot_product_attention.default")], sdpa),
    ([EXPERTS], experts),
]:
    for _k in _keys:
        FORMULAS[_k] = _fn


def graph_flops(gm: fx.GraphModule, shape_of: ShapeOf, param_shape: ParamShape) -> int:
    """FLOPs of one forward of ``gm`` at the sizes ``shape_of`` / ``param_shape`` give."""
    total = 0
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        key = op_key(node, gm)
        fn = FORMULAS.get(key)
        if fn is None and isinstance(key, type):  # a subclass of a torch.nn layer; a class keyed by name
            fn = next((FORMULAS[k] for b in key.__mro__ for k in class_keys(b) if k in FORMULAS), None)
        if fn is not None:
            total += fn(node, gm, shape_of, param_shape)
    return int(total)


def dg_flops(dg, size: Callable[[tuple], int] | None = None) -> int:
    """FLOPs of the traced graph of ``dg`` (a dependency graph) at the sizes ``size(slot)``
    gives: the example's (None), or the plan's new sizes (``plan.new_size``: the slim model)."""
    size = size or dg.size.__getitem__

    def shape_of(n: fx.Node) -> Shape | None:
        s = dg.shapes.get(n.name)
        return tuple(size(("v", n.name, d)) for d in range(len(s))) if isinstance(s, tuple) else None

    def param_shape(fqn: str) -> Shape:
        if ("p", fqn, 0) not in dg.size:  # a constant the graph reads: no slot, never sliced
            owner, _, leaf = fqn.rpartition(".")
            return tuple(getattr(dg.gm.get_submodule(owner) if owner else dg.gm, leaf).shape)
        dims = 0
        while ("p", fqn, dims) in dg.size:
            dims += 1
        return tuple(size(("p", fqn, d)) for d in range(dims))

    return graph_flops(dg.gm, shape_of, param_shape)


__all__ = ["FORMULAS", "dg_flops", "graph_flops"]
