"""Patch sizes written into the graph: view/reshape literals, split/chunk sizes,
functional depthwise-conv groups. Sizes computed at run time (``x.size(1)``) need none."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from slimc.passes import PassResult, RewriteContext

from slimc.shape_rules import aten

RESHAPES = {"view", "reshape", torch.reshape, *aten("view.default", "reshape.default", "_unsafe_view.default")}
CONVS = {F.conv1d, F.conv2d, F.conv3d, *aten("conv1d.default", "conv2d.default", "conv3d.default")}
SPLITS = {"split", torch.split, "chunk", torch.chunk, *aten("split.Tensor", "split_with_sizes.default", "chunk.default")}


def _new_shape(plan, name: str, old: tuple) -> list[int]:
    return [plan.new_size(("v", name, d)) for d in range(len(old))]


def _patch_sizes(args, new: list[int]):
    """Replace literal ints (not -1) in a size list with the new sizes."""
    return [n if isinstance(a, int) and a != -1 else a for a, n in zip(args, new)]


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    plan = ctx.plan
    shapes = plan.dg.shapes
    notes: list[str] = []
    modified = False
    for node in list(gm.graph.nodes):
        old = shapes.get(node.name)
        if node.target in RESHAPES and node.op in ("call_method", "call_function") and isinstance(old, tuple):
            new = _new_shape(plan, node.name, old)
            if new == list(old):
                continue
            args = list(node.args)
            if len(args) == 2 and isinstance(args[1], (list, tuple)):
                args[1] = type(args[1])(_patch_sizes(args[1], new))
            elif "shape" in node.kwargs:
                node.kwargs = {**node.kwargs, "shape": _patch_sizes(node.kwargs["shape"], new)}
            else:
                args[1:] = _patch_sizes(args[1:], new)
            if tuple(args) != node.args:
                node.args = tuple(args)
                modified = True
                notes.append(f"{node.name}: sizes → {new}")
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
            node.op, node.target = "call_function", torch.split
            node.args, node.kwargs = (x, sizes), {"dim": dim}
            modified = True
            notes.append(f"{node.name}: split sizes → {sizes}")
        elif node.target in CONVS:
            x = node.args[0]
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            cin_old = shapes[x.name][1]
            if groups > 1 and groups == cin_old:
                cin_new = plan.new_size(("v", x.name, 1))
                if cin_new != cin_old:
                    if len(node.args) > 6:
                        a = list(node.args)
                        a[6] = cin_new
                        node.args = tuple(a)
                    else:
                        node.kwargs = {**node.kwargs, "groups": cin_new}
                    modified = True
    return PassResult(gm, modified, notes)
