"""The generator's own account of a model's channels, and the final masks DESIGN.md implies.

Every block of the random architectures says, beside its ``forward``, what it does to
channels (``channels(ir, prefix, x)``): which parameter slices create a channel (sources),
read it (sinks) or scale it (followers), which channels an add, a product or a depthwise
conv joins, which are fixed (inputs, outputs). :class:`ChannelIR` keeps that as a
union-find over channel ids (a tensor's channel dim is an array of ids) and param slices,
and derives, with no slimc code, which channels go for given user masks (DESIGN.md,
*Semantics: groups and removal*, ``channel`` mode):

* a channel is *dead* when every source behind it is masked — a sum is dead when every
  term is, a product when any factor is (a masked BatchNorm/LayerNorm γ kills its factor;
  an unmasked follower neither keeps nor kills);
* a group goes iff it holds no barrier and either every channel that a sink reads in it
  is dead (every source masked, where no sink reads it), or every sink slice is masked;
* a removed group zeroes every member slice (sources, sinks, followers); final masks are
  the user's masks times that, so nothing the user masked comes back;
* a grouped conv's channels are (group, position) pairs, each its own: column j reads
  position j of every group, an output group whose inputs are all dead is dead, inputs of a
  group whose outputs all went are read by nothing, and the kept set is kept groups × kept
  positions (whole groups go, or the same positions in every group).

Attention heads are resolved by :mod:`.heads` (whole heads, key/value groups and
head-dim channels as rectangles). ``protect`` marks, per tensor, one group that the
random masks must leave alone, so that no layer is ever emptied.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

Slice = tuple[str, int, int]  # (param fqn, dim, index along dim)


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class UserMasks:
    """User masks as full-shape bool tensors (True: kept); ``masked(slice)``: is the whole
    slice zero?"""

    def __init__(self, masks: dict[str, torch.Tensor], shapes: dict[str, tuple]):
        self.full = {k: (v != 0).expand(shapes[k]).clone() for k, v in masks.items()}
        self._cache: dict[Slice, bool] = {}

    def masked(self, s: Slice) -> bool:
        if s not in self._cache:
            m = self.full.get(s[0])
            self._cache[s] = m is not None and not bool(m.select(s[1], s[2]).any())
        return self._cache[s]


class ChannelIR:
    def __init__(self, shapes: dict[str, tuple]):
        self.shapes = shapes  # param fqn → shape
        self.uf = UnionFind()
        self.n_values = 0
        self.value_ids: list[int] = []  # channel id → union-find node
        self.slice_node: dict[Slice, int] = {}
        self.roles: list[tuple[str, Slice, int]] = []  # (source | sink | follower, slice, channel id)
        self.barriers: set[int] = set()
        self.tensors: list[np.ndarray] = []  # every channel dim made, in order
        self.dead_rules: list[Callable[[np.ndarray, UserMasks], None]] = []
        self.heads: list = []  # heads.AttentionHeads of each attention layer
        self.grouped: list[tuple[str, np.ndarray, np.ndarray]] = []  # grouped convs: weight, in and out (groups × positions)
        self.gone: set[int] = set()  # the groups the last removed_slices removed

    # --------------------------------------------------------------- building
    def new(self, n: int) -> np.ndarray:
        ids = np.arange(self.n_values, self.n_values + n)
        self.n_values += n
        self.value_ids += [self.uf.add() for _ in range(n)]
        self.tensors.append(ids)
        return ids

    def join(self, a: int, b: int) -> None:
        self.uf.union(self.value_ids[a], self.value_ids[b])

    def role(self, kind: str, s: Slice, channel: int) -> None:
        assert s[0] in self.shapes and 0 <= s[2] < self.shapes[s[0]][s[1]], s
        node = self.slice_node.get(s)
        if node is None:
            node = self.slice_node[s] = self.uf.add()
        self.uf.union(node, self.value_ids[channel])
        self.roles.append((kind, s, channel))

    def rule(self, fn: Callable[[np.ndarray, UserMasks], None]) -> None:
        self.dead_rules.append(fn)

    def input(self, n: int) -> np.ndarray:
        return self.barrier(self.new(n))

    def barrier(self, x: np.ndarray) -> np.ndarray:
        self.barriers.update(int(e) for e in x)
        return x

    def sinks(self, w: str, x: np.ndarray, dim: int = 1, index: np.ndarray | None = None) -> None:
        """Slice ``index[i]`` of ``w`` along ``dim`` reads channel ``x[i]``."""
        index = np.arange(len(x)) if index is None else index
        for i, e in zip(index, x):
            self.role("sink", (w, dim, int(i)), int(e))

    def sources(self, name: str, n: int, bias: bool, dim: int = 0) -> np.ndarray:
        """``n`` new channels, channel o made by slice o of ``name.weight`` along ``dim``
        (the bias follows). Dead iff that slice is masked."""
        w = f"{name}.weight"
        y = self.new(n)
        for o, e in enumerate(y):
            self.role("source", (w, dim, o), int(e))
            if bias:
                self.role("follower", (f"{name}.bias", 0, o), int(e))
        self.rule(lambda dead, um: dead.__setitem__(y, [um.masked((w, dim, o)) for o in range(n)]))
        return y

    def linear(self, name: str, x: np.ndarray, n_out: int, bias: bool) -> np.ndarray:
        self.sinks(f"{name}.weight", x)
        return self.sources(name, n_out, bias)

    def conv(self, name: str, x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
        cin, cout, g, bias = conv.in_channels, conv.out_channels, conv.groups, conv.bias is not None
        w = f"{name}.weight"
        if g == 1:
            return self.linear(name, x, cout, bias)
        if g == cin:  # depthwise: output o = the product of input o // m and weight row o
            m = cout // cin
            y = self.sources(name, cout, bias)
            for o in range(cout):
                self.join(int(x[o // m]), int(y[o]))
            self.rule(lambda dead, um: dead.__setitem__(y, dead[y] | dead[x[np.arange(cout) // m]]))
            return y
        # grouped: channel (group k, position j) is its own; column j reads position j of every
        # group without joining them; the kept set is a rectangle, kept groups × kept positions
        ci, co = cin // g, cout // g
        y = self.sources(name, cout, bias)
        for j in range(ci):
            self.slice_node.setdefault((w, 1, j), self.uf.add())  # a group of its own: the position
        self.grouped.append((w, x.reshape(g, ci), y.reshape(g, co)))
        # an output group whose every input channel is dead makes its bias alone: dead
        self.rule(lambda dead, um: dead.__setitem__(y, dead[y] | np.repeat(dead[x].reshape(g, ci).all(1), co)))
        return y

    def norm(self, name: str, x: np.ndarray, beta: bool = True) -> np.ndarray:
        """γ·x̂ (+ β): dead where the input is or γ is masked (β alone keeps nothing dead)."""
        y = self.scale(f"{name}.weight", x)
        if beta:
            for i, e in enumerate(y):
                self.role("follower", (f"{name}.bias", 0, i), int(e))
        return y

    def scale(self, name: str, x: np.ndarray) -> np.ndarray:
        """x times a learned per-channel scale (a norm's γ, a layer scale): it follows; masked, it kills."""
        y = self.new(len(x))
        for i, (a, b) in enumerate(zip(x, y)):
            self.join(int(a), int(b))
            self.role("follower", (name, 0, i), int(b))
        self.rule(lambda dead, um: dead.__setitem__(y, dead[x] | np.array([um.masked((name, 0, i)) for i in range(len(x))])))
        return y

    def _combine(self, a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
        assert len(a) == len(b)
        y = self.new(len(a))
        for i in range(len(a)):
            self.join(int(a[i]), int(y[i]))
            self.join(int(b[i]), int(y[i]))
        self.rule(lambda dead, um: dead.__setitem__(y, op(dead[a], dead[b])))
        return y

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """A sum: one group per channel, dead where both terms are."""
        return self._combine(a, b, np.logical_and)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """A product: one group per channel, dead where either factor is."""
        return self._combine(a, b, np.logical_or)

    def embedding(self, name: str, n: int) -> np.ndarray:
        """Token embedding: column c of the table makes channel c."""
        return self.sources(name, n, bias=False, dim=1)

    def cat(self, xs: list[np.ndarray]) -> np.ndarray:
        y = np.concatenate(xs)
        self.tensors.append(y)
        return y

    # --------------------------------------------------------------- resolving
    def root(self, e: int) -> int:
        return self.uf.find(self.value_ids[e])

    def slice_root(self, s: Slice) -> int | None:
        node = self.slice_node.get(s)
        return None if node is None else self.uf.find(node)

    def groups(self) -> list[frozenset[Slice]]:
        """The coupled channel groups, by construction: every param slice that creates, reads
        or scales the same channel (adds, concats, products, grouped and depthwise convs
        joined), one set per group. The attention layers' q/k/v rows and o columns are not
        here: heads.py resolves them as rectangles of (heads, head_dim)."""
        by_root: dict[int, set[Slice]] = {}
        for s, node in self.slice_node.items():
            by_root.setdefault(self.uf.find(node), set()).add(s)
        return [frozenset(v) for v in by_root.values()]

    def protect(self, rng: np.random.Generator) -> set[int]:
        """One group per tensor (and the attention layers' own units, see heads.py) that
        masks must leave alone: no layer is ever emptied, so no ``allow_empty`` rule is
        exercised by accident."""
        protected: set[int] = set()
        for _, x, y in self.grouped:  # one group of a grouped conv keeps an input and an output
            if not {self.root(int(e)) for e in (*x.flat, *y.flat)} & protected:
                k = int(rng.integers(len(x)))
                protected |= {self.root(int(rng.choice(x[k]))), self.root(int(rng.choice(y[k])))}
        for t in self.tensors:
            roots = {self.root(int(e)) for e in t}
            if len(t) > 1 and not roots & protected:
                protected.add(self.root(int(rng.choice(t))))
        for h in self.heads:
            h.protect(rng)
        return protected

    def dead(self, um: UserMasks) -> np.ndarray:
        dead = np.zeros(self.n_values, bool)
        for fn in self.dead_rules:
            fn(dead, um)
        return dead

    def removed_slices(self, um: UserMasks) -> set[Slice]:
        """Every param slice the final masks zero beyond the user's masks' own zeros."""
        dead = self.dead(um)
        unread: set[tuple[str, int]] = set()  # (grouped conv, group) whose every output went
        while True:  # channels nothing reads go first, then the rectangles keep what they need
            gone = self._gone(um, dead, unread)
            now = {(w, k) for w, _, y in self.grouped for k in range(len(y))
                   if all(self.root(int(e)) in gone for e in y[k])}
            if now <= unread:
                break
            unread |= now
        self._rectangles(gone)
        self.gone = gone
        out = {s for _, s, e in self.roles if self.root(e) in gone}
        for w, x, _ in self.grouped:  # a column goes where its position went from every group
            out |= {(w, 1, j) for j in range(x.shape[1]) if all(self.root(int(e)) in gone for e in x[:, j])}
        for h in self.heads:
            out |= h.removed_slices(um)
        return out

    def emptied(self) -> bool:
        """Did the last :meth:`removed_slices` remove every channel of a tensor of several?"""
        return any(len(t) > 1 and all(self.root(int(e)) in self.gone for e in t) for t in self.tensors)

    def _gone(self, um: UserMasks, dead: np.ndarray, unread: set) -> set[int]:
        """The groups that go: no barrier, and every channel a sink reads is dead (every source
        masked where none reads it), or every sink is masked. A grouped conv's column j reads
        position j of every group whose outputs are not all gone (``unread``)."""
        info: dict[int, dict] = {}

        def of(root: int) -> dict:
            return info.setdefault(root, {"barrier": False, "src": [], "sink": [], "read": []})

        for e in self.barriers:
            of(self.root(e))["barrier"] = True
        reads = [(kind, um.masked(s), e) for kind, s, e in self.roles if kind != "follower"]
        reads += [("sink", um.masked((w, 1, j)) or (w, k) in unread, int(e))
                  for w, x, _ in self.grouped for (k, j), e in np.ndenumerate(x)]
        for kind, masked, e in reads:
            g = of(self.root(e))
            if kind == "source":
                g["src"].append(masked)
            else:
                g["sink"].append(masked)
                g["read"].append(bool(dead[e]))
        gone = set()
        for root, g in info.items():
            by_source = bool(g["src"]) and (all(g["read"]) if g["read"] else all(g["src"]))
            by_sink = bool(g["sink"]) and all(g["sink"])
            if not g["barrier"] and (by_source or by_sink):
                gone.add(root)
        return gone

    def _rectangles(self, gone: set[int]) -> None:
        """A grouped conv keeps kept groups × kept positions (on its input and its output):
        a channel that goes while its group and its position are both kept elsewhere stays."""
        changed = True
        while changed:
            changed = False
            for _, x, y in self.grouped:
                kept_x = np.vectorize(lambda e: self.root(int(e)) not in gone)(x)
                kept_y = np.vectorize(lambda e: self.root(int(e)) not in gone)(y)
                groups = kept_x.any(1) | kept_y.any(1)
                for ids, kept in ((x, kept_x), (y, kept_y)):
                    back = groups[:, None] & kept.any(0)[None, :] & ~kept
                    for e in ids[back]:
                        gone.discard(self.root(int(e)))
                        changed = True

    def final_masks(self, um: UserMasks, removed: set[Slice]) -> dict[str, torch.Tensor]:
        """Full-shape bool final masks (True: kept) of every parameter: the user's, less the
        ``removed`` slices."""
        out = {k: um.full.get(k, torch.ones(shp, dtype=torch.bool)).clone() for k, shp in self.shapes.items()}
        for fqn, dim, i in removed:
            out[fqn].select(dim, i).fill_(False)
        return out
