"""Shape rules → coupled channel groups → removal plan (with reasons).

1. union-find over channel elements (scipy connected components on the link edges);
2. reshapes resolved once fixed dims are known (flatten joins the free part; several
   free parts are matched by coordinates and kept as a rectangle);
3. forward *dead* analysis (every source behind a channel masked, ``any`` through
   products) and *zero* analysis (is the channel exactly zero in the reference);
4. a group goes iff it has no barrier and either its sink-facing channels are dead or
   every sink slice is masked (``channel`` mode), or it is provably zero/unused in the
   user-masked model (``exact`` mode);
5. closure under constraints (GroupNorm blocks, rectangles, zero-at-LayerNorm);
6. final masks (⊇ user masks) and kept indices for every slot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from slimc.errors import PlanError
from slimc.graph import DependencyGraph
from slimc.compact import FinalMasks, structured_mask
from slimc.masks import MaskSet
from slimc.shape_rules import Blocks, EqualCount, KeepMore, Link, NeedsZero, SlotKey
from slimc.tensors import tied_groups


@dataclass
class ProductFact:
    big: np.ndarray  # element ids of the big dim
    coords: list[np.ndarray]  # per free part: element id of that part for each big element
    why: str


@dataclass
class RemovalPlan:
    dg: DependencyGraph
    mode: str
    removed: np.ndarray  # bool per element
    group: np.ndarray  # group label per element
    kept: dict[SlotKey, np.ndarray]  # slots that lose elements → kept indices
    final_masks: FinalMasks  # {param_fqn: bool mask that broadcasts to the param}, kept as factors
    kept_reasons: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_groups_removed: int = 0
    param_group: np.ndarray | None = None  # per group: does a param slice (source, sink, follower) belong to it
    _kept_t: dict = field(default_factory=dict, repr=False)

    def free_input_dims(self, inputs: tuple, dynamic: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
        """Input index → dims no parameter is coupled to (batch, sequence, image size): sizes
        the model may take other values of (``dynamic``: what the front end kept dynamic)."""
        gm, dg = self.dg.gm, self.dg
        nodes = [n for n in gm.graph.nodes if n.op == "placeholder" and isinstance(dg.shapes.get(n.name), tuple)]
        positions = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        out: dict[int, list[int]] = {}
        for i, n in zip(positions, nodes):
            dims = []
            for d in range(len(dg.shapes[n.name])):
                slot = ("v", n.name, d)
                if slot not in dg.offset or (dynamic is not None and d not in dynamic.get(i, [])):
                    continue
                if self.param_group is None or not self.param_group[self.group[dg.ids(slot)]].any():
                    dims.append(d)
            out[i] = dims
        return out

    def kept_idx(self, slot: SlotKey) -> np.ndarray | None:
        return self.kept.get(slot)

    def kept_index(self, slot: SlotKey) -> torch.Tensor | None:
        """:meth:`kept_idx` as a (cached) torch index tensor."""
        k = self.kept.get(slot)
        if k is None:
            return None
        if slot not in self._kept_t:
            self._kept_t[slot] = torch.from_numpy(np.ascontiguousarray(k, dtype=np.int64))
        return self._kept_t[slot]

    def new_size(self, slot: SlotKey) -> int:
        k = self.kept.get(slot)
        return self.dg.size[slot] if k is None else len(k)


def param_aliases(dg: DependencyGraph) -> list[list[str]]:
    """Names that refer to one shared Parameter (tied weights), each list with ≥ 2 names."""
    return tied_groups(dg.gm.named_parameters(remove_duplicate=False))


class _Union:
    """Union-find over elements by connected components (scipy). ``aligned`` (per element,
    the id it shares with the same channel of slots joined one-to-one, see :func:`_aligned`)
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
            self._labels = _components(np.arange(self.m), self.a, self.b, self.m)
        elif self.a:
            lab = self._labels
            self._labels = _components(lab, [lab[a] for a in self.a], [lab[b] for b in self.b], int(lab.max()) + 1)
        self.a, self.b = [], []
        return self._labels[self.map]


def _aligned(dg: DependencyGraph, pairs: list[tuple[SlotKey, SlotKey]]) -> tuple[np.ndarray, int]:
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


def _components(of: np.ndarray, a: list[np.ndarray], b: list[np.ndarray], n: int) -> np.ndarray:
    """Component label of each entry of ``of`` (ids < n) once the pairs (a, b) are joined."""
    if not a:
        return of
    a, b = np.concatenate(a), np.concatenate(b)
    m = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(m, directed=False)[1][of]


def _row_ids(keys: np.ndarray) -> np.ndarray:
    """One id per distinct row of the int matrix ``keys`` (like ``np.unique(axis=0)``'s
    inverse), column by column on plain ints, which sort far faster than rows."""
    ids = np.zeros(len(keys), np.int64)
    for col in keys.T:
        c = col - col.min()
        ids = np.unique(ids * (int(c.max()) + 1) + c, return_inverse=True)[1].reshape(-1)
    return ids


def _link_ids(dg: DependencyGraph, ln: Link) -> tuple[np.ndarray, np.ndarray]:
    a, b = dg.ids(ln.a, ln.a_idx), dg.ids(ln.b, ln.b_idx)
    if len(a) != len(b) and ln.kind != "feed":
        raise PlanError(f"internal: link {ln.kind} {ln.a} → {ln.b} pairs {len(a)} with {len(b)} elements")
    return a, b


def _any_by_group(flags: np.ndarray, grp: np.ndarray, g: int) -> np.ndarray:
    out = np.zeros(g, bool)
    out[grp[flags]] = True
    return out


def _count_by_group(flags: np.ndarray, grp: np.ndarray, g: int) -> np.ndarray:
    return np.bincount(grp[flags], minlength=g)


_TRUE, _NEUTRAL = np.int8(1), np.int8(-1)  # a contribution: 1 true, 0 false, -1 neutral


def _terms_and_factors(contribs: list[tuple[np.ndarray, Any, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """One op's output elements from its contributions ``(elements, term, value)`` (value:
    1 true, 0 false, -1 neutral; term: an int, or one per element — a split reshape's
    fibers): an element is true when, in every term that has a non-neutral contribution,
    some contribution is true. Returns (elements, true, has a non-neutral contribution),
    marked in a table of (element, term) cells."""
    b = np.concatenate([c[0] for c in contribs])
    v = np.concatenate([c[2] for c in contribs])
    if all(np.isscalar(c[1]) for c in contribs):  # the usual case: one term per contribution
        index = {term: i for i, term in enumerate(sorted({c[1] for c in contribs}))}
        terms = list(index)
        t = np.concatenate([np.full(len(c[0]), index[c[1]], np.int64) for c in contribs])
    else:
        t = np.concatenate([np.full(len(c[0]), c[1], np.int64) if np.isscalar(c[1]) else c[1] for c in contribs])
        terms, t = np.unique(t, return_inverse=True)
    lo, span = int(b.min()), int(b.max()) - int(b.min()) + 1
    if span <= 4 * len(b):  # an op's output elements are (nearly) one range: index it directly
        local, el = b - lo, None
    else:
        el, local = np.unique(b, return_inverse=True)
        span = len(el)
    k = len(terms)
    cell = local * k + t.reshape(-1)
    any_true = np.zeros(span * k, bool)
    any_true[cell[v == 1]] = True
    present = np.zeros(span * k, bool)
    present[cell[v != -1]] = True
    any_true, present = any_true.reshape(span, k), present.reshape(span, k)
    true = (any_true | ~present).all(axis=1)
    has = present.any(axis=1)
    if el is None:
        seen = np.zeros(span, bool)
        seen[local] = True
        seen = np.nonzero(seen)[0]
        el, true, has = seen + lo, true[seen], has[seen]
    return el, true & has, has


class Propagation:
    """All element-level arrays for one (graph, masks) pair."""

    def __init__(self, dg: DependencyGraph, masks: MaskSet):
        self.dg = dg
        self.masks = masks
        n = dg.n
        self.links = [(f, ln, *_link_ids(dg, ln)) for f in dg.facts for ln in f.coupling.links]
        self.barrier = np.zeros(n, bool)
        self.barrier_why: dict[SlotKey, str] = dict(dg.barrier_reasons)
        for slot in dg.barrier_reasons:
            if slot in dg.offset:
                self.barrier[dg.ids(slot)] = True
        one_to_one, mapped = [], []
        for _, ln, a, b in self.links:
            if ln.kind == "feed":  # a broadcast term joins no channels
                continue
            if ln.a_idx is None and ln.b_idx is None and ln.a in dg.offset and ln.b in dg.offset:
                one_to_one.append((ln.a, ln.b))
            else:
                mapped.append((a, b))
        self.aliases = param_aliases(dg)
        for names in self.aliases:  # one tensor under several names: one set of channels
            for other in names[1:]:
                for d in range(len(dg.gm.get_parameter(names[0]).shape)):
                    one_to_one.append((("p", names[0], d), ("p", other, d)))
        self.uf = _Union(n, _aligned(dg, one_to_one))
        for a, b in mapped:
            self.uf.add(a, b)
        self.products: list[ProductFact] = []
        self.splits: list[tuple] = []  # (fact, big ids, [axis ids per free part]) of split reshapes
        self.group = self.uf.labels()
        self._resolve_reshapes()
        self.ng = int(self.group.max()) + 1 if n else 0
        self._roles()

    # --- reshapes -----------------------------------------------------------------
    def _resolve_reshapes(self) -> None:
        """Reshapes with at most one free part are resolved first, in rounds: a union can fix
        a part of another reshape (a batch dim reached through a chain of views). What still
        has several free parts is then matched by coordinates."""
        dg = self.dg
        todo = [(f, r) for f in dg.facts for r in f.coupling.reshapes]
        multi: list[tuple] = []
        while todo:
            grp = self.uf.labels()
            gb = _any_by_group(self.barrier, grp, int(grp.max()) + 1 if dg.n else 0)
            multi, progress = [], False
            for f, r in todo:
                free = [k for k, s in enumerate(r.parts) if r.sizes[k] > 1 and not gb[grp[dg.ids(s)]].any()]
                if len(free) > 1:
                    multi.append((f, r))
                    continue
                progress = True
                big = dg.ids(r.big)
                if not free:
                    self.barrier[big] = True
                    self.barrier_why.setdefault(r.big, f"reshape at '{r.node}' of fixed dims")
                    continue
                part = self._part_flows(f, r, free)[0]
                self.uf.add(big, part)
            if not progress:
                break
            todo = multi
        grp = self.uf.labels()
        if not multi:
            self.group = grp
            return
        gb = _any_by_group(self.barrier, grp, int(grp.max()) + 1)
        pending: list[tuple] = []
        for f, r in multi:
            free = [k for k, s in enumerate(r.parts) if r.sizes[k] > 1 and not gb[grp[dg.ids(s)]].any()]
            pending.append((f, dg.ids(r.big), self._part_flows(f, r, free), f"reshape at '{r.node}'", r.big_is_input))
        width = max(len(p[2]) for p in pending)
        keys = []
        for f, big, parts, why, _ in pending:
            key = np.full((len(big), width), -1, dtype=np.int64)
            key[:, : len(parts)] = np.sort(np.stack([grp[p] for p in parts], axis=1), axis=1)
            keys.append(key)
            self.products.append(ProductFact(big, parts, why))
        inv = _row_ids(np.concatenate(keys))
        allel = np.concatenate([p[1] for p in pending])
        first = np.full(inv.max() + 1, -1, dtype=np.int64)
        first[inv[::-1]] = allel[::-1]
        self.uf.add(allel, first[inv])
        # dead/zero flow from a split's elements to the merge elements with the same coordinates
        src = np.full(inv.max() + 1, -1, dtype=np.int64)
        pos = 0
        spans = []
        for f, big, parts, why, is_input in pending:
            spans.append((f, big, inv[pos: pos + len(big)], is_input))
            pos += len(big)
        for f, big, key, is_input in spans:
            if is_input:
                src[key] = big
        for f, big, key, is_input in spans:
            if not is_input:
                ok = src[key] >= 0
                self._flow(f, src[key][ok], big[ok], np.zeros(int(ok.sum()), np.int64))
        self.group = self.uf.labels()

    def _part_flows(self, f, r, free: list[int]) -> list[np.ndarray]:
        """Element ids of each free part for every big element; dead/zero flows between them."""
        big = self.dg.ids(r.big)
        sizes = np.array(r.sizes)
        strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int64)
        e = np.arange(len(big))
        parts = []
        if r.big_is_input and free:
            self.splits.append((f, big, [self.dg.ids(r.parts[k])[(e // strides[k]) % sizes[k]] for k in free]))
        for k in free:
            part = self.dg.ids(r.parts[k])[(e // strides[k]) % sizes[k]]
            if r.big_is_input:  # an axis element is dead/zero when its whole fiber is
                fiber = (e // (strides[k] * sizes[k])) * strides[k] + e % strides[k]
                self._flow(f, big, part, fiber, split=True)
            else:  # a merged element is dead/zero when any of its axis elements is
                self._flow(f, part, big, np.zeros(len(big), np.int64))
            parts.append(part)
        return parts

    def _flow(self, fact, a: np.ndarray, b: np.ndarray, terms: np.ndarray, split: bool = False) -> None:
        """A synthetic flow link for the dead/zero analyses through a reshape, one term per
        element (``split``: big element → its axis elements, one term per fiber; liveness
        handles those itself)."""
        tag = ("reshape", "split") if split else ("reshape",)
        term = int(terms[0]) if len(terms) and (terms == terms[0]).all() else terms
        self.links.append((fact, Link("flow", ("reshape",), tag, term=term), a, b))

    # --- roles and masks ----------------------------------------------------------
    def _roles(self) -> None:
        n, dg = self.dg.n, self.dg
        self.is_source = np.zeros(n, bool)
        self.is_sink = np.zeros(n, bool)
        self.is_follower = np.zeros(n, bool)
        self.sink_consumed = np.zeros(n, bool)
        self.user_masked = np.zeros(n, bool)
        self.linked_params: set[SlotKey] = set()
        for _, ln, a, b in self.links:
            if ln.kind == "source":
                self.is_source[a] = True
            elif ln.kind == "sink":
                self.is_sink[a] = True
                self.sink_consumed[b] = True
            elif ln.kind == "follower":
                self.is_follower[a] = True
            if ln.kind in ("source", "sink", "follower"):
                self.linked_params.add(ln.a)
        for slot in self.linked_params:
            fqn, d = slot[1], slot[2]
            if fqn in self.masks:
                self.user_masked[dg.ids(slot)] = self.masks.zero_slices(fqn, d).numpy()

    # --- forward analyses ---------------------------------------------------------
    def forward(self, value: Callable[[Link, np.ndarray, np.ndarray, np.ndarray], np.ndarray | None]) -> np.ndarray:
        """Per element: every term true, a term being true if any of its factors is.

        ``value`` gives each contribution as int8: 1 true, 0 false, -1 neutral (left out,
        like a follower; an element with only neutral contributions stays neutral).
        """
        state = np.zeros(self.dg.n, bool)
        neutral = np.zeros(self.dg.n, bool)
        by_fact: dict[int, list] = {}
        for f, ln, a, b in self.links:
            if ln.term is None or ln.kind in ("sink", "tie"):  # ties carry no data
                continue
            by_fact.setdefault(id(f), []).append((ln, a, b))
        for f in self.dg.facts:
            for slot in f.coupling.zeros:  # torch.zeros: zero (and dead) whatever its sources
                state[self.dg.ids(slot)] = True
            items = by_fact.get(id(f))
            if not items:
                continue
            # a rule's virtual slots are values inside the op (an LSTM's units): they feed the
            # op's outputs within the same fact, so evaluate it again once they are known
            for _ in range(3 if f.coupling.virtual else 1):
                self._fact_state(items, value, state, neutral)
        return state

    def _fact_state(self, items: list, value, state: np.ndarray, neutral: np.ndarray) -> None:
        """Set the state of every element one fact's links reach: true where every term is."""
        contribs, whole = [], set()
        for ln, a, b in items:
            v = value(ln, a, state, neutral)
            if v is not None and ln.kind == "feed":  # one term for every element of b
                v = np.full(len(b), 1 if (v == 1).all() else 0 if (v != -1).any() else -1, np.int8)
            if v is not None:
                contribs.append((b, ln.term, v))
                whole.add(ln.b if ln.b_idx is None and ln.b in self.dg.offset else None)
        if len(whole) == len(contribs) and None not in whole:
            for b, _, v in contribs:  # each into a slot of its own, whole: nothing to combine
                state[b] = v == 1
                neutral[b] = v == -1
        elif contribs:
            el, true, has = _terms_and_factors(contribs)
            state[el] = true
            neutral[el] = ~has

    def live(self, sink_gone: np.ndarray | None = None) -> np.ndarray:
        """Per element, backward: does anything that is kept read it? A barrier is live; a
        flow's input is live if its output is; a channel an unmasked sink reads is live; a
        contracted dim is live if the op's output is; an element split into axes is live
        only if every axis slice it lies in is (a head whose output is unused goes whole).
        ``sink_gone``: sink elements that read nothing (masked, or in a group already removed)."""
        dg = self.dg
        gone = self.user_masked if sink_gone is None else sink_gone
        live = self.barrier.copy()
        for slot, n in dg.size.items():  # a size-1 dim is broadcast or indexed, never a channel to drop
            if n == 1:
                live[dg.offset[slot]] = True
        by_fact: dict[int, list] = {}
        for f, ln, a, b in self.links:
            by_fact.setdefault(id(f), []).append((ln, a, b))
        splits: dict[int, list] = {}
        for f, big, parts in self.splits:
            splits.setdefault(id(f), []).append((big, parts))
        for f in reversed(dg.facts):
            for ln, a, b in by_fact.get(id(f), ()):
                if ln.kind == "flow" and ln.b != ("reshape", "split"):
                    np.logical_or.at(live, a, live[b])
                elif ln.kind == "sink":
                    np.logical_or.at(live, b, ~gone[a])
            for big, parts in splits.get(id(f), ()):
                both = np.ones(len(big), bool)
                for part in parts:
                    both &= live[part]
                live[big] |= both
            for contracted, by in f.coupling.uses:
                if contracted in dg.offset and by in dg.offset and live[dg.ids(by)].any():
                    live[dg.ids(contracted)] = True
        return live

    def dead(self) -> np.ndarray:
        def value(ln: Link, a: np.ndarray, state: np.ndarray, neutral: np.ndarray):
            if ln.kind == "feed":
                return None  # a broadcast term: what removes a channel is its own sources
            if ln.kind == "flow":
                return np.where(neutral[a], _NEUTRAL, state[a].view(np.int8))
            if ln.kind == "source":
                return self.user_masked[a].view(np.int8)
            # a masked follower (BN γ in network slimming, a layer scale) kills its factor;
            # an unmasked one neither keeps a channel alive nor kills it
            return np.where(self.user_masked[a], _TRUE, _NEUTRAL)

        return self.forward(value)

    def zero(self, param_zero: np.ndarray) -> np.ndarray:
        def value(ln: Link, a: np.ndarray, state: np.ndarray, neutral: np.ndarray):
            if ln.kind in ("flow", "feed") and ln.a[0] == "v":
                return (state[a] & ln.zero_ok).view(np.int8)
            return param_zero[a].view(np.int8)

        return self.forward(value)


def _constraints(dg: DependencyGraph):
    for f in dg.facts:
        for c in f.coupling.constraints:
            yield c


def plan(dg: DependencyGraph, masks: MaskSet, mode: str = "channel", allow_empty: bool = False) -> RemovalPlan:
    if mode not in ("channel", "exact"):
        raise PlanError(f"unknown mode '{mode}': use channel or exact")
    P = Propagation(dg, masks)
    grp, ng = P.group, P.ng
    gbar = _any_by_group(P.barrier, grp, ng)
    slots, _, sizes = dg.slot_table()
    is_value = np.repeat(np.array([s[0] == "v" for s in slots], bool), sizes)
    param_el = P.is_source | P.is_sink | P.is_follower

    if mode == "channel":
        dead = P.dead()
        n_sc = _count_by_group(P.sink_consumed, grp, ng)
        n_sc_dead = _count_by_group(P.sink_consumed & dead, grp, ng)
        n_src = _count_by_group(P.is_source, grp, ng)
        n_src_m = _count_by_group(P.is_source & P.user_masked, grp, ng)
        by_src = (n_src > 0) & np.where(n_sc > 0, n_sc_dead == n_sc, n_src_m == n_src)
    else:
        zero_user = P.zero(P.user_masked)
        n_val = _count_by_group(is_value, grp, ng)
        n_val_zero = _count_by_group(is_value & zero_user, grp, ng)
        by_src = (n_val > 0) & (n_val_zero == n_val)
    n_sink = _count_by_group(P.is_sink, grp, ng)
    n_sink_m = _count_by_group(P.is_sink & P.user_masked, grp, ng)
    by_sink = (n_sink > 0) & (n_sink_m == n_sink)
    # channels nothing kept reads: a head whose output columns are masked, or whose output went
    # because its q (or k) did; rounds, as a removed group's sinks read nothing any more
    removed_g = ~gbar & (by_src | by_sink)
    has_param = _any_by_group(param_el, grp, ng)
    for _ in range(5):
        live = P.live(P.user_masked | (P.is_sink & removed_g[grp]))
        grown = removed_g | (~gbar & has_param & (_count_by_group(is_value & live, grp, ng) == 0))
        if (grown == removed_g).all():
            break
        removed_g = grown
    wanted_g = removed_g.copy()
    forced: dict[int, str] = {}

    def keep(groups: np.ndarray, why: str) -> bool:
        groups = np.unique(groups)
        groups = groups[removed_g[groups]]
        if len(groups) == 0:
            return False
        removed_g[groups] = False
        for g in groups.tolist():
            forced.setdefault(g, why)
        return True

    cons = list(_constraints(dg))

    def equal_counts(c: EqualCount) -> bool:
        """Slots that lose more elements than the least of them keep their last extra ones."""
        ids = [dg.ids(s) for s in c.slots if s in dg.offset]
        gone = [np.nonzero(removed_g[grp[i]])[0] for i in ids]
        least = min((len(g) for g in gone), default=0)
        extra = [i[g[least:]] for i, g in zip(ids, gone) if len(g) > least]
        return keep(grp[np.concatenate(extra)], c.why) if extra else False

    def keep_more(c: KeepMore) -> bool:
        """A slot of ``big`` that keeps no more than the most kept of ``small`` keeps more."""
        kept_n = lambda s: int((~removed_g[grp[dg.ids(s)]]).sum())  # noqa: E731
        most = max((kept_n(s) for s in c.small if s in dg.offset), default=0)
        extra = []
        for s in c.big:
            ids = dg.ids(s)
            gone = np.nonzero(removed_g[grp[ids]])[0]
            extra.append(ids[gone[: max(0, most + 1 - kept_n(s))]])
        extra = np.concatenate(extra) if extra else np.zeros(0, np.int64)
        return keep(grp[extra], c.why) if len(extra) else False
    # Reshape products: an element (i, j, …) of a merged/split dim lives iff every axis index
    # lives. Elements that carry sources (a shuffled channel) are *primary*: their axes follow
    # them and the kept set stays a rectangle. Elements without sources (features of a
    # flatten of two channel dims) are *derived*: they go with any of their axes.
    has_src = _any_by_group(P.is_source, grp, ng)
    pfs = []
    for pf in P.products:
        bg = grp[pf.big]
        ax = [grp[c] for c in pf.coords]
        pfs.append((pf, bg, ~has_src[bg] & ~gbar[bg], ax, [has_src[a] | gbar[a] for a in ax]))

    def projections(kept_el: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per group: does a kept primary element of *any* product sit on it (``proj``), and
        does any product have a primary element on it at all (``leadable``)? One axis is one
        dim of one tensor: a head kept by q keeps that head in v's reshape too."""
        proj = np.zeros(ng, bool)
        leadable = np.zeros(ng, bool)
        for pf, bg, derived, ax, primary_ax in pfs:
            lead = kept_el[pf.big] & ~derived
            for a in ax:
                proj[a[lead]] = True
                leadable[a[~derived]] = True
        return proj, leadable

    def axis_kept(ax, primary_ax, proj, leadable) -> np.ndarray:
        """Per big element: is every axis index it sits on kept?"""
        rect = np.ones(len(ax[0]), bool)
        for a, prim in zip(ax, primary_ax):
            # an axis no primary element leads (only derived products use it) stays
            rect &= np.where(prim, ~removed_g[a], proj[a] | ~leadable[a]) | gbar[a]
        return rect

    for _ in range(100):
        changed = False
        kept_el = ~removed_g[grp]
        for c in cons:
            if isinstance(c, Blocks) and c.slot in dg.offset:
                ids = dg.ids(c.slot).reshape(-1, c.block)
                partial = kept_el[ids].any(axis=1) & ~kept_el[ids].all(axis=1)
                if partial.any():
                    changed |= keep(grp[ids[partial].reshape(-1)], c.why)
        for c in cons:
            if isinstance(c, EqualCount):
                changed |= equal_counts(c)
            elif isinstance(c, KeepMore):
                changed |= keep_more(c)
        kept_el = ~removed_g[grp]
        for pf, bg, derived, ax, primary_ax in pfs:
            lead = kept_el[pf.big] & ~derived
            for a, prim in zip(ax, primary_ax):  # a kept primary element keeps its axes
                changed |= keep(a[lead & prim], f"{pf.why}: kept set must stay a rectangle")
        kept_el = ~removed_g[grp]
        proj, leadable = projections(kept_el)
        for pf, bg, derived, ax, primary_ax in pfs:
            grow = axis_kept(ax, primary_ax, proj, leadable) & ~kept_el[pf.big] & ~derived
            if grow.any():
                changed |= keep(bg[grow], f"{pf.why}: kept set must stay a rectangle")
        needs = [c for c in cons if isinstance(c, NeedsZero) and c.slot in dg.offset]
        if needs:
            # channel mode compares against the final masks, exact mode against the user's
            param_zero = P.user_masked | (removed_g[grp] & param_el) if mode == "channel" else P.user_masked
            z = P.zero(param_zero)
            for c in needs:
                ids = dg.ids(c.slot)
                bad = removed_g[grp[ids]] & ~z[ids]
                if bad.any():
                    changed |= keep(grp[ids[bad]], f"{c.why}: the removed channel is not zero at its input")
        if not changed:
            break
    # derived elements and source-less axes follow the rectangle
    proj, leadable = projections(~removed_g[grp])
    for pf, bg, derived, ax, primary_ax in pfs:
        rect = axis_kept(ax, primary_ax, proj, leadable)
        removed_g[bg[derived]] = ~rect[derived]
    for pf, bg, derived, ax, primary_ax in pfs:
        for a, prim in zip(ax, primary_ax):
            sel = a[~prim & leadable[a]]
            removed_g[sel] = ~proj[sel]
    removed = removed_g[grp]

    # empty layers
    n_removed = dg.per_slot_count(removed)
    for i in np.nonzero((n_removed == sizes) & (sizes > 1))[0].tolist():
        s = slots[i]
        ids = dg.ids(s)
        if s[0] == "v" and removed[ids].all():  # (one kept channel may have filled an earlier one)
            name = _slot_name(dg, s)
            if not allow_empty:
                raise PlanError(
                    f"the masks remove every channel of {name} ({len(ids)} channels): keep at least one, "
                    "or pass --allow-empty to keep one zero channel"
                )
            removed_g[grp[ids[0]]] = False
            removed = removed_g[grp]
            forced.setdefault(int(grp[ids[0]]), f"{name} would be empty: one zero channel kept")

    kept: dict[SlotKey, np.ndarray] = {}
    for i in np.nonzero(dg.per_slot_count(removed))[0].tolist():
        kept[slots[i]] = np.nonzero(~removed[dg.ids(slots[i])])[0]

    final = _final_masks(dg, P, removed, masks)
    result = RemovalPlan(dg, mode, removed, grp, kept, final, n_groups_removed=int(removed_g.sum()),
                         param_group=has_param)
    result.kept_reasons = _kept_reasons(dg, P, grp, removed_g, wanted_g, gbar, forced, mode)
    return result


def _final_masks(dg: DependencyGraph, P: Propagation, removed: np.ndarray, masks: MaskSet) -> FinalMasks:
    """The user's masks, times one compact keep vector per dim that loses slices (never a
    full-size tensor: see :class:`slimc.compact.FinalMasks`)."""
    params = dict(dg.gm.named_parameters(remove_duplicate=False))
    keep: dict[str, list[torch.Tensor]] = {}
    for slot in sorted(P.linked_params, key=lambda s: (s[1], s[2])):
        fqn, d = slot[1], slot[2]
        if fqn not in params:
            continue
        r = removed[dg.ids(slot)]
        if r.any():
            keep.setdefault(fqn, []).append(structured_mask(params[fqn].shape, d, torch.from_numpy(~r)))
    for names in P.aliases:  # tied weights share one final mask (normalize joined their user masks)
        joint = [f for n in names for f in keep.get(n, ())]
        if joint:
            for n in names:
                keep[n] = joint
    return FinalMasks(masks.masks, keep)


def _slot_name(dg: DependencyGraph, s: SlotKey) -> str:
    kind, name, d = s
    if kind == "p":
        return f"param '{name}' dim {d}"
    node = next((n for n in dg.gm.graph.nodes if n.name == name.split("#")[0]), None)
    where = f" ({node.op} {node.target})" if node is not None and node.op == "call_module" else ""
    return f"'{name}'{where} dim {d}"


def _kept_reasons(dg, P, grp, removed_g, wanted_g, gbar, forced, mode: str = "channel") -> list[dict]:
    """Groups the user masked in part (or wholly) that are kept, aggregated by reason."""
    partly = _any_by_group((P.is_source | P.is_sink) & P.user_masked, grp, len(removed_g))
    interesting = np.nonzero(partly & ~removed_g)[0]
    if len(interesting) == 0:
        return []
    starts = np.array([dg.offset[s] for s in dg.offset])
    slots = list(dg.offset)
    order = np.argsort(starts)
    starts_sorted = starts[order]

    def slot_of(e: int) -> tuple[SlotKey, int]:
        i = order[np.searchsorted(starts_sorted, e, side="right") - 1]
        return slots[i], e - starts[i]

    # first element of each group, in element order, for each property
    def first_where(flags: np.ndarray) -> dict[int, int]:
        ids = np.nonzero(flags)[0]
        g = grp[ids]
        _, first = np.unique(g, return_index=True)
        return dict(zip(g[first].tolist(), ids[first].tolist()))

    first_bar = first_where(P.barrier)
    first_unmasked_src = first_where(P.is_source & ~P.user_masked)
    agg: dict[str, dict] = {}
    for g in interesting.tolist():
        if gbar[g]:
            s, _ = slot_of(first_bar[g])
            why = f"barrier: {P.barrier_why.get(s, 'fixed dim')}"
        elif g in forced:
            why = forced[g]
        elif mode == "exact":
            why = "exact mode: not provably zero in your masked model (a bias or BatchNorm β keeps it non-zero)"
        elif g in first_unmasked_src:
            s, i = slot_of(first_unmasked_src[g])
            why = f"held by unmasked source '{s[1]}' (dim {s[2]})"
        elif wanted_g[g]:
            why = "kept by a constraint"
        else:
            why = "only part of the group's sinks are masked"
        a = agg.setdefault(why, {"reason": why, "groups": 0})
        a["groups"] += 1
    return sorted(agg.values(), key=lambda r: -r["groups"])
