"""Structure: cat / split / chunk along any dim, expand, factories, and shape queries (size, dim) that read a tensor without touching its channels."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from slimc.shape_rules import Copies, Coupling, Link, OpView, Unsupported, aten, arange, op_name, shape_rule
from slimc.shape_rules.permute import permutation, permute


@shape_rule(torch.cat, torch.concat, torch.concatenate, *aten("cat.default"))
def cat(op: OpView) -> Coupling | Unsupported:
    """cat: along ``dim`` each input maps to its offset range; other dims pass (one term each)."""
    xs = op.arg(0, "tensors")
    dim = op.arg(1, "dim", 0)
    if not isinstance(xs, (list, tuple)) or not all(isinstance(x, fx.Node) for x in xs) or not isinstance(dim, int):
        return Unsupported("cat of a computed list or along a computed dim")
    out = op.out_shape
    dim %= len(out)
    c = Coupling()
    off = 0
    for t, x in enumerate(xs):
        n = op.shape(x)[dim]
        for d in range(len(out)):
            if d == dim:
                c.flow(op.slot(x, d), op.out(d), None, arange(n) + off, term=t)
            else:
                c.flow(op.slot(x, d), op.out(d), term=t)
        off += n
    return c


SPLITS = (torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split",
          *aten("split.Tensor", "split_with_sizes.default", "chunk.default", "tensor_split.sections",
                "tensor_split.indices"))


@shape_rule(*SPLITS)
def split(op: OpView) -> Coupling | Unsupported:
    """split / chunk / tensor_split: each piece is an offset range of the input along ``dim``;
    a one-element piece (multi-query attention's one key/value head) cannot be emptied."""
    x = op.arg(0, "input")
    out = op.out_shape
    if not isinstance(out, list):
        return Unsupported("split with an unknown number of pieces")
    dim = op.arg(2, "dim", 0)
    if not isinstance(dim, int):
        return Unsupported("split along a computed dim")
    xs = op.shape(x)
    dim %= len(xs)
    c = Coupling()
    off = 0
    for k, shp in enumerate(out):
        n = shp[dim]
        for d in range(len(xs)):
            if d == dim:
                c.flow(op.slot(x, d), op.out(d, item=k), arange(n) + off, None)
                if n == 1 and xs[d] > 1:
                    c.hold(op.out(d, item=k), "a split's one-element piece (it cannot be emptied)")
            else:
                c.flow(op.slot(x, d), op.out(d, item=k))
        off += n
    return c


SYM_SIZE = tuple(aten("sym_size.int"))
SYM_NUMEL = tuple(aten("sym_numel.default"))

# ops whose int arguments are sizes: a size read there may change (patch_constants fixes it)
SIZE_CONSUMERS = {
    "view", "reshape", torch.reshape, "expand", "unflatten", torch.unflatten, "new_zeros", "new_ones",
    "new_empty", "new_full", torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, F.layer_norm,
    *aten("view.default", "layer_norm.default", "reshape.default", "_unsafe_view.default", "expand.default"),
}


def size_query(node: fx.Node) -> tuple[fx.Node, int | None] | None:
    """(tensor, dim read — None for the whole size —) if ``node`` reads a tensor's size."""
    t, args = node.target, node.args
    if not args or not isinstance(args[0], fx.Node):
        return None
    if t == "size" or t in SYM_SIZE:
        d = args[1] if len(args) > 1 else node.kwargs.get("dim")
        return args[0], d
    if (t is getattr and len(args) > 1 and args[1] == "shape") or t in ("numel", *SYM_NUMEL):
        return args[0], None
    return None


def size_reads(node: fx.Node) -> list[tuple[int | None, fx.Node]]:
    """(dim read — None for all —, node carrying the value) for a shape query node."""
    q = size_query(node)
    if q is None:
        return []
    if q[1] is not None:
        return [(q[1], node)]
    return [(u.args[1], u) if u.target is operator.getitem and isinstance(u.args[1], int) else (None, node)
            for u in node.users]


def _used_as_size_only(n: fx.Node, shapes: dict, depth: int = 0) -> bool:
    """Does the value of ``n`` reach only size arguments (through integer arithmetic)?"""
    if depth > 50:
        return False
    for u in n.users:
        if u.target in SIZE_CONSUMERS and u.args and u.args[0] is not n:
            continue
        if u.op == "output" or isinstance(shapes.get(u.name), (tuple, list)):
            return False  # into tensor arithmetic (a scale), a tensor op, or the model's output
        if not _used_as_size_only(u, shapes, depth + 1):
            return False
    return True


@shape_rule("size", "dim", "numel", getattr, "type", "__len__", len, *aten("sym_size.int", "sym_numel.default"))
def shape_query(op: OpView) -> Coupling | Unsupported:
    """Shape queries read sizes at run time: a size used for a view reads the slim size
    (patched where needed); a size used as a value (a scale) fixes that dim."""
    if op.out_shape is not None:
        if permutation(op) is not None:  # x.T, x.mT (fx's getattr): a transpose
            return permute(op)
        return Unsupported("attribute access that returns a tensor")
    c = Coupling()
    x = op.arg(0)
    if isinstance(x, fx.Node) and op.shape(x) is not None:
        nd = len(op.shape(x))
        for d in range(nd):
            c.cover(op.slot(x, d))
        for d, carrier in size_reads(op.node):
            if not _used_as_size_only(carrier, op.shapes):
                for dd in range(nd) if d is None else [d % nd]:
                    c.barrier(op.slot(x, dd), f"its size is used as a value at '{carrier.name}' (e.g. a scale)")
    return c



@shape_rule("unbind", torch.unbind, *aten("unbind.int"))
def unbind(op: OpView) -> Coupling | Unsupported:
    """unbind(dim): one output per index of ``dim`` (so that dim is fixed); other dims pass."""
    x = op.arg(0, "input")
    dim = op.arg(1, "dim", 0)
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(out, list) or not isinstance(dim, int):
        return Unsupported("unbind along a computed dim")
    dim %= len(xs)
    c = Coupling()
    c.barrier(op.slot(x, dim), "unbind: one output per index")
    for k in range(len(out)):
        for d in range(len(xs)):
            if d != dim:
                c.flow(op.slot(x, d), op.out(d - (d > dim), item=k))
    return c


EXPANDS = ("expand", *aten("expand.default"))


def _expand_sizes(op: OpView) -> list | None:
    """The sizes written in an expand call (None for ``expand_as``)."""
    if op.node.target == "expand_as":
        return None
    sizes = list(op.node.args[1:]) if op.node.op == "call_method" else op.arg(1, "size")
    if op.node.op == "call_method" and len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    return list(sizes) if isinstance(sizes, (list, tuple)) else None


def _broadcast_dim(op: OpView, c: Coupling, x, d: int | None, od: int, size) -> None:
    """Output dim ``od`` broadcast from size 1 (``d``; None: a new leading dim). Its positions
    are copies: where the count is written in the call (``repeat_kv``'s ``n_rep``) any of them
    may go, the literal patched, so a query head reading a shared key/value head can go on its
    own; a count read at run time (a batch, a length) is fixed."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 1:
        c.cover(op.out(od))
        c.constraints.append(Copies(op.out(od), "copies of an expand merged with another free dim"))
        if op.shape(x):
            c.feed(op.slot(x, d if d is not None else 0), op.out(od), term=0)
    elif op.out_shape[od] > 1:
        c.barrier(op.out(od), "new dim made by expand" if d is None else "broadcast from size 1 by expand")
    else:
        c.cover(op.out(od))


@shape_rule(*EXPANDS, "expand_as")
def expand(op: OpView) -> Coupling | Unsupported:
    """expand: dims kept pass (a parameter expanded into the stream, a cls token, is a
    source); a dim broadcast from size 1 holds copies (see :func:`_broadcast_dim`)."""
    x = op.arg(0, "input")
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(out, tuple):
        return Unsupported("expand of a non-tensor")
    sizes = _expand_sizes(op)
    sizes = sizes if sizes is not None and len(sizes) == len(out) else [None] * len(out)
    c = Coupling()
    lead = len(out) - len(xs)
    for od in range(lead):
        _broadcast_dim(op, c, x, None, od, sizes[od])
    for d, n in enumerate(xs):
        od = lead + d
        if n == out[od]:
            if op.is_param(x):
                c.param("source", op.slot(x, d), op.out(od), term=0)
            else:
                c.flow(op.slot(x, d), op.out(od))
        else:
            c.cover(op.slot(x, d))
            _broadcast_dim(op, c, x, d, od, sizes[od])
    for extra in op.inputs[1:]:  # expand_as(other): other's sizes are only read
        for d in range(len(op.shape(extra) or ())):
            c.cover(op.slot(extra, d))
    return c


@shape_rule(*aten("_assert_tensor_metadata.default"))
def assertion(op: OpView) -> Coupling:
    """A run-time check of dtype/shape: reads its input, touches no channel."""
    c = Coupling()
    for x in op.inputs:
        for d in range(len(op.shape(x) or ())):
            c.cover(op.slot(x, d))
    return c


FILLS = (torch.zeros, torch.ones, torch.full, torch.empty, "new_zeros", "new_ones", "new_full", "new_empty",
         *aten("zeros.default", "ones.default", "full.default", "empty.memory_format", "new_zeros.default",
               "new_ones.default", "new_full.default", "new_empty.default"))
FILLS_LIKE = (torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like,
              *aten("zeros_like.default", "ones_like.default", "full_like.default", "empty_like.default"))
ZEROS = (torch.zeros, "new_zeros", torch.zeros_like, *aten("zeros.default", "new_zeros.default", "zeros_like.default"))
POSITIONAL = (torch.arange, torch.rand, torch.randn, torch.rand_like, torch.randn_like,
              *aten("arange.default", "arange.start", "arange.start_step"))


@shape_rule(*FILLS, *FILLS_LIKE)
def fill(op: OpView) -> Coupling | Unsupported:
    """A constant-filled new tensor (zeros, ones, full, empty, ``new_*``, ``*_like``): no
    position differs from another, so its dims may lose channels — a ``*_like`` joins its
    source's channels, literal sizes are patched (an LSTMCell's zero initial state);
    zeros are zero (and dead) whatever joins them."""
    out = op.out_shape
    if not isinstance(out, tuple):
        return Unsupported("factory with a non-tensor result")
    c = Coupling()
    like = op.node.target in FILLS_LIKE
    src = op.inputs[0] if op.inputs else None
    for x in op.inputs:
        for d in range(len(op.shape(x) or ())):
            c.cover(op.slot(x, d))
    for d in range(len(out)):
        if like and src is not None and op.shape(src) == out:
            c.links.append(Link("tie", op.slot(src, d), op.out(d), None, None, term=None))
        else:
            c.cover(op.out(d))
        if op.node.target in ZEROS:
            c.zeros.append(op.out(d))
    return c


@shape_rule(*POSITIONAL)
def factory(op: OpView) -> Coupling | Unsupported:
    """A new tensor whose positions differ (arange, rand, randn…): its dims are positions
    (fixed); a ``*_like`` source tensor is only read for its shape."""
    out = op.out_shape
    if not isinstance(out, tuple):
        return Unsupported("factory with a non-tensor result")
    c = Coupling()
    for x in op.inputs:
        for d in range(len(op.shape(x) or ())):
            c.cover(op.slot(x, d))
    for d in range(len(out)):
        c.barrier(op.out(d), f"new tensor made by {op_name(op.node.target)}")
    return c


@shape_rule(torch.stack, *aten("stack.default"))
def stack(op: OpView) -> Coupling | Unsupported:
    """stack(tensors, dim): the new dim holds one position per input (fixed); the other
    dims pass from every input (one term each)."""
    xs, dim = op.arg(0, "tensors"), op.arg(1, "dim", 0)
    out = op.out_shape
    if not isinstance(xs, (list, tuple)) or not all(isinstance(x, fx.Node) for x in xs) or not isinstance(dim, int) \
            or not isinstance(out, tuple):
        return Unsupported("stack of a computed list or along a computed dim")
    dim %= len(out)
    c = Coupling().barrier(op.out(dim), "stack: one position per input")
    for t, x in enumerate(xs):
        for d in range(len(op.shape(x))):
            c.flow(op.slot(x, d), op.out(d + (d >= dim)), term=t)
    return c
