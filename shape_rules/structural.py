"""Structure: cat / split / chunk along any dim, tuple items, transpose / permute,
and shape queries (size, dim) that read a tensor without touching its channels."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from slimc.shape_rules import Coupling, OpView, Unsupported, aten, arange, op_name, shape_rule


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


def static_range(start: Any, stop: Any, step: Any, n: int) -> range | None:
    """The positions ``x[start:stop:step]`` picks along a dim of size ``n``, if its bounds are
    ints (a computed bound — a sequence length read at run time — gives None)."""
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (start, stop, step)):
        return None
    if step not in (None, 1):
        return None
    return range(n)[slice(start, stop)]


def index_positions(k: Any, nd: int) -> list[tuple[int | None, Any, int | None]]:
    """``x[k]`` on an ``nd``-dim tensor, normalized: (position in ``k`` or None for an implied
    full slice, the index, the input dim it applies to or None for a new dim)."""
    idx = list(k) if isinstance(k, tuple) else [k]
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out: list[tuple[int | None, Any, int | None]] = []
    d = 0
    for pos, i in enumerate(idx):
        if i is Ellipsis:
            for _ in range(nd - n_real):
                out.append((None, slice(None), d))
                d += 1
        elif i is None:
            out.append((pos, None, None))
        else:
            out.append((pos, i, d))
            d += 1
    while d < nd:
        out.append((None, slice(None), d))
        d += 1
    return out


def gather_rows(op: OpView, x: fx.Node, index: fx.Node) -> Coupling | Unsupported:
    """``x[idx]`` with an integer tensor ``idx``: rows of ``x`` picked at run time (dim 0 is
    fixed), ``idx``'s dims lead the output, ``x``'s other dims pass — a relative position bias
    table ``table[index]`` keeps one column per head, so heads still go."""
    xs, si, out = op.shape(x), op.shape(index), op.out_shape
    if xs is None or si is None or not isinstance(out, tuple) or len(out) != len(si) + len(xs) - 1:
        return Unsupported("indexing with a tensor that is not an integer index of dim 0")
    c = Coupling()
    c.barrier(op.slot(x, 0), "rows picked by an index tensor")
    for d in range(len(si)):
        if op.is_param(index):  # an index buffer: positions, no channels
            c.cover(op.slot(index, d))
            c.barrier(op.out(d), "positions given by an index tensor")
        else:
            c.flow(op.slot(index, d), op.out(d))
    for d in range(1, len(xs)):
        _pick_dim(op, c, x, d, len(si) + d - 1, None, True, "")
    return c


@shape_rule(*aten("index.Tensor"))
def index_tensor(op: OpView) -> Coupling | Unsupported:
    """``aten.index(x, [idx])``: ``x[idx]`` at ATen level (see ``gather_rows``)."""
    x, indices = op.arg(0), op.arg(1, "indices")
    if not isinstance(indices, (list, tuple)) or len(indices) != 1 or not isinstance(indices[0], fx.Node):
        return Unsupported("indexing with several index tensors")
    return gather_rows(op, x, indices[0])


def _index(op: OpView, x: fx.Node, k) -> Coupling | Unsupported:
    """x[...] with full slices (dim passes), None (new size-1 dim), Ellipsis, ints (that dim
    is fixed) and partial slices (an offset range of the dim: ``qkv[..., :q_size]`` keeps the
    channels it picks; computed bounds fix the dim). Tensor indices are not supported."""
    xs = op.shape(x)
    if xs is None:
        return Unsupported("indexing a non-tensor")
    idx = list(k) if isinstance(k, tuple) else [k]
    if isinstance(idx[0], fx.Node) and all(i == slice(None) for i in idx[1:]):
        return gather_rows(op, x, idx[0])
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
        return Unsupported("advanced indexing with tensor or list indices (other than x[idx])")
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
            _pick_dim(op, c, x, d_in, d_out, None if full else static_range(i.start, i.stop, i.step, xs[d_in]),
                      full, "sliced (x[a:b] with computed bounds)")
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


@shape_rule(*EXPANDS, "expand_as")
def expand(op: OpView) -> Coupling | Unsupported:
    """expand: dims kept pass (a parameter expanded into the stream, a cls token, is a
    source); size-1 dims broadcast to n and new leading dims are fixed."""
    x = op.arg(0, "input")
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(out, tuple):
        return Unsupported("expand of a non-tensor")
    c = Coupling()
    lead = len(out) - len(xs)
    for od in range(lead):
        if out[od] > 1:
            c.barrier(op.out(od), "new dim made by expand")
        else:
            c.cover(op.out(od))
    for d, n in enumerate(xs):
        od = lead + d
        if n == out[od]:
            if op.is_param(x):
                c.param("source", op.slot(x, d), op.out(od), term=0)
            else:
                c.flow(op.slot(x, d), op.out(od))
        else:
            c.cover(op.slot(x, d))
            c.barrier(op.out(od), "broadcast from size 1 by expand")
    for extra in op.inputs[1:]:  # expand_as(other): other's sizes are only read
        for d in range(len(op.shape(extra) or ())):
            c.cover(op.slot(extra, d))
    return c


@shape_rule(*aten("select.int"))
def select(op: OpView) -> Coupling | Unsupported:
    """select(dim, i) (``x[:, 0]`` at ATen level): ``dim`` is fixed, other dims pass."""
    x, dim = op.arg(0), op.arg(1)
    xs = op.shape(x)
    if xs is None or not isinstance(dim, int):
        return Unsupported("select along a computed dim")
    dim %= len(xs)
    c = Coupling()
    c.barrier(op.slot(x, dim), "indexed by an int (one element selected)")
    for d in range(len(xs)):
        if d != dim:
            c.flow(op.slot(x, d), op.out(d - (d > dim)))
    return c


def _pick_dim(op: OpView, c: Coupling, x: fx.Node, d_in: int, d_out: int, picked: range | None, whole: bool,
              why: str) -> None:
    """Dim ``d_in`` of ``x`` → ``d_out`` of the output: whole, an offset range (element i of the
    output is element ``picked[i]`` of the input), or fixed (positions not known statically)."""
    if not whole and picked is None:
        c.barrier(op.slot(x, d_in), why)
        c.barrier(op.out(d_out), why)
        return
    idx = None if whole else arange(len(picked)) + picked.start
    if op.is_param(x):
        c.param("follower", op.slot(x, d_in), op.out(d_out), idx, None, term=0)
    else:
        c.flow(op.slot(x, d_in), op.out(d_out), idx, None)


def _pick(op: OpView, x: fx.Node, dim: int, picked: range | None, why: str) -> Coupling:
    """x with positions picked along ``dim`` (``picked``: which, if static); other dims pass."""
    c = Coupling()
    n = op.shape(x)[dim]
    for d in range(len(op.shape(x))):
        if d == dim:
            whole = picked is not None and picked == range(n)
            _pick_dim(op, c, x, d, d, picked, whole, why)
        else:
            _pick_dim(op, c, x, d, d, None, True, why)
    return c


@shape_rule(*aten("slice.Tensor"))
def slice_(op: OpView) -> Coupling | Unsupported:
    """slice(dim, a, b) (``x[:, a:b]`` at ATen level): the picked range of ``dim`` passes at its
    offset (a fused q/k/v projection sliced into q, k, v keeps heads); computed bounds fix it."""
    x, dim = op.arg(0), op.arg(1, "dim", 0)
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(dim, int) or not isinstance(out, tuple):
        return Unsupported("slice along a computed dim")
    dim %= len(xs)
    picked = range(xs[dim]) if xs[dim] == out[dim] else \
        static_range(op.arg(2, "start"), op.arg(3, "end"), op.arg(4, "step", 1), xs[dim])
    return _pick(op, x, dim, picked, "sliced (x[a:b] with computed bounds)")


@shape_rule(*aten("_assert_tensor_metadata.default"))
def assertion(op: OpView) -> Coupling:
    """A run-time check of dtype/shape: reads its input, touches no channel."""
    c = Coupling()
    for x in op.inputs:
        for d in range(len(op.shape(x) or ())):
            c.cover(op.slot(x, d))
    return c


@shape_rule("narrow", torch.narrow, *aten("narrow.default"))
def narrow(op: OpView) -> Coupling | Unsupported:
    """narrow(dim, start, length): the whole dim passes; a part of it is fixed positions."""
    x, dim, start = op.arg(0, "input"), op.arg(1, "dim"), op.arg(2, "start")
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(dim, int) or not isinstance(out, tuple):
        return Unsupported("narrow along a computed dim")
    dim %= len(xs)
    length = op.arg(3, "length")
    picked = static_range(start, start + length, 1, xs[dim]) if isinstance(start, int) and isinstance(length, int) else None
    return _pick(op, x, dim, picked, "narrowed (computed bounds)")


FACTORIES = (torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.rand, torch.randn, "new_zeros",
             "new_ones", "new_full", "new_empty",
             *aten("arange.default", "arange.start", "arange.start_step", "zeros.default", "ones.default",
                   "full.default", "empty.memory_format", "new_zeros.default", "new_ones.default",
                   "new_full.default", "new_empty.default"))
LIKE = (torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like, torch.randn_like,
        *aten("zeros_like.default", "ones_like.default", "full_like.default", "empty_like.default"))


@shape_rule(*FACTORIES, *LIKE)
def factory(op: OpView) -> Coupling | Unsupported:
    """A new tensor (arange, zeros, ones_like…): its dims are positions (fixed); a ``*_like``
    or ``new_*`` source tensor is only read for its shape."""
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
