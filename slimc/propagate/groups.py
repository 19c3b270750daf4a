"""Channel elements into groups: the edges rules draw between elements are collected and
resolved as connected components (scipy); per-group flags and counts."""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from slimc.errors import PlanError
from slimc.graph import DependencyGraph
from slimc.shape_rules import Link, SlotKey


class ElementGroups:
    """Element edges, collected and resolved as connected components (scipy) — not a
    union-find. ``aligned`` (per element,
    the id it shares with the same channel of slots joined one-to-one, see :func:`aligned_classes`)
    shrinks the graph to what those joins leave. Labels are kept: unions added later are
    resolved on the graph of the current groups, far smaller still."""

    def __init__(self, n: int, aligned: tuple[np.ndarray, int] | None = None):
        self.n = n
        self.map, self.m = aligned if aligned is not None else (np.arange(n), n)
        self.a: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self._labels: np.ndarray | None = None  # per aligned id

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a.append(self.map[a])
        self.b.append(self.map[b])

    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = components(np.arange(self.m), self.a, self.b, self.m)
        elif self.a:
            lab = self._labels
            self._labels = components(lab, [lab[a] for a in self.a], [lab[b] for b in self.b], int(lab.max()) + 1)
        self.a, self.b = [], []
        return self._labels[self.map]


def aligned_classes(dg: DependencyGraph, pairs: list[tuple[SlotKey, SlotKey]]) -> tuple[np.ndarray, int]:
    """Slots joined one-to-one (element i with element i: elementwise ops, a bias with its
    output) are one *class*: per element, the id of its channel in its class, and how many
    ids there are. Found by a union-find over slots (thousands), not elements (millions)."""
    parent: dict[SlotKey, SlotKey] = {}

    def find(x: SlotKey) -> SlotKey:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    slots, starts, sizes = dg.slot_table()
    index = {s: i for i, s in enumerate(slots)}
    root = np.array([index[find(s)] for s in slots], np.int64)
    is_root = root == np.arange(len(slots))
    base = np.zeros(len(slots), np.int64)
    base[is_root] = np.concatenate([[0], np.cumsum(sizes[is_root])[:-1]]) if is_root.any() else []
    m = int(sizes[is_root].sum())
    return np.repeat(base[root] - starts, sizes) + np.arange(dg.n, dtype=np.int64), m


def components(of: np.ndarray, a: list[np.ndarray], b: list[np.ndarray], n: int) -> np.ndarray:
    """Component label of each entry of ``of`` (ids < n) once the pairs (a, b) are joined."""
    if not a:
        return of
    a, b = np.concatenate(a), np.concatenate(b)
    m = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(m, directed=False)[1][of]


def row_ids(keys: np.ndarray) -> np.ndarray:
    """One id per distinct row of the int matrix ``keys`` (like ``np.unique(axis=0)``'s
    inverse), column by column on plain ints, which sort far faster than rows."""
    ids = np.zeros(len(keys), np.int64)
    for col in keys.T:
        c = col - col.min()
        ids = np.unique(ids * (int(c.max()) + 1) + c, return_inverse=True)[1].reshape(-1)
    return ids


def link_ids(dg: DependencyGraph, ln: Link) -> tuple[np.ndarray, np.ndarray]:
    a, b = dg.ids(ln.a, ln.a_idx), dg.ids(ln.b, ln.b_idx)
    if len(a) != len(b) and ln.kind != "feed":
        raise PlanError(f"internal: link {ln.kind} {ln.a} → {ln.b} pairs {len(a)} with {len(b)} elements")
    return a, b


def any_by_group(flags: np.ndarray, grp: np.ndarray, g: int) -> np.ndarray:
    """Per group (``g`` of them): is any of its elements flagged?"""
    out = np.zeros(g, bool)
    out[grp[flags]] = True
    return out


def count_by_group(flags: np.ndarray, grp: np.ndarray, g: int) -> np.ndarray:
    """Per group (``g`` of them): how many of its elements are flagged."""
    return np.bincount(grp[flags], minlength=g)


__all__ = ["ElementGroups", "aligned_classes", "any_by_group", "components", "count_by_group", "link_ids", "row_ids"]
