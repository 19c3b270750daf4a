"""Repeated blocks: trace the first and the last, copy the rest — where that is exact.

A transformer repeats one block N times (``model.layers``: an ``nn.ModuleList`` of N
decoder layers of one class), and tracing costs grow with N (``torch.export``: about half
a second per LLaMA-7B layer). Block i computes what the last block computes, with block
i's parameters. So the model is traced with its list cut to its first and last blocks (the
real module objects: their own indices, their own parameters); blocks 1 … N-2 are then
copies of the last block's nodes, each fed by the block before it and reading its own
parameters, and the last block is fed by the last copy. Node shapes are copied with the
nodes.

Used only where it is exact:

* every block has the same structure — classes, attributes, parameter and buffer names,
  shapes and dtypes — but for an integer attribute named as an index (``layer_idx``,
  :data:`INDEX_NAMES`) that counts the blocks; the model's config holds no per-layer list
  that tells blocks apart;
* the traced graphs of the first and the last block are the same op for op, arguments
  renamed (the code does not branch on the index), and they form a chain: each reads only
  the block before it and what comes before all blocks.

Anything else — fewer than :data:`MIN_BLOCKS` blocks, blocks that differ, a graph that
cannot be split into blocks — traces the whole model, as before.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from torch import fx, nn
from slimc.errors import describe

MIN_BLOCKS = 6
# integer attributes that may count the block's index (HF's cache slot of a layer); any other
# attribute that differs between blocks makes them different blocks
INDEX_NAMES = ("layer_idx", "layer_id", "layer_index", "layer_number", "block_idx")


@dataclass
class Blocks:
    path: str  # the ModuleList's qualified name ("model.layers")
    n: int


# --------------------------------------------------------------------------- finding them
def _signature(block: nn.Module) -> list[tuple]:
    """What must be equal between two blocks; index-like ints are listed apart (as values)."""
    out = []
    for rel, m in block.named_modules():
        attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
        ints = {k: v for k, v in attrs.items() if type(v) is int}
        rest = sorted((k, repr(v)) for k, v in attrs.items() if k not in ints)
        tensors = sorted((k, tuple(t.shape), t.dtype, isinstance(t, nn.Parameter), t.requires_grad)
                         for k, t in [*m._parameters.items(), *m._buffers.items()] if t is not None)
        out.append((rel, type(m), tuple(rest), tuple(sorted(ints.items())), tuple(tensors)))
    return out


def _same_blocks(blocks: list[nn.Module]) -> bool:
    """Same structure everywhere; an int attribute may differ only if it is named as an
    index (:data:`INDEX_NAMES`) and counts the blocks (index plus a constant)."""
    sigs = [_signature(b) for b in blocks]
    first = sigs[0]
    for sig in sigs[1:]:
        if len(sig) != len(first) or any(a[:3] != b[:3] or a[4] != b[4] or [k for k, _ in a[3]] != [k for k, _ in b[3]]
                                          for a, b in zip(first, sig)):
            return False
    for pos in range(len(first)):
        for j, (name, _) in enumerate(first[pos][3]):
            vals = [sig[pos][3][j][1] for sig in sigs]
            if len(set(vals)) > 1 and (name not in INDEX_NAMES or any(v - i != vals[0] for i, v in enumerate(vals))):
                return False
    return True


def _per_layer_config(model: nn.Module, n: int) -> bool:
    """Does the model's config list a per-layer setting that differs between layers?"""
    cfg = getattr(model, "config", None)
    for v in (vars(cfg).values() if cfg is not None and hasattr(cfg, "__dict__") else ()):
        if isinstance(v, (list, tuple)) and len(v) == n and len({repr(x) for x in v}) > 1:
            return True
    return False


def find_blocks(model: nn.Module) -> Blocks | None:
    """The model's longest ModuleList of at least MIN_BLOCKS identical blocks, if any."""
    best = None
    for path, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= MIN_BLOCKS and (best is None or len(m) > best.n):
            kids = list(m)
            if len({type(k) for k in kids}) == 1 and _same_blocks(kids) and not _per_layer_config(model, len(m)):
                best = Blocks(path, len(m))
    return best


@contextlib.contextmanager
def cut(model: nn.Module, blocks: Blocks):
    """``model`` with its block list cut to its first and last blocks meanwhile."""
    lst = model.get_submodule(blocks.path)
    saved = lst._modules
    kids = list(saved.values())
    lst._modules = type(saved)([("0", kids[0]), (str(len(kids) - 1), kids[-1])])  # their own names
    try:
        yield
    finally:
        lst._modules = saved


# --------------------------------------------------------------------------- the graph
class NotRepeated(Exception):
    """The traced blocks are not the same graph: trace the whole model instead."""


def _index_of(path: str, prefix: str) -> int | None:
    if path.startswith(prefix):
        head = path[len(prefix):].split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def _block_of(node: fx.Node, prefix: str) -> int | None:
    if node.op in ("get_attr", "call_module"):
        return _index_of(node.target, prefix)
    stack = node.meta.get("nn_module_stack") or {}
    found = {_index_of(p, prefix) for p, _ in stack.values() if isinstance(p, str)} - {None}
    if len(found) > 1:
        raise NotRepeated(f"node {node.name} belongs to several blocks")
    return found.pop() if found else None


def _renamed(s: Any, prefix: str, old: int, new: int) -> Any:
    if isinstance(s, str) and s.startswith(f"{prefix}{old}") and s[len(f"{prefix}{old}"):][:1] in ("", "."):
        return f"{prefix}{new}{s[len(f'{prefix}{old}'):]}"
    return s


def _rename_meta(meta: dict, prefix: str, old: int, new: int) -> dict:
    meta = dict(meta)
    stack = meta.get("nn_module_stack")
    if stack:
        meta["nn_module_stack"] = {k: (_renamed(p, prefix, old, new), t) for k, (p, t) in stack.items()}
    return meta


def _op_signature(nodes: list[fx.Node], prefix: str, idx: int) -> list[tuple]:
    """The block's ops with their arguments named relative to the block: ("own", j) for
    the block's j-th node, ("in",) for a value from outside it, constants as they are."""
    pos = {n: j for j, n in enumerate(nodes)}

    def arg(a):
        if isinstance(a, fx.Node):
            return ("own", pos[a]) if a in pos else ("in",)
        if isinstance(a, (list, tuple)):
            return tuple(arg(x) for x in a)
        if isinstance(a, dict):
            return tuple((k, arg(v)) for k, v in a.items())
        return repr(a)

    return [(n.op, _renamed(n.target, prefix, idx, 0) if isinstance(n.target, str) else n.target,
             arg(n.args), arg(n.kwargs), repr(n.meta.get("shape"))) for n in nodes]


def _check_chain(graph: fx.Graph, first: list[fx.Node], last: list[fx.Node]) -> None:
    """The first block reads only what comes before it (embeddings, masks); the last reads
    only the first and that; only the last reads the first: then the blocks are a chain
    and copies fit between them."""
    order = {node: j for j, node in enumerate(graph.nodes)}
    start = min(order[x] for x in first if x.op != "get_attr")
    for block, before in ((first, set()), (last, set(first))):
        own = set(block)
        for node in block:
            for a in node.all_input_nodes:
                if a not in own and a not in before and order[a] >= start and a.op != "get_attr":
                    raise NotRepeated(f"{node.name} reads {a.name}, computed between blocks")
    allowed = set(first) | set(last)
    for node in first:
        if any(u not in allowed for u in node.users):
            raise NotRepeated(f"{node.name} of the first block is read beyond the next block")


def expand(gm: fx.GraphModule, blocks: Blocks, full: nn.Module) -> fx.GraphModule:
    """The graph of the full model from ``gm``, traced with the list cut to its first and
    last blocks (under their own indices): blocks 1 … N-2 are copies of the last block's
    nodes, each fed by the block before it; the last block is fed by the last copy."""
    prefix, n = blocks.path + ".", blocks.n
    graph = gm.graph
    members: dict[int, list[fx.Node]] = {0: [], n - 1: []}
    for node in graph.nodes:
        b = _block_of(node, prefix)
        if b is not None:
            if b not in members:
                raise NotRepeated(f"node {node.name} is in block {b}, not the first or the last")
            members[b].append(node)
    first, tmpl = members[0], members[n - 1]
    if not any(x.op != "get_attr" for x in first) or not any(x.op != "get_attr" for x in tmpl):
        raise NotRepeated("a block has no ops")
    if _op_signature(first, prefix, 0) != _op_signature(tmpl, prefix, n - 1):
        raise NotRepeated("the first and last blocks trace differently")
    _check_chain(graph, first, tmpl)
    place = {x: tmpl[j] for j, x in enumerate(first)}  # first-block node → the template's at its place
    prev = {tmpl[j]: x for j, x in enumerate(first)}  # the block before, at each template place
    anchor = next(x for x in tmpl if x.op != "get_attr")  # copies go, in order, just before it
    for i in range(1, n - 1):
        env: dict[fx.Node, fx.Node] = {}

        def remap(a: fx.Node) -> fx.Node:
            return env.get(a) or (prev[place[a]] if a in place else a)

        with graph.inserting_before(anchor):
            for x in tmpl:
                new = graph.create_node(x.op, _renamed(x.target, prefix, n - 1, i),
                                        fx.node.map_arg(x.args, remap), fx.node.map_arg(x.kwargs, remap))
                new.meta = _rename_meta(x.meta, prefix, n - 1, i)
                env[x] = new
        prev = {x: env[x] for x in tmpl}
    # the last block reads the last copy where it read the first block
    for x in tmpl:
        x.args = fx.node.map_arg(x.args, lambda a: prev[place[a]] if a in place else a)
        x.kwargs = fx.node.map_arg(x.kwargs, lambda a: prev[place[a]] if a in place else a)
    return _module(gm, graph, full)


def _module(gm: fx.GraphModule, graph: fx.Graph, full: nn.Module) -> fx.GraphModule:
    """A GraphModule over ``graph`` whose attributes come from the full model where it has
    them (every block's parameters), else from the traced module (export's constants)."""
    root: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module") and node.target not in root:
            for owner in (full, gm):
                try:
                    root[node.target] = _fetch(owner, node.target)
                    break
                except AttributeError:
                    continue
            else:
                raise NotRepeated(f"no attribute {node.target}")
    out = fx.GraphModule(root, graph, gm.__class__.__name__)  # the graph is its now
    out.graph.lint()
    out.training = gm.training
    return out


def _fetch(m: nn.Module, target: str) -> Any:
    obj: Any = m
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def traced_by_blocks(model: nn.Module, blocks: Blocks, trace_fn: Callable[[nn.Module], tuple]) -> tuple:
    """``trace_fn`` (the model → (graph module with shapes, anything)) run on the model cut
    to two blocks, and its graph expanded to all of them; raises :class:`NotRepeated`."""
    with cut(model, blocks):
        gm, extra = trace_fn(model)
    try:
        return expand(gm, blocks, model), extra
    except NotRepeated:
        raise
    except Exception as e:  # a graph the copies do not fit: trace it whole
        raise NotRepeated(f"{describe(e)}") from e


__all__ = ["Blocks", "INDEX_NAMES", "MIN_BLOCKS", "NotRepeated", "cut", "expand", "find_blocks", "traced_by_blocks"]
