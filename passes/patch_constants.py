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

import torch
import torch.nn.functional as F
from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent

from slimc.shape_rules import aten
from slimc.shape_rules.attention import SDPA, sdpa_scale
from slimc.shape_rules.structural import EXPANDS, size_query

RESHAPES = {"view", "reshape", torch.reshape, *aten("view.default", "reshape.default", "_unsafe_view.default"), *EXPANDS}
CONVS = {F.conv1d, F.conv2d, F.conv3d, *aten("conv1d.default", "conv2d.default", "conv3d.default"),  # groups: args[6]
         F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
         *aten("conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input")}
GROUP_NORMS = {F.group_norm, *aten("group_norm.default")}
UNFLATTENS = {"unflatten", torch.unflatten, *aten("unflatten.int")}
SPLITS = {"split", torch.split, "chunk", torch.chunk, *aten("split.Tensor", "split_with_sizes.default", "chunk.default")}


def _new_shape(plan, name: str, old: tuple) -> list[int]:
    return [plan.new_size(("v", name, d)) for d in range(len(old))]


def _reads_changed(plan, n, seen: set | None = None) -> bool:
    """Does the (integer) value of ``n`` depend on the size of a dim whose size changed?"""
    seen = set() if seen is None else seen
    if not isinstance(n, fx.Node) or n in seen:
        return False
    seen.add(n)
    shapes = plan.dg.shapes
    q = size_query(n)
    if q is None and n.target is operator.getitem and isinstance(n.args[1], int) and isinstance(n.args[0], fx.Node):
        q = size_query(n.args[0])
        q = (q[0], n.args[1]) if q is not None and q[1] is None else q
    if q is not None:
        x, d = q
        old = shapes.get(x.name)
        if not isinstance(old, tuple):
            return False
        dims = range(len(old)) if d is None else [d % len(old)]
        return any(plan.new_size(("v", x.name, dd)) != old[dd] for dd in dims)
    if isinstance(shapes.get(n.name), (tuple, list)):
        return False  # a tensor: its sizes are not read here
    return any(_reads_changed(plan, a, seen) for a in n.all_input_nodes)


def _patch_sizes(ctx: RewriteContext, node: fx.Node, args, new: list[int], old: tuple, packed: bool = False):
    """Literal sizes become the new ones (-1 stays). A size computed at run time that reads
    a changed size becomes the new literal (channel dims are static); one that does not
    but must change — ``bsz * num_heads`` with heads removed — is scaled by new/old, which
    keeps a dynamic batch factor dynamic. Changes the user's code must follow are events."""
    plan = ctx.plan
    out = []
    for pos, (a, n, o) in enumerate(zip(args, new, old)):
        if isinstance(a, int) and a != -1:
            if a != n:
                ctx.events.append(SizeEvent.at(node, "literal", position=pos, old=a, new=n,
                                               detail={"packed": packed, "n": len(args)}))
            out.append(n)
        elif isinstance(a, fx.Node) and _reads_changed(plan, a):
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


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    plan = ctx.plan
    shapes = plan.dg.shapes
    notes: list[str] = []
    modified = False
    for node in list(gm.graph.nodes):
        old = shapes.get(node.name)
        if node.target in RESHAPES and node.op in ("call_method", "call_function") and isinstance(old, tuple):
            new = _new_shape(plan, node.name, old)
            if new == list(old) and not any(_reads_changed(plan, a) for a in node.all_input_nodes[1:]):
                continue
            args = list(node.args)
            if len(args) == 2 and isinstance(args[1], (list, tuple)):
                args[1] = type(args[1])(_patch_sizes(ctx, node, args[1], new, old, packed=True))
            elif "shape" in node.kwargs or "size" in node.kwargs:
                key = "shape" if "shape" in node.kwargs else "size"
                node.kwargs = {**node.kwargs, key: _patch_sizes(ctx, node, node.kwargs[key], new, old, packed=True)}
                modified = True
            else:
                args[1:] = _patch_sizes(ctx, node, args[1:], new, old)
            if tuple(args) != node.args:
                node.args = tuple(args)
                modified = True
                notes.append(f"{node.name}: sizes {_changed(old, new)}")
        elif node.target in UNFLATTENS and isinstance(old, tuple):
            dim, sizes = node.args[1], node.args[2]
            dim %= len(shapes[node.args[0].name])
            new = _new_shape(plan, node.name, old)[dim: dim + len(sizes)]
            patched = _patch_sizes(ctx, node, sizes, new, old[dim: dim + len(sizes)], packed=True)
            if list(patched) != list(sizes):
                node.args = (node.args[0], dim, type(sizes)(patched), *node.args[3:])
                modified = True
                notes.append(f"{node.name}: sizes {_changed(old[dim: dim + len(sizes)], new)}")
        elif node.target in SPLITS and isinstance(old, list):
            x = node.args[0]
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            nd = len(shapes[x.name])
            dim %= nd
            sizes = [plan.new_size(("v", f"{node.name}#{k}", dim)) for k in range(len(old))]
            if sizes == [s[dim] for s in old]:
                continue
            if any(s == 0 for s in sizes):
                raise RuntimeError(f"split '{node.name}' would produce an empty piece")
            given = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections",
                                                                               node.kwargs.get("chunks"))
            ctx.events.append(SizeEvent.at(node, "split", position=1, old=given, new=sizes,
                                           detail={"chunk": "chunk" in str(node.target), "old_sizes": [s[dim] for s in old]}))
            node.op, node.target = "call_function", torch.split
            node.args, node.kwargs = (x, sizes), {"dim": dim}
            modified = True
            notes.append(f"{node.name}: split sizes → {sizes}")
        elif node.target in SDPA:
            q = node.args[0]
            e_old = shapes[q.name][-1]
            scale = sdpa_scale(node, e_old)
            if scale is not None and plan.new_size(("v", q.name, len(shapes[q.name]) - 1)) != e_old:
                ctx.events.append(SizeEvent.at(node, "sdpa_scale", old=e_old,
                                               new=plan.new_size(("v", q.name, len(shapes[q.name]) - 1))))
                node.kwargs = {**node.kwargs, "scale": scale}
                modified = True
                notes.append(f"{node.name}: scale kept at 1/√{e_old}")
        elif node.target in CONVS:
            x = node.args[0]
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            cin_old = shapes[x.name][1]
            if groups > 1 and groups == cin_old:
                cin_new = plan.new_size(("v", x.name, 1))
                if cin_new != cin_old:
                    ctx.events.append(SizeEvent.at(node, "literal", position="groups", old=groups, new=cin_new))
                    if len(node.args) > 6:
                        a = list(node.args)
                        a[6] = cin_new
                        node.args = tuple(a)
                    else:
                        node.kwargs = {**node.kwargs, "groups": cin_new}
                    modified = True
        elif node.target in GROUP_NORMS:  # whole groups went: as many fewer groups
            x, groups = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs["num_groups"]
            c_old, c_new = shapes[x.name][1], plan.new_size(("v", x.name, 1))
            if c_new != c_old:
                new_groups = groups * c_new // c_old
                if len(node.args) > 1:
                    node.args = (x, new_groups, *node.args[2:])
                else:
                    node.kwargs = {**node.kwargs, "num_groups": new_groups}
                modified = True
                notes.append(f"{node.name}: num_groups → {new_groups}")
    return PassResult(gm, modified, notes)
