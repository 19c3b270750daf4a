"""A graph for the dynamo ONNX exporter that does not depend on strides.

ONNX tensors have no strides, but torch's exporter decides with them: while decomposing it
drops a ``contiguous()`` whose input *looks* contiguous and turns a ``reshape`` into a
``view`` where the input *looks* viewable — judged by the strides of the fake tensors of
that moment (an attention kernel's output laid out (B, L, H, D) in memory, so its
``transpose(1, 2)`` looks contiguous). A later pass of the exporter (type promotion) runs
the graph again with strides computed another way, finds ``view`` of a transposed tensor,
and the export fails (``Cannot view a tensor with shape …``): HF Swin's window attention
does this at any batch. Then only the TorchScript exporter is left, which writes the
example's sizes into every Reshape of a graph whose sizes are read by ``sym_size`` ops.

:func:`stride_free` rewrites the exported program's graph so no such decision is left:
every ``contiguous`` is a real copy (``clone``), and every view-like reshape reads one.
Values are unchanged; the optimizer drops the copies from the ONNX file (Identity nodes).
"""
from __future__ import annotations

import torch
from torch import fx

__all__ = ["stride_free", "RESHAPES"]

aten = torch.ops.aten

#: Ops whose decomposition picks a view or a copy from the input's strides.
RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
            aten.unflatten.int)


def _copied(graph: fx.Graph, x: fx.Node, before: fx.Node, made: dict[fx.Node, fx.Node]) -> fx.Node:
    if x not in made:
        with graph.inserting_before(before):
            made[x] = graph.call_function(aten.clone.default, (x,), {"memory_format": torch.contiguous_format})
        val = x.meta.get("val")
        if isinstance(val, torch.Tensor):
            made[x].meta["val"] = val.clone(memory_format=torch.contiguous_format)
    return made[x]


def _is_copy(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target is aten.clone.default \
        and n.kwargs.get("memory_format") is torch.contiguous_format


def stride_free(gm: fx.GraphModule) -> int:
    """Rewrite ``gm`` (an exported program's graph module, ATen ops) in place: ``contiguous``
    becomes ``clone(memory_format=contiguous_format)``; the tensor input of every op in
    :data:`RESHAPES` becomes such a copy (one per tensor). Returns the number of nodes changed."""
    graph, made, changed = gm.graph, {}, 0
    for n in list(graph.nodes):
        if n.op != "call_function":
            continue
        if n.target is aten.contiguous.default:
            n.target = aten.clone.default
            n.kwargs = {"memory_format": torch.contiguous_format}
            changed += 1
        elif n.target in RESHAPES and isinstance(n.args[0], fx.Node):
            x = n.args[0]
            if _is_copy(x):
                continue
            n.args = (_copied(graph, x, n, made), *n.args[1:])
            changed += 1
    if changed:
        graph.lint()
        gm.recompile()
    return changed
