"""The traced graph, normalized before analysis: library calls and in-place slice writes
lowered to plain torch ops, so that the rules see the data flow and the slim model needs
torch alone.

* drop-path / stochastic depth (torchvision ``stochastic_depth``/``StochasticDepth``, timm
  ``DropPath``; see shape_rules/library.py) → ``x * F.dropout(x.new_ones(B, 1, …, 1), p,
  self.training)``: the same noise (0 or 1/(1-p) per sample), the identity in eval, and the
  training flag read at run time;
* ``copy_(x[:, a:b], v)`` (what torch.export makes of ``x[:, a:b] += v``) →
  ``x' = slice_scatter(x, v, 1, a, b)``, and later reads of ``x`` read ``x'``;
* ``aten.zeros([1, H, s0, s1])`` — a factory whose sizes list holds sizes read at run time —
  → ``aten.new_zeros(x, [1, H, s0, s1], dtype=…)`` of a tensor ``x`` the sizes are read from
  (on its device): a saved graph (slim.pt) is traced again from its code when it loads, and torch's
  factories refuse a traced size inside a list, where ``new_*`` takes the tensor first;
* ``F.batch_norm(…, training=<traced constant>)`` in a BatchNorm subclass's own forward
  (timm's ``BatchNormAct2d``) follows the module's mode at run time, like ``nn.BatchNorm2d``
  (:func:`live_batch_norm_flags`, on the fresh trace).
"""
from __future__ import annotations

import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import ByName, qualified_name
from slimc.shape_rules.library import DROP_PATH_FUNCTIONS, DROP_PATH_MODULES, DropPath
from slimc.shape_rules.slicing import SLICES, slice_bounds
from slimc.shapes import node_shape

COPIES = (torch.ops.aten.copy_.default,)


def kept_whole(m: nn.Module) -> bool:
    """Modules the fx tracer keeps as leaves so that they can be lowered here."""
    return ByName(qualified_name(type(m)) or "") in DROP_PATH_MODULES


def _ndim(n: fx.Node) -> int | None:
    s = _shape(n)
    return len(s) if s is not None else None


def _drop_path_spec(gm: fx.GraphModule, node: fx.Node) -> DropPath | None:
    if node.op == "call_module":
        make = DROP_PATH_MODULES.get(ByName(qualified_name(type(gm.get_submodule(node.target))) or ""))
        return make(gm.get_submodule(node.target), node.args[0]) if make and node.args else None
    if node.op == "call_function":
        make = DROP_PATH_FUNCTIONS.get(ByName(qualified_name(node.target) or ""))
        return make(node) if make else None
    return None


def _training_flag(graph: fx.Graph, node: fx.Node, flag, training: bool):
    """The module's mode at run time where the traced flag is ``self.training`` frozen."""
    from slimc.graph import source_line

    if flag is None or (flag is training and "training" in source_line(node)):
        return _training_attr(graph)
    return flag


def _training_attr(graph: fx.Graph) -> fx.Node:
    """``self.training`` of the graph's module, read when the graph runs."""
    with warnings.catch_warnings():  # a plain bool attribute, not a registered tensor or module
        warnings.simplefilter("ignore")
        return graph.get_attr("training")


def _drop_paths(gm: fx.GraphModule, training: bool) -> bool:
    graph, changed = gm.graph, False
    for node in list(graph.nodes):
        spec = _drop_path_spec(gm, node)
        if spec is None or not isinstance(spec.x, fx.Node) or not isinstance(spec.p, (int, float)):
            continue
        nd = _ndim(spec.x)
        if nd is None:
            continue
        x = spec.x
        if spec.p == 0:
            out = x
        else:
            with graph.inserting_before(node):
                flag = _training_flag(graph, node, spec.training, training)
                size = [graph.call_method("size", (x, 0))] if spec.per_sample else [1]
                ones = graph.call_method("new_ones", (x, size + [1] * (nd - 1)))
                noise = graph.call_function(F.dropout, (ones,), {"p": float(spec.p), "training": flag})
                if not spec.scale:
                    noise = graph.call_function(operator.mul, (noise, 1.0 - spec.p))
                out = graph.call_function(operator.mul, (x, noise))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changed = True
    if changed:  # the lowered library modules (one may be called in several places) are gone
        gm.delete_all_unused_submodules()
    return changed


def _slice_chain(view: fx.Node) -> tuple[fx.Node, int, tuple[int, int]] | None:
    """(base, dim, bounds) if ``view`` is aten slices of ``base`` with one partial slice."""
    part = None
    while isinstance(view, fx.Node) and view.target in SLICES:
        x, dim = view.args[0], view.args[1] if len(view.args) > 1 else 0
        n = _shape(x)[dim] if _shape(x) is not None else None
        b = slice_bounds(slice(*[view.args[i] if len(view.args) > i else None for i in (2, 3, 4)]), n) if n else None
        if b is None:
            return None
        if b != (0, n):
            if part is not None:
                return None
            part = (dim, b)
        view = x
    if part is None or not isinstance(view, fx.Node):
        return None
    return view, part[0], part[1]


def _slice_writes(gm: fx.GraphModule) -> bool:
    graph, changed = gm.graph, False
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.target not in COPIES or node.users:
            continue
        view, src = node.args[0], node.args[1]
        found = _slice_chain(view)
        if found is None or _shape(src) != _shape(view):
            continue
        base, dim, (a, b) = found
        with graph.inserting_after(node):
            new = graph.call_function(torch.ops.aten.slice_scatter.default, (base, src, dim, a, b))
        for user in list(base.users):
            if user is not new and order.get(user, -1) > order[node]:
                user.replace_input_with(base, new)
        graph.erase_node(node)
        changed = True
    return changed


_NEW_OF = {torch.ops.aten.zeros.default: torch.ops.aten.new_zeros.default,
           torch.ops.aten.ones.default: torch.ops.aten.new_ones.default,
           torch.ops.aten.full.default: torch.ops.aten.new_full.default}


def _tensor_behind(sizes: list) -> fx.Node | None:
    """A tensor node that a size of ``sizes`` is read from (through size arithmetic)."""
    todo, seen = [a for a in sizes if isinstance(a, fx.Node)], set()
    while todo:
        n = todo.pop(0)
        if n in seen or len(seen) > 32:
            continue
        seen.add(n)
        if _shape(n) is not None:
            return n
        todo.extend(n.all_input_nodes)
    return None


def _factories_of_traced_sizes(gm: fx.GraphModule) -> bool:
    graph, changed = gm.graph, False
    for node in list(graph.nodes):
        new = _NEW_OF.get(node.target) if node.op == "call_function" else None
        sizes = node.args[0] if new is not None and node.args else None
        val = node.meta.get("val")
        if not isinstance(sizes, (list, tuple)) or not isinstance(val, torch.Tensor):
            continue
        src = _tensor_behind(list(sizes))
        if src is None:
            continue
        kwargs = {**node.kwargs, "dtype": node.kwargs.get("dtype") or val.dtype}
        kwargs.pop("device", None)
        src_val = src.meta.get("val")
        if not isinstance(src_val, torch.Tensor) or src_val.device != val.device:
            kwargs["device"] = val.device  # else on the source's device, wherever the graph runs
        with graph.inserting_before(node):
            made = graph.call_function(new, (src, list(sizes), *node.args[1:]), kwargs)
        made.meta = dict(node.meta)
        node.replace_all_uses_with(made)
        graph.erase_node(node)
        changed = True
    return changed


def _shape(n) -> tuple | None:
    """A tensor node's shape as the trace recorded it (:func:`slimc.shapes.node_shape`)."""
    s = node_shape(n) if isinstance(n, fx.Node) else None
    return s if isinstance(s, tuple) else None


def live_batch_norm_flags(graph: fx.Graph, training: bool) -> bool:
    """Run on the fresh trace, before shapes are propagated (a frozen ``training=True`` would
    update the running statistics in place while the graph runs)."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not F.batch_norm:
            continue
        running = node.args[1] if len(node.args) > 1 else node.kwargs.get("running_mean")
        flag = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
        if not isinstance(running, fx.Node) or flag is not training:
            continue
        with graph.inserting_before(node):
            live = _training_attr(graph)
        if len(node.args) > 5:
            node.args = (*node.args[:5], live, *node.args[6:])
        else:
            node.kwargs = {**node.kwargs, "training": live}
        changed = True
    return changed


def lower(gm: fx.GraphModule, training: bool) -> bool:
    """Rewrite ``gm`` in place (shapes must be propagated); True if anything changed.
    ``training``: the model's mode when it was traced."""
    changed = _drop_paths(gm, training)
    changed |= _slice_writes(gm)
    changed |= _factories_of_traced_sizes(gm)
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed
