"""Structure: cat / split / chunk along any dim, tuple items, transpose / permute,
and shape queries (size, dim) that read a tensor without touching its channels."""
from __future__ import annotations

import operator

import torch
from torch import fx

from slimc.shape_rules import Coupling, OpView, Unsupported, aten, arange, shape_rule


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


@shape_rule(torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split",
            *aten("split.Tensor", "split_with_sizes.default", "chunk.default"))
def split(op: OpView) -> Coupling | Unsupported:
    """split / chunk: each piece is an offset range of the input along ``dim``."""
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
            else:
                c.flow(op.slot(x, d), op.out(d, item=k))
        off += n
    return c


@shape_rule(operator.getitem)
def getitem(op: OpView) -> Coupling | Unsupported:
    """Item k of a tuple-valued node (split pieces) is that piece, unchanged."""
    src, k = op.node.args
    if not isinstance(src, fx.Node):
        return Unsupported("indexing a constant")
    if isinstance(op.shapes.get(src.name), list):
        if not isinstance(k, int):
            return Unsupported("tuple item with a computed index")
        shp = op.shapes[src.name][k]
        if not isinstance(shp, tuple):
            return Unsupported("item of a non-tensor tuple")
        c = Coupling()
        for d in range(len(shp)):
            c.flow(("v", f"{src.name}#{k}", d), op.out(d))
        for j, other in enumerate(op.shapes[src.name]):  # the other pieces are not read here
            if j != k and isinstance(other, tuple):
                for d in range(len(other)):
                    c.cover(("v", f"{src.name}#{j}", d))
        return c
    return _index(op, src, k)


def _index(op: OpView, x: fx.Node, k) -> Coupling | Unsupported:
    """x[...] with full slices (dim passes), None (new size-1 dim), Ellipsis, ints and
    partial slices (that dim is fixed). Tensor indices are not supported."""
    xs = op.shape(x)
    if xs is None:
        return Unsupported("indexing a non-tensor")
    idx = list(k) if isinstance(k, tuple) else [k]
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
        return Unsupported("advanced indexing with tensor or list indices")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        idx[e: e + 1] = [slice(None)] * (len(xs) - n_real)
    idx += [slice(None)] * (len(xs) - sum(1 for i in idx if i is not None))
    c = Coupling()
    d_in, d_out = 0, 0
    for i in idx:
        if i is None:
            c.cover(op.out(d_out))
            d_out += 1
        elif isinstance(i, int):
            c.barrier(op.slot(x, d_in), "indexed by an int (one element selected)")
            d_in += 1
        elif isinstance(i, slice):
            full = i == slice(None) or (i.start in (None, 0) and i.stop is None and i.step in (None, 1))
            if full and op.is_param(x):
                c.param("follower", op.slot(x, d_in), op.out(d_out), term=0)
            elif full:
                c.flow(op.slot(x, d_in), op.out(d_out))
            else:
                c.barrier(op.slot(x, d_in), "sliced (x[a:b] picks fixed positions)")
                c.barrier(op.out(d_out), "sliced (x[a:b] picks fixed positions)")
            d_in += 1
            d_out += 1
        else:
            return Unsupported(f"indexing with {type(i).__name__}")
    return c


_TRANSPOSES = ("transpose", torch.transpose, "swapaxes", torch.swapaxes, *aten("transpose.int"))


def _perm(op: OpView, nd: int) -> list[int] | None:
    t = op.node.target
    if t in _TRANSPOSES:
        d0, d1 = op.arg(1, "dim0"), op.arg(2, "dim1")
        if not (isinstance(d0, int) and isinstance(d1, int)):
            return None
        p = list(range(nd))
        p[d0 % nd], p[d1 % nd] = p[d1 % nd], p[d0 % nd]
        return p
    if t == "t":
        return list(range(nd))[::-1]
    dims = op.node.args[1:] if t == "permute" else op.arg(1, "dims")
    if t == "permute" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return [d % nd for d in dims]


@shape_rule("transpose", torch.transpose, "permute", torch.permute, "t", "swapaxes", torch.swapaxes,
            *aten("transpose.int", "permute.default"))
def permute(op: OpView) -> Coupling | Unsupported:
    """transpose / permute: output dim i is input dim perm[i], one-to-one."""
    x = op.arg(0, "input")
    nd = len(op.shape(x))
    p = _perm(op, nd)
    if p is None:
        return Unsupported("permutation with computed dims")
    c = Coupling()
    for i, d in enumerate(p):
        c.flow(op.slot(x, d), op.out(i))
    return c


@shape_rule("size", "dim", "numel", getattr, "type", "__len__", len, *aten("sym_size.int", "sym_numel.default"))
def shape_query(op: OpView) -> Coupling | Unsupported:
    """Shape queries read sizes at run time, so the slim model reads the slim sizes."""
    if op.out_shape is not None:
        return Unsupported("attribute access that returns a tensor")
    c = Coupling()
    x = op.arg(0)
    if isinstance(x, fx.Node) and op.shape(x) is not None:
        for d in range(len(op.shape(x))):
            c.cover(op.slot(x, d))
    return c

