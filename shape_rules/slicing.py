"""Indexing and slicing: ``x[...]`` (fx ``getitem``), ATen select / slice / narrow, and
``slice_scatter`` (what ``x[:, :c] += s`` becomes once functionalized).

A slice with literal bounds and step 1 is an *offset*, like a split piece: output position
j is input position start + j, the positions outside it are not read. So channels pass
through ``x[:, :c]`` (GhostNet's ``out[:, :self.out_chs]``, DPN's dual-path split, ReXNet's
partial residual) and the bounds are patched when the input loses channels
(``passes/patch_slices.py``: a bound becomes the count of kept channels before it). A step,
a computed bound or a one-element result fixes the dim instead.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import fx

from slimc.shape_rules import Coupling, Link, OpView, Unsupported, aten, arange, shape_rule, tensor_leaves

FIXED = "sliced (x[a:b] with a step or computed bounds picks fixed positions)"
PICKED = "the position an int index picks (x[..., i, :], select)"


def pick(c: Coupling, op: OpView, x: fx.Node, d: int, i: Any) -> None:
    """``x``'s dim ``d`` indexed by the int ``i``: that position stays (a barrier of its own),
    the others are not read here and may go (the index is patched to the kept position). A
    reshape of that dim keeps it whole (Falcon's grouped ``[q…, k, v]``, read at -2 and -1:
    a key/value group goes with its query heads)."""
    n = op.shape(x)[d]
    if not isinstance(i, int) or not -n <= i < n:
        c.barrier(op.slot(x, d), "indexed by a computed int")
        return
    held = ("v", f"{op.node.name}#picked{d}", 0)
    c.virtual[held] = 1
    c.links.append(Link("tie", op.slot(x, d), held, np.array([i % n]), np.array([0]), term=None))
    c.barrier(held, PICKED)
    c.cover(op.slot(x, d))


def slice_bounds(sl: slice, n: int) -> tuple[int, int] | None:
    """(start, stop) of a step-1 slice with literal bounds over ``n`` positions, else None."""
    if not all(v is None or isinstance(v, int) for v in (sl.start, sl.stop, sl.step)) or sl.step not in (None, 1):
        return None
    start, stop, _ = sl.indices(n)
    return start, max(start, stop)


def index_entries(k: Any, ndim: int) -> list[tuple[int | None, int | None, Any]] | None:
    """``x[k]`` entry by entry: (input dim, output dim, entry) with Ellipsis expanded and
    trailing full slices added; None (a new dim) has no input dim, an int no output dim.
    None if ``k`` holds tensors, lists or anything else this does not model."""
    idx = list(k) if isinstance(k, tuple) else [k]
    if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) or isinstance(i, bool) for i in idx):
        return None
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if idx.count(Ellipsis) > 1 or n_real > ndim:
        return None
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        idx[e: e + 1] = [slice(None)] * (ndim - n_real)
    idx += [slice(None)] * (ndim - sum(1 for i in idx if i is not None))
    out, d_in, d_out = [], 0, 0
    for i in idx:
        if i is None:
            out.append((None, d_out, i))
            d_out += 1
        elif isinstance(i, int):
            out.append((d_in, None, i))
            d_in += 1
        else:
            out.append((d_in, d_out, i))
            d_in += 1
            d_out += 1
    return out


def _range(c: Coupling, op: OpView, x: fx.Node, d_in: int, d_out: int, bounds: tuple[int, int] | None) -> None:
    """Couple ``x``'s dim ``d_in`` to output dim ``d_out`` through positions [start, stop)."""
    n, m = op.shape(x)[d_in], op.out_shape[d_out]
    if bounds == (0, n) and m == n:
        if op.is_param(x):
            c.param("follower", op.slot(x, d_in), op.out(d_out), term=0)
        else:
            c.flow(op.slot(x, d_in), op.out(d_out))
    elif bounds is None or m <= 1 or bounds[1] - bounds[0] != m:
        c.barrier(op.slot(x, d_in), FIXED if bounds is None else "one position picked by a slice")
        c.barrier(op.out(d_out), FIXED if bounds is None else "one position picked by a slice")
    elif op.is_param(x):
        c.param("follower", op.slot(x, d_in), op.out(d_out), arange(m) + bounds[0], None, term=0)
    else:
        c.flow(op.slot(x, d_in), op.out(d_out), arange(m) + bounds[0], None)


def _gather(op: OpView, x: fx.Node, k: tuple) -> Coupling | Unsupported:
    """x[:, idx] with one integer tensor index and full slices elsewhere: the indexed dim is
    gathered (fixed, like the index's own dims in the result); the other dims pass (LeViT's
    ``attention_biases[:, attention_bias_idxs]`` keeps its heads prunable)."""
    xs, out = op.shape(x), op.out_shape
    pos = next(i for i, it in enumerate(k) if isinstance(it, fx.Node))
    idx_shape = op.shape(k[pos])
    rest = [it for i, it in enumerate(k) if i != pos]
    if idx_shape is None or any(it != slice(None) for it in rest) or len(k) > len(xs):
        return Unsupported("advanced indexing with several tensor indices, or with slices beside one")
    c = Coupling()
    for d in range(len(idx_shape)):
        c.cover(op.slot(k[pos], d))
    why = "gathered by a tensor index (positions picked)"
    for d in range(len(xs)):
        if d == pos:
            c.barrier(op.slot(x, d), why)
            for j in range(len(idx_shape)):
                c.barrier(op.out(d + j), why)
            continue
        od = d if d < pos else d + len(idx_shape) - 1
        if op.is_param(x):
            c.param("follower", op.slot(x, d), op.out(od), term=0)
        else:
            c.flow(op.slot(x, d), op.out(od))
    return c


def index(op: OpView, x: fx.Node, k: Any) -> Coupling | Unsupported:
    """x[k] with slices, None, Ellipsis and ints (an int fixes its dim); one integer tensor
    index beside full slices gathers its dim (fixed)."""
    xs = op.shape(x)
    if xs is None or not isinstance(op.out_shape, tuple):
        return Unsupported("indexing a non-tensor")
    k_tuple = k if isinstance(k, tuple) else (k,)
    if sum(isinstance(it, fx.Node) for it in k_tuple) == 1 and op.shape(next(
            it for it in k_tuple if isinstance(it, fx.Node))) is not None:
        return _gather(op, x, k_tuple)
    entries = index_entries(k, len(xs))
    if entries is None:
        return Unsupported("advanced indexing with tensor or list indices")
    c = Coupling()
    for d_in, d_out, it in entries:
        if d_in is None:
            c.cover(op.out(d_out))
        elif d_out is None:
            pick(c, op, x, d_in, it)
        else:
            _range(c, op, x, d_in, d_out, slice_bounds(it, xs[d_in]))
    return c


@shape_rule(operator.getitem)
def getitem(op: OpView) -> Coupling | Unsupported:
    """Item k of a tuple-valued node (split pieces, an LSTM's (h, c)) is that piece,
    unchanged; ``x[...]`` of a tensor: slices with literal bounds pass their positions (an
    offset, patched when channels go), an int or a stepped slice fixes its dim."""
    src, k = op.node.args
    if not isinstance(src, fx.Node):
        return Unsupported("indexing a constant")
    items = op.shapes.get(src.name)
    if not isinstance(items, list):
        return index(op, src, k)
    if not isinstance(k, int) or not -len(items) <= k < len(items):
        return Unsupported("tuple item with a computed index")
    k %= len(items)  # spx[-1]
    c = Coupling()
    for j, shp in enumerate(items):
        for path, s in tensor_leaves(f"{src.name}#{j}", shp):
            for d in range(len(s)):
                if j == k:  # item k's tensors (a nested tuple keeps its layout)
                    c.flow(("v", path, d), ("v", op.node.name + path[len(f"{src.name}#{j}"):], d))
                else:  # the other items are not read here
                    c.cover(("v", path, d))
    return c


SELECTS = tuple(aten("select.int"))


@shape_rule(*SELECTS)
def select(op: OpView) -> Coupling | Unsupported:
    """select(dim, i) (``x[:, 0]`` at ATen level): position i of ``dim`` is held, other dims pass."""
    x, dim = op.arg(0), op.arg(1)
    xs = op.shape(x)
    if xs is None or not isinstance(dim, int):
        return Unsupported("select along a computed dim")
    dim %= len(xs)
    c = Coupling()
    pick(c, op, x, dim, op.arg(2, "index"))
    for d in range(len(xs)):
        if d != dim:
            c.flow(op.slot(x, d), op.out(d - (d > dim)))
    return c


def _along(op: OpView, x: fx.Node, dim: int, bounds: tuple[int, int] | None) -> Coupling:
    c = Coupling()
    for d in range(len(op.shape(x))):
        _range(c, op, x, d, d, bounds if d == dim else (0, op.shape(x)[d]))
    return c


SLICES = tuple(aten("slice.Tensor"))


@shape_rule(*SLICES)
def slice_(op: OpView) -> Coupling | Unsupported:
    """slice(dim, a, b, step) (``x[:, a:b]`` at ATen level): positions [a, b) pass (an
    offset, patched when channels go); a step > 1 fixes ``dim``."""
    x, dim = op.arg(0), op.arg(1, "dim", 0)
    xs = op.shape(x)
    if xs is None or not isinstance(dim, int) or not isinstance(op.out_shape, tuple):
        return Unsupported("slice along a computed dim")
    dim %= len(xs)
    sl = slice(op.arg(2, "start"), op.arg(3, "end"), op.arg(4, "step", 1))
    return _along(op, x, dim, slice_bounds(sl, xs[dim]))


NARROWS = ("narrow", torch.narrow, *aten("narrow.default"))


@shape_rule(*NARROWS)
def narrow(op: OpView) -> Coupling | Unsupported:
    """narrow(dim, start, length): positions [start, start + length) pass (patched when
    channels go)."""
    x, dim, start, length = op.arg(0, "input"), op.arg(1, "dim"), op.arg(2, "start"), op.arg(3, "length")
    xs = op.shape(x)
    if xs is None or not isinstance(dim, int) or not isinstance(op.out_shape, tuple):
        return Unsupported("narrow along a computed dim")
    dim %= len(xs)
    ok = isinstance(start, int) and isinstance(length, int)
    return _along(op, x, dim, slice_bounds(slice(start, start + length), xs[dim]) if ok else None)


SLICE_SCATTERS = (torch.slice_scatter, *aten("slice_scatter.default"))


@shape_rule(*SLICE_SCATTERS)
def slice_scatter(op: OpView) -> Coupling | Unsupported:
    """slice_scatter(x, src, dim, a, b) (``x[:, a:b] = src``, functionalized): positions
    [a, b) of the result are src's, the others x's (patched when channels go); x's
    overwritten positions join the result's without data."""
    x, src, dim = op.arg(0, "input"), op.arg(1, "src"), op.arg(2, "dim", 0)
    xs, ss, out = op.shape(x), op.shape(src), op.out_shape
    if xs is None or ss is None or not isinstance(dim, int) or len(xs) != len(ss):
        return Unsupported("slice_scatter along a computed dim")
    dim %= len(xs)
    b = slice_bounds(slice(op.arg(3, "start"), op.arg(4, "end"), op.arg(5, "step", 1)), xs[dim])
    c = Coupling()
    for d in range(len(xs)):
        if d != dim:
            c.flow(op.slot(x, d), op.out(d))
            c.flow(op.slot(src, d), op.out(d), term=1)
        elif b is None or b[1] - b[0] != ss[d]:
            for s in (op.slot(x, d), op.slot(src, d), op.out(d)):
                c.barrier(s, FIXED)
        else:
            inside = arange(b[1] - b[0]) + b[0]
            outside = [i for i in range(xs[d]) if not b[0] <= i < b[1]]
            if outside:
                c.flow(op.slot(x, d), op.out(d), outside, outside)
            c.flow(op.slot(src, d), op.out(d), None, inside, term=1)
            c.links.append(Link("tie", op.slot(x, d), op.out(d), inside, inside, term=None))
    return c


@shape_rule(*aten("index.Tensor"))
def index_tensor(op: OpView) -> Coupling | Unsupported:
    """ATen index (``x[:, idx]`` at ATen level): one integer tensor index gathers its dim
    (fixed); the dims indexed by None pass."""
    x, indices = op.arg(0), op.arg(1, "indices")
    if not isinstance(indices, (list, tuple)) or op.shape(x) is None:
        return Unsupported("index with computed indices")
    k = tuple(slice(None) if i is None else i for i in indices)
    if sum(isinstance(i, fx.Node) for i in k) != 1:
        return Unsupported("advanced indexing with several tensor indices")
    return _gather(op, x, k)
