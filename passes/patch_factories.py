"""Patch the sizes of constant-filled new tensors (``torch.zeros(B, self.hidden)``,
``x.new_zeros(...)``, ``torch.full(size, v)``) whose dims lost channels (see the ``fill``
rule in shape_rules/structural.py); ``*_like`` tensors follow their source at run time."""
from __future__ import annotations

from torch import fx

from slimc.passes.context import PassResult, RewriteContext
from slimc.passes.patch_constants import patch_sizes
from slimc.shape_rules import aten
from slimc.shape_rules.structural import FILLS

# x.new_zeros(sizes): the sizes follow the source tensor
FROM_TENSOR = {"new_zeros", "new_ones", "new_full", "new_empty",
               *aten("new_zeros.default", "new_ones.default", "new_full.default", "new_empty.default")}


def _sizes_at(node: fx.Node) -> tuple[str, int | None]:
    """Where the sizes are: ("arg", i) a list in args[i], ("varargs", i) args[i:], ("kw", None)."""
    if "size" in node.kwargs:
        return "kw", None
    first = 1 if node.target in FROM_TENSOR else 0
    if len(node.args) > first and isinstance(node.args[first], (list, tuple)):
        return "arg", first
    return "varargs", first


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    shapes = ctx.shapes
    notes: list[str] = []
    modified = False
    for node in list(gm.graph.nodes):
        if node.target not in FILLS or node.op not in ("call_function", "call_method"):
            continue
        old = shapes.tensor(node)
        if old is None:
            continue
        new = list(shapes.new(node))
        if new == list(old):
            continue
        where, i = _sizes_at(node)
        if where == "kw":
            node.kwargs = {**node.kwargs, "size": patch_sizes(ctx, node, node.kwargs["size"], new, old, packed=True)}
        elif where == "arg":
            args = list(node.args)
            args[i] = type(args[i])(patch_sizes(ctx, node, args[i], new, old, packed=True))
            node.args = tuple(args)
        else:
            node.args = (*node.args[:i], *patch_sizes(ctx, node, node.args[i:], new, old))
        modified = True
        notes.append(f"{node.name}: sizes → {new}")
    return PassResult(gm, modified, notes)
