"""GraphModule → dependency graph of (value, dim) slots.

Every dim of every value (node outputs, params, buffers) is a *slot*; its channels are
*elements* with global integer ids. Shape rules couple slots of one op; the couplings
are kept as a ``networkx.MultiDiGraph`` over slots (``DependencyGraph.nx``: what
``slimc inspect --graph`` writes as GraphML or DOT, with each slot's channel families
and barrier) and as element-id arrays (for the vectorized grouping in :mod:`slimc.propagate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import networkx as nx
import numpy as np
from torch import fx

from slimc.errors import describe
from slimc.shape_rules import (
    Coupling,
    OpView,
    SlotKey,
    Unsupported,
    find_rule,
    op_key,
    op_name,
    tensor_leaves,
)


@dataclass
class NodeFacts:
    node: fx.Node
    op: str  # readable op name
    coupling: Coupling
    unsupported: str | None = None

    @property
    def probed(self) -> str:
        """What probing found, for an op without a rule treated as channel-wise ('' otherwise)."""
        return self.coupling.probed


@dataclass
class DependencyGraph:
    gm: fx.GraphModule
    shapes: dict[str, Any]
    facts: list[NodeFacts]
    offset: dict[SlotKey, int]
    size: dict[SlotKey, int]
    n: int
    barrier_reasons: dict[SlotKey, str]
    nx: nx.MultiDiGraph = field(repr=False, default_factory=nx.MultiDiGraph)
    holds: set = field(repr=False, default_factory=set)  # barrier slots that hold positions only (Coupling.hold)
    _ids: dict = field(repr=False, default_factory=dict)

    def ids(self, slot: SlotKey, idx: np.ndarray | None = None) -> np.ndarray:
        """Element ids of ``slot`` (of its indices ``idx``); the whole slot's are cached, read-only."""
        base = self.offset[slot]
        if idx is not None:
            return base + np.asarray(idx, dtype=np.int64)
        ids = self._ids.get(slot)
        if ids is None:
            ids = self._ids[slot] = np.arange(base, base + self.size[slot], dtype=np.int64)
            ids.flags.writeable = False
        return ids

    def slot_table(self) -> tuple[list[SlotKey], np.ndarray, np.ndarray]:
        """(slots, starts, sizes) in element order: slot i holds elements starts[i] … +sizes[i]."""
        if "table" not in self._ids:
            slots = sorted(self.offset, key=self.offset.__getitem__)
            self._ids["table"] = (slots, np.array([self.offset[s] for s in slots], np.int64),
                                  np.array([self.size[s] for s in slots], np.int64))
        return self._ids["table"]

    def parts(self, fqn: str) -> dict[tuple[int, int], list[SlotKey]]:
        """Param ``fqn``'s part dims (``("p", fqn, (dim, at, index))``: each expert's rows of
        stacked experts), by ``(dim, at)``, in index order."""
        table = self._ids.get("parts")
        if table is None:
            table = {}
            for s in self.size:
                if s[0] == "p" and isinstance(s[2], tuple):
                    table.setdefault(s[1], {}).setdefault(s[2][:2], []).append(s)
            for by_dim in table.values():
                for slots in by_dim.values():
                    slots.sort(key=lambda s: s[2][2])
            self._ids["parts"] = table
        return table.get(fqn, {})

    def per_slot_count(self, flags: np.ndarray) -> np.ndarray:
        """How many elements of each slot (in :meth:`slot_table` order) ``flags`` marks."""
        _, starts, sizes = self.slot_table()
        if not len(starts) or not len(flags):
            return np.zeros(len(starts), np.int64)
        counts = np.add.reduceat(flags, np.minimum(starts, len(flags) - 1), dtype=np.int64)
        return np.where(sizes > 0, counts, 0)

    def value_slots(self, node: fx.Node) -> list[SlotKey]:
        """``node``'s value dims (tuple items as ``name#i``) that are slots of the graph."""
        return [("v", v, d) for v, shp in _value_shapes(node, self.shapes) for d in range(len(shp))
                if ("v", v, d) in self.offset]

    @property
    def unsupported(self) -> list[NodeFacts]:
        return [f for f in self.facts if f.unsupported]


def _value_shapes(node: fx.Node, shapes: dict[str, Any]) -> list[tuple[str, tuple]]:
    if node.op == "get_attr":
        return []  # params and buffers are slots ("p", fqn, dim) of their own
    return tensor_leaves(node.name, shapes.get(node.name))


def source_line(node: fx.Node) -> str:
    """'file.py:LINE: code' of the user's line that created the node, if recorded."""
    st = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in st.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File ") and "/torch/" not in lines[i] and "/site-packages/torch" not in lines[i]:
            parts = lines[i].split('"')
            fname = parts[1].rsplit("/", 1)[-1] if len(parts) > 1 else "?"
            lineno = lines[i].split("line ")[-1].split(",")[0]
            code = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{fname}:{lineno}: {code}"
    return lines[-1] if lines else ""


def _touched(c: Coupling) -> set:
    t = set(c.covered)
    for ln in c.links:
        t.add(ln.a)
        t.add(ln.b)
    for s, _ in c.barriers:
        t.add(s)
    for r in c.reshapes:
        t.add(r.big)
        t.update(r.parts)
    return t


def _apply_rule(node: fx.Node, gm: fx.GraphModule, shapes: dict[str, Any], probe=None) -> NodeFacts:
    key = op_key(node, gm)
    name = op_name(key)
    rule = find_rule(node, gm)
    view = OpView(node, gm, shapes)
    if rule is None and probe is not None:  # slimc.probe: channel-wise where no mixing is found
        result: Coupling | Unsupported = probe(view, name)
    elif rule is None:
        result = Unsupported(f"no shape rule for {name}")
    else:
        try:
            result = rule(view)
        except Exception as e:  # a rule bug must not produce a wrong model
            result = Unsupported(f"rule for {name} failed: {describe(e)}")
        if isinstance(result, Unsupported) and result.probe and probe is not None:
            result = probe(view, name)
    if isinstance(result, Unsupported):
        c = Coupling()
        _barrier_everything(c, node, shapes, result.reason)
        return NodeFacts(node, name, c, result.reason)
    # safety net: every dim of every tensor input and output must be described
    touched = _touched(result) | view.viewed  # (a transposed parameter read as the parameter: described)
    for x in node.all_input_nodes:
        for vname, shp in _value_shapes(x, shapes):
            for d, n in enumerate(shp):
                s = ("v", vname, d)
                if s not in touched and n > 1:
                    result.barrier(s, f"{name}: dim {d} of input '{vname}' not described by its rule")
    for vname, shp in _value_shapes(node, shapes):
        for d, n in enumerate(shp):
            s = ("v", vname, d)
            if s not in touched and n > 1:
                result.barrier(s, f"{name}: output dim {d} not described by its rule")
    return NodeFacts(node, name, result, result.mixed or None)


def _barrier_everything(c: Coupling, node: fx.Node, shapes: dict[str, Any], reason: str) -> None:
    for x in [*node.all_input_nodes, node]:
        for vname, shp in _value_shapes(x, shapes):
            for d in range(len(shp)):
                c.barrier(("v", vname, d), reason)


def build(gm: fx.GraphModule, shapes: dict[str, Any], probe=None) -> DependencyGraph:
    """``probe``: a :class:`slimc.probe.Prober` for ops without a rule (None: they are barriers)."""
    facts: list[NodeFacts] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            c = Coupling()
            for vname, shp in _value_shapes(node, shapes):
                for d in range(len(shp)):
                    c.barrier(("v", vname, d), f"graph input '{node.name}'")
            facts.append(NodeFacts(node, "input", c))
        elif node.op == "output":
            c = Coupling()
            for x in node.all_input_nodes:
                for vname, shp in _value_shapes(x, shapes):
                    for d in range(len(shp)):
                        c.barrier(("v", vname, d), "graph output")
            facts.append(NodeFacts(node, "output", c))
        elif node.op == "get_attr":
            continue  # params are slots of their own
        elif not _value_shapes(node, shapes) and not any(_value_shapes(x, shapes) for x in node.all_input_nodes):
            facts.append(NodeFacts(node, "scalar", Coupling()))  # size arithmetic: no tensors involved
        else:
            facts.append(_apply_rule(node, gm, shapes, probe))

    offset: dict[SlotKey, int] = {}
    size: dict[SlotKey, int] = {}
    n = 0

    def alloc(slot: SlotKey, k: int) -> None:
        nonlocal n
        if slot not in offset:
            offset[slot] = n
            size[slot] = int(k)
            n += int(k)

    for node in gm.graph.nodes:
        for vname, shp in _value_shapes(node, shapes):
            for d, k in enumerate(shp):
                alloc(("v", vname, d), k)
    for fqn, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        for d, k in enumerate(t.shape):
            alloc(("p", fqn, d), k)
    for f in facts:
        for slot, k in f.coupling.virtual.items():
            alloc(slot, k)

    barrier_reasons: dict[SlotKey, str] = {}
    g = nx.MultiDiGraph()
    for f in facts:
        for s, why in f.coupling.barriers:
            barrier_reasons.setdefault(s, why)
        for ln in f.coupling.links:
            g.add_edge(ln.a, ln.b, kind=ln.kind, node=f.node.name)
    for s, k in size.items():
        if s in g:
            g.nodes[s]["size"] = k
    for s, why in barrier_reasons.items():
        if s in g:
            g.nodes[s]["barrier"] = why
    holds = {s for f in facts for s in f.coupling.holds}
    return DependencyGraph(gm, shapes, facts, offset, size, n, barrier_reasons, g, holds=holds)


def unsupported_table(dg: DependencyGraph) -> list[dict[str, str]]:
    return [
        {"node": f.node.name, "op": f.op, "reason": f.unsupported or "", "source": source_line(f.node)}
        for f in dg.unsupported
    ]


def probed_table(dg: DependencyGraph) -> list[dict[str, str]]:
    """Ops without a rule that probing found channel-wise (the built-in check is the proof)."""
    return [{"node": f.node.name, "op": f.op, "found": f.probed, "source": source_line(f.node)}
            for f in dg.facts if f.probed]


def slot_name(slot: SlotKey) -> str:
    """``("v", "conv1", 1)`` → ``"v:conv1:1"`` (a value's dim; ``p:`` a param's)."""
    return ":".join(str(part) for part in slot)


def write_graph(dg: DependencyGraph, path: str | Path, slot_attrs: Mapping[SlotKey, Mapping[str, Any]] | None = None) -> Path:
    """Write the slot graph ``dg.nx`` — slots as nodes (``size``, ``barrier`` reason, and
    ``slot_attrs`` such as the channel families), couplings as edges (``kind``, the fx
    ``node`` that made them) — as GraphML (``.graphml``) or DOT (``.dot``, ``.gv``; plain
    text, no pydot needed)."""
    path = Path(path)
    g = nx.MultiDiGraph()
    for s, attrs in dg.nx.nodes(data=True):
        g.add_node(slot_name(s), **{k: v for k, v in {**attrs, **(slot_attrs or {}).get(s, {})}.items() if v is not None})
    for a, b, attrs in dg.nx.edges(data=True):
        g.add_edge(slot_name(a), slot_name(b), **attrs)
    if path.suffix not in (".graphml", ".dot", ".gv"):
        raise ValueError(f"write the graph as .graphml or .dot, not '{path.suffix or path.name}'")
    from slimc.atomic import atomic_path

    with atomic_path(path) as tmp:  # never a half-written file
        if path.suffix == ".graphml":
            nx.write_graphml(g, tmp)
        else:
            Path(tmp).write_text(_dot(g))
    return path


def _dot(g: nx.MultiDiGraph) -> str:
    def q(v: Any) -> str:
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph slimc {", "  node [shape=box, fontsize=10];"]
    for n, attrs in g.nodes(data=True):
        label = f"{n} ({attrs['size']})" if "size" in attrs else n
        extra = "".join(f", {k}={q(v)}" for k, v in attrs.items() if k != "size")
        color = ", color=red" if attrs.get("barrier") else ""
        lines.append(f"  {q(n)} [label={q(label)}{color}{extra}];")
    for a, b, attrs in g.edges(data=True):
        lines.append(f"  {q(a)} -> {q(b)} [label={q(attrs.get('kind', ''))}, node={q(attrs.get('node', ''))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


__all__ = ["DependencyGraph", "NodeFacts", "build", "probed_table", "slot_name", "unsupported_table", "write_graph"]
