"""Patch slice bounds where the sliced dim lost channels: ``x[:, a:b]``, ATen ``slice``,
``narrow`` and ``slice_scatter``. A bound becomes the count of kept positions before it,
so the slice picks exactly the kept channels of [a, b) (see shape_rules/slicing.py); an int
index (``x[..., i, :]``, ATen ``select``) becomes its position among the kept ones. Both stay
counted from the end where they were (``x[..., :-2, :]``, ``x[..., -2, :]``), so a line that
still reads the same positions needs no change in the user's class."""
from __future__ import annotations

import operator

import numpy as np
from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent, TracedShapes
from slimc.shape_rules.slicing import NARROWS, SELECTS, SLICE_SCATTERS, SLICES, index_entries, slice_bounds


def _moved(kept: np.ndarray | None, bound: int | None, n: int, written: int | None = None) -> int | None:
    """``bound`` (in [0, n]) in the slim dim: the count of kept positions before it (None
    stays None); counted from the end where it was ``written`` so."""
    if kept is None or bound is None:
        return bound
    if bound >= n:
        return None
    new = int(np.searchsorted(kept, bound))
    return new - len(kept) if isinstance(written, int) and written < 0 else new


def _index(kept: np.ndarray | None, i: int, n: int) -> int:
    """An int index ``i`` into ``n`` positions, in the slim dim (the position is kept: held)."""
    return i if kept is None else _moved(kept, i % n, n, written=i)


def _getitem(shapes: TracedShapes, node: fx.Node) -> bool:
    x, k = node.args
    shp = shapes.tensor(x)
    entries = index_entries(k, len(shp)) if shp is not None else None
    if not entries:
        return False
    items, changed = [], False
    for d_in, _, it in entries:
        kept = shapes.kept(x, d_in) if d_in is not None else None
        b = slice_bounds(it, shp[d_in]) if isinstance(it, slice) and kept is not None else None
        if b is not None and b != (0, shp[d_in]):
            new = slice(_moved(kept, b[0], shp[d_in], it.start), _moved(kept, b[1], shp[d_in], it.stop))
            changed |= (new.start, new.stop) != (it.start, it.stop)
            it = new
        elif isinstance(it, int) and not isinstance(it, bool) and kept is not None:
            new = _index(kept, it, shp[d_in])
            changed |= new != it
            it = new
        items.append(it)
    if changed:
        node.args = (x, tuple(items))
    return changed


def _positional(node: fx.Node, names: list[str]) -> list:
    """The node's args by position, keywords moved into place (defaults None)."""
    args = list(node.args) + [None] * (len(names) - len(node.args))
    for i, n in enumerate(names):
        if n in node.kwargs:
            args[i] = node.kwargs[n]
    return args


def _bounded(shapes: TracedShapes, node: fx.Node, names: list[str], kept_at) -> bool:
    """aten.slice / slice_scatter: (…, dim, start, end, step) with the named positions."""
    args = _positional(node, names)
    i_dim = names.index("dim")
    x = args[0]
    dim = args[i_dim] or 0
    shp = shapes.tensor(x)
    if shp is None:
        return False
    dim %= len(shp)
    kept = kept_at(node, x, dim)  # the output's for a scatter: its every position is linked
    start, end, step = args[i_dim + 1], args[i_dim + 2], args[i_dim + 3] if len(args) > i_dim + 3 else 1
    b = slice_bounds(slice(start, end, step), shp[dim]) if kept is not None else None
    if b is None:
        return False
    new = _moved(kept, b[0], shp[dim], start), _moved(kept, b[1], shp[dim], end)
    if new == (start, end):
        return False
    args[i_dim + 1], args[i_dim + 2] = new
    args[i_dim + 3] = 1  # step (only 1 has bounds)
    node.args, node.kwargs = tuple(args), {}
    return True


def _select(shapes: TracedShapes, node: fx.Node) -> bool:
    x, dim, i = _positional(node, ["input", "dim", "index"])
    shp = shapes.tensor(x)
    if shp is None or not isinstance(dim, int) or not isinstance(i, int):
        return False
    kept = shapes.kept(x, dim % len(shp))
    new = _index(kept, i, shp[dim % len(shp)])
    if new == i:
        return False
    node.args, node.kwargs = (x, dim, new), {}
    return True


def _narrow(shapes: TracedShapes, node: fx.Node) -> bool:
    x, dim, start, length = _positional(node, ["input", "dim", "start", "length"])
    shp = shapes.tensor(x)
    kept = shapes.kept(x, dim % len(shp)) if shp is not None else None
    if kept is None or not isinstance(start, int) or not isinstance(length, int):
        return False
    a, b = int(np.searchsorted(kept, start)), int(np.searchsorted(kept, start + length))
    node.args, node.kwargs = (x, dim, a, b - a), {}
    return True


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    shapes = ctx.shapes
    notes: list[str] = []
    modified = False
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        changed = False
        if node.target is operator.getitem and shapes.tensor(node.args[0]) is not None:
            changed = _getitem(shapes, node)
        elif node.target in SLICES:
            changed = _bounded(shapes, node, ["input", "dim", "start", "end", "step"],
                               lambda n, x, d: shapes.kept(x, d))
        elif node.target in SLICE_SCATTERS:
            changed = _bounded(shapes, node, ["input", "src", "dim", "start", "end", "step"],
                               lambda n, x, d: shapes.kept(n, d))
        elif node.target in NARROWS:
            changed = _narrow(shapes, node)
        elif node.target in SELECTS:
            changed = _select(shapes, node)
        if changed:
            modified = True
            ctx.events.append(SizeEvent.at(node, "slice"))  # the user's class must move them too
            notes.append(f"{node.name}: slice bounds patched")
    return PassResult(gm, modified, notes)
