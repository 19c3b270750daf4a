"""Patch sizes written into the graph: view/reshape/expand sizes, split/chunk sizes,
functional depthwise-conv groups, the implicit scale of scaled-dot-product attention.

A size computed at run time (``B, N, C = x.shape``) reads the slim model's size. Where
the size it reads changed, it becomes the new literal (channel dims are static); where
a reshape needs another value than it computes (``reshape(B, N, C)`` after heads went,
``view(L, bsz * num_heads, D)``), it is scaled by new/old, so a batch factor in it stays
dynamic."""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent, TracedShapes, node_error

from slimc.shape_rules.attention import SDPA, sdpa_scale
from slimc.shape_rules.conv import FUNCTIONAL_CONV_TRANSPOSES, FUNCTIONAL_CONVS, group_slot
from slimc.shape_rules.norm import FUNCTIONAL_GROUP_NORMS
from slimc.shape_rules.reshape import SIZED_RESHAPES, UNFLATTENS
from slimc.shape_rules.structural import EXPANDS, SPLITS, size_query

RESHAPES = (*SIZED_RESHAPES, *EXPANDS)  # sizes written in the call: x.view(B, H, D), x.expand(B, -1, C)

def _reads_changed(shapes: TracedShapes, n, seen: set | None = None) -> bool:
    """Does the (integer) value of ``n`` depend on the size of a dim whose size changed?"""
    seen = set() if seen is None else seen
    if not isinstance(n, fx.Node) or n in seen:
        return False
    seen.add(n)
    q = size_query(n)
    if q is None and n.target is operator.getitem and isinstance(n.args[1], int) and isinstance(n.args[0], fx.Node):
        q = size_query(n.args[0])
        q = (q[0], n.args[1]) if q is not None and q[1] is None else q
    if q is not None:
        x, d = q
        old = shapes.tensor(x)
        if old is None:
            return False
        dims = range(len(old)) if d is None else [d % len(old)]
        return any(shapes.new_size(x, dd) != old[dd] for dd in dims)
    if shapes.traced_name(n) is not None and isinstance(shapes.old(n), (tuple, list)):
        return False  # a tensor: its sizes are not read here
    return any(_reads_changed(shapes, a, seen) for a in n.all_input_nodes)  # (a size a pass computed: its inputs)


def patch_sizes(ctx: RewriteContext, node: fx.Node, args, new: list[int], old: tuple, packed: bool = False):
    """Literal sizes become the new ones (-1 stays). A size computed at run time that reads
    a changed size becomes the new literal (channel dims are static); one that does not
    but must change — ``bsz * num_heads`` with heads removed — is scaled by new/old, which
    keeps a dynamic batch factor dynamic. Changes the user's code must follow are events."""
    out = []
    for pos, (a, n, o) in enumerate(zip(args, new, old)):
        if isinstance(a, int) and a != -1:
            if a != n:
                ctx.events.append(SizeEvent.at(node, "literal", position=pos, old=a, new=n,
                                               detail={"packed": packed, "n": len(args)}))
            out.append(n)
        elif isinstance(a, fx.Node) and _reads_changed(ctx.shapes, a):
            out.append(n)
        elif isinstance(a, fx.Node) and n != o:
            ctx.events.append(SizeEvent.at(node, "scaled", position=pos, old=o, new=n,
                                           detail={"packed": packed, "expr": a.name, "n": len(args)}))
            g = math.gcd(n, o)
            with node.graph.inserting_before(node):
                scaled = node.graph.call_function(operator.mul, (a, n // g))
                out.append(node.graph.call_function(operator.floordiv, (scaled, o // g)))
        else:
            out.append(a)
    return out


def _changed(old, new) -> str:
    """Only the sizes that changed: 'dim 2: 8 → 4' (the rest, batch and sequence included, stay as they are)."""
    return ", ".join(f"dim {d}: {o} → {n}" for d, (o, n) in enumerate(zip(old, new)) if o != n) or "as before"


def _reshape(ctx: RewriteContext, node: fx.Node, old) -> str | None:
    """view / reshape / expand: the sizes written in the call."""
    shapes = ctx.shapes
    if not isinstance(old, tuple):
        return None
    new = list(shapes.new(node))
    if new == list(old) and not any(_reads_changed(shapes, a) for a in node.all_input_nodes[1:]):
        return None
    args = list(node.args)
    if len(args) == 2 and isinstance(args[1], (list, tuple)):
        args[1] = type(args[1])(patch_sizes(ctx, node, args[1], new, old, packed=True))
    elif "shape" in node.kwargs or "size" in node.kwargs:
        key = "shape" if "shape" in node.kwargs else "size"
        node.kwargs = {**node.kwargs, key: patch_sizes(ctx, node, node.kwargs[key], new, old, packed=True)}
        return ""  # changed, nothing to note
    else:
        args[1:] = patch_sizes(ctx, node, args[1:], new, old)
    if tuple(args) == node.args:
        return None
    node.args = tuple(args)
    return f"sizes {_changed(old, new)}"


def _unflatten(ctx: RewriteContext, node: fx.Node, old) -> str | None:
    """unflatten(dim, sizes): the sizes the one dim splits into."""
    shapes = ctx.shapes
    if not isinstance(old, tuple):
        return None
    dim, sizes = node.args[1], node.args[2]
    dim %= len(shapes.old(node.args[0]))
    new = list(shapes.new(node))[dim: dim + len(sizes)]
    patched = patch_sizes(ctx, node, sizes, new, old[dim: dim + len(sizes)], packed=True)
    if list(patched) == list(sizes):
        return None
    node.args = (node.args[0], dim, type(sizes)(patched), *node.args[3:])
    return f"sizes {_changed(old[dim: dim + len(sizes)], new)}"


_SPLIT_ARG = ("split_size_or_sections", "split_size", "chunks", "indices_or_sections", "sections", "indices")


def _split(ctx: RewriteContext, node: fx.Node, old) -> str | None:
    """split / chunk / tensor_split: each piece's new width, as ``torch.split(x, sizes, dim=dim)``."""
    shapes = ctx.shapes
    if not isinstance(old, list):
        return None
    x = node.args[0]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= len(shapes.old(x))
    old_sizes = [s[dim] for s in old]
    name = shapes.traced_name(node)
    sizes = [ctx.plan.new_size(("v", f"{name}#{k}", dim)) for k in range(len(old))]
    if sizes == old_sizes:
        return None
    if any(s == 0 for s in sizes):
        raise node_error(node, "the split would produce an empty piece")
    given = node.args[1] if len(node.args) > 1 else next((node.kwargs[k] for k in _SPLIT_ARG if k in node.kwargs), None)
    name = str(node.target)
    # what the user's call gives: equal pieces (chunk, tensor_split into n sections), split
    # points (tensor_split at indices) or the sizes themselves (split)
    sections = "chunk" in name or ("tensor_split" in name and isinstance(given, int))
    ctx.events.append(SizeEvent.at(node, "split", position=1, old=given, new=sizes,
                                   detail={"chunk": sections, "indices": "tensor_split" in name and not sections,
                                           "old_sizes": old_sizes}))
    node.op, node.target = "call_function", torch.split
    node.args, node.kwargs = (x, sizes), {"dim": dim}
    return f"split sizes → {sizes}"


def _sdpa(ctx: RewriteContext, node: fx.Node, old) -> str | None:
    """scaled_dot_product_attention: its implicit 1/√E stays the original head dim's."""
    shapes = ctx.shapes
    q = node.args[0]
    e_old = shapes.old(q)[-1]
    e_new = shapes.new_size(q, len(shapes.old(q)) - 1)
    scale = sdpa_scale(node, e_old)
    if scale is None or e_new == e_old:
        return None
    ctx.events.append(SizeEvent.at(node, "sdpa_scale", old=e_old, new=e_new))
    node.kwargs = {**node.kwargs, "scale": scale}
    return f"scale kept at 1/√{e_old}"


def _conv_groups(ctx: RewriteContext, node: fx.Node, old) -> str | None:
    """Functional depthwise conv (groups == in channels): as many groups as channels kept;
    grouped conv: as many groups as its group axis keeps (whole groups went)."""
    shapes = ctx.shapes
    x = node.args[0]
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    axis = group_slot(shapes.traced_name(node) or node.name)
    if groups > 1 and groups == shapes.old(x)[1]:
        new = shapes.new_size(x, 1)
    elif groups > 1 and axis in ctx.plan.dg.offset:
        new = ctx.plan.new_size(axis)
    else:
        return None
    if new == groups:
        return None
    ctx.events.append(SizeEvent.at(node, "literal", position="groups", old=groups, new=new))
    if len(node.args) > 6:
        node.args = (*node.args[:6], new, *node.args[7:])
    else:
        node.kwargs = {**node.kwargs, "groups": new}
    return ""


def _group_norm(ctx: RewriteContext, node: fx.Node, old) -> str | None:
    """Functional group norm: whole groups went, so as many fewer groups."""
    shapes = ctx.shapes
    x, groups = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs["num_groups"]
    c_old, c_new = shapes.old(x)[1], shapes.new_size(x, 1)
    if c_new == c_old:
        return None
    new_groups = groups * c_new // c_old
    if len(node.args) > 1:
        node.args = (x, new_groups, *node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "num_groups": new_groups}
    return f"num_groups → {new_groups}"


Patcher = Callable[[RewriteContext, fx.Node, Any], "str | None"]
"""``(ctx, node, its old shape) -> None`` (nothing to patch) or a note ("" = changed, nothing to say)."""

PATCHERS: dict[Any, Patcher] = {}
for _ops, _patcher in [(RESHAPES, _reshape), (UNFLATTENS, _unflatten), (SPLITS, _split), (SDPA, _sdpa),
                       ((*FUNCTIONAL_CONVS, *FUNCTIONAL_CONV_TRANSPOSES), _conv_groups),  # groups: args[6] in both
                       (FUNCTIONAL_GROUP_NORMS, _group_norm)]:
    for _op in _ops:
        assert _op not in PATCHERS, f"{_op} has two patchers"
        PATCHERS[_op] = _patcher


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    shapes = ctx.shapes
    notes: list[str] = []
    modified = False
    for node in list(gm.graph.nodes):
        patch = PATCHERS.get(node.target) if node.op in ("call_function", "call_method") else None
        note = patch(ctx, node, shapes.old(node)) if patch is not None else None
        if note is not None:
            modified = True
            if note:
                notes.append(f"{node.name}: {note}")
    return PassResult(gm, modified, notes)
