"""The propagation interpreter: every element's role (source, sink, follower, user-masked)
and the generic forward analyses over the links — *dead* (every source behind a channel
masked) and *zero* (exactly zero in the reference) — and backward *liveness*."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from slimc.graph import DependencyGraph
from slimc.masks import MaskSet
from slimc.propagate.groups import ElementGroups, aligned_classes, link_ids
from slimc.propagate.reshapes import ProductFact, resolve_reshapes
from slimc.shape_rules import Link, SlotKey
from slimc.tensors import tied_groups


def param_aliases(dg: DependencyGraph) -> list[list[str]]:
    """Names that refer to one shared Parameter (tied weights), each list with ≥ 2 names."""
    return tied_groups(dg.gm.named_parameters(remove_duplicate=False))


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


def _combine(contribs: list[tuple[Any, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_terms_and_factors` for contributions ``(term, value)`` that all cover one
    whole slot, element by element: (true, has a non-neutral contribution)."""
    by_term: dict[Any, list[np.ndarray]] = {}
    for term, v in contribs:
        by_term.setdefault(term, []).append(v)
    true, has = np.ones(len(contribs[0][1]), bool), np.zeros(len(contribs[0][1]), bool)
    for vs in by_term.values():
        any_true, present = vs[0] == 1, vs[0] != -1
        for v in vs[1:]:  # (two or three factors: pairwise, cheaper than stacking)
            any_true |= v == 1
            present |= v != -1
        true &= any_true | ~present
        has |= present
    return true & has, has


class Propagation:
    """All element-level arrays for one (graph, masks) pair."""

    def __init__(self, dg: DependencyGraph, masks: MaskSet):
        self.dg = dg
        self.masks = masks
        structure = dg._ids.get("propagation")  # the masks-independent part, once per graph
        if structure is None:
            structure = dg._ids["propagation"] = self._structure()
        self.__dict__.update(structure)
        self.user_masked = np.zeros(dg.n, bool)
        for slot in self.linked_params:
            fqn, d = slot[1], slot[2]
            if fqn in masks:
                self.user_masked[dg.ids(slot)] = masks.zero_slices(fqn, d).numpy()

    def _structure(self) -> dict[str, Any]:
        """Links, barriers, element groups, reshapes and every element's role: what the
        masks do not change (kept on the dependency graph, read-only from here on)."""
        dg = self.dg
        n = dg.n
        self.links = [(f, ln, *link_ids(dg, ln)) for f in dg.facts for ln in f.coupling.links]
        self.barrier = np.zeros(n, bool)
        self.barrier_why: dict[SlotKey, str] = dict(dg.barrier_reasons)
        for slot in dg.barrier_reasons:
            if slot in dg.offset:
                self.barrier[dg.ids(slot)] = True
        self.held = np.zeros(n, bool)  # barriers that only hold positions (resolve_reshapes: not fixing)
        for slot in dg.holds:
            if slot in dg.offset:
                self.held[dg.ids(slot)] = True
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
        self.element_groups = ElementGroups(n, aligned_classes(dg, one_to_one))
        for a, b in mapped:
            self.element_groups.add(a, b)
        self.products: list[ProductFact] = []
        self.splits: list[tuple] = []  # (fact, big ids, [axis ids per free part]) of split reshapes
        self.group = self.element_groups.labels()
        resolve_reshapes(self)
        self.ng = int(self.group.max()) + 1 if n else 0
        self._roles()
        self._schedules()
        self.contracted = self._contraction_reads()
        for a in (self.barrier, self.group, self.is_source, self.is_sink, self.is_follower, self.sink_consumed,
                  self.read_as_value, self.contracted):
            a.flags.writeable = False
        keep = ("links", "barrier", "barrier_why", "aliases", "element_groups", "products", "splits", "group", "ng",
                "is_source", "is_sink", "is_follower", "sink_consumed", "read_as_value", "linked_params",
                "forward_schedule", "live_schedule", "contracted")
        return {k: self.__dict__[k] for k in keep}

    # --- roles --------------------------------------------------------------------
    def _roles(self) -> None:
        n = self.dg.n
        self.is_source = np.zeros(n, bool)
        self.is_sink = np.zeros(n, bool)
        self.is_follower = np.zeros(n, bool)
        self.sink_consumed = np.zeros(n, bool)
        self.read_as_value = np.zeros(n, bool)  # a parameter, buffer or constant an op reads as data
        self.linked_params: set[SlotKey] = set()
        for _, ln, a, b in self.links:
            if ln.kind in ("flow", "feed") and ln.a[0] == "p":
                self.read_as_value[a] = True
            elif ln.kind == "sink" and ln.b[0] == "p":  # a weight consuming a table's channels
                self.read_as_value[b] = True
            if ln.kind == "source":
                self.is_source[a] = True
            elif ln.kind == "sink":
                self.is_sink[a] = True
                self.sink_consumed[b] = True
            elif ln.kind == "follower":
                self.is_follower[a] = True
            if ln.kind in ("source", "sink", "follower"):
                self.linked_params.add(ln.a)
        for _, big, parts in self.splits:  # read by the sinks of its axes: a grouped conv's input
            if any(self.sink_consumed[part].any() for part in parts):  # channel (g, p), by the columns of p
                self.sink_consumed[big] = True

    def _contraction_reads(self) -> np.ndarray:
        """Per element: does its value reach a dim that a product of two activations contracts
        (q·kᵀ, an einsum of two tensors), through flows and reshapes? There it is read as a
        sink would read it, into every element of the result: q and k rows viewed with v's
        as (3, heads, head_dim) at once (timm) are read by the scores, whatever v's are."""
        dg = self.dg
        reads = np.zeros(dg.n, bool)
        for f in dg.facts:
            tied = {s for ln in f.coupling.links if ln.kind == "tie" for s in (ln.a, ln.b)}
            for contracted, _ in f.coupling.uses:
                if contracted in tied and contracted in dg.offset:
                    reads[dg.ids(contracted)] = True
        if not reads.any():
            return reads
        back = [(a, b) for _, ln, a, b in reversed(self.links) if ln.kind == "flow"]  # a split: big ← each axis
        for _ in range(len(back)):
            before = int(reads.sum())
            for a, b in back:
                np.logical_or.at(reads, a, reads[b])
            if int(reads.sum()) == before:
                break
        return reads

    def _schedules(self) -> None:
        """The order the forward and backward analyses visit facts in, with each fact's links
        (what :meth:`forward` and :meth:`live` walk, the same for every mask)."""
        forward: dict[int, list] = {}
        backward: dict[int, list] = {}
        for f, ln, a, b in self.links:
            backward.setdefault(id(f), []).append((ln, a, b))
            if ln.term is None or ln.kind in ("sink", "tie"):  # ties carry no data
                continue
            forward.setdefault(id(f), []).append((ln, a, b))
        splits: dict[int, list] = {}
        for f, big, parts in self.splits:
            splits.setdefault(id(f), []).append((big, parts))
        offset = self.dg.offset

        def whole_slots(items: list) -> bool:  # every link reaches a whole slot, one term each
            return all(ln.b_idx is None and ln.b in offset and np.isscalar(ln.term) for ln, _, _ in items)

        def unique(ids: np.ndarray) -> bool:
            return len(np.unique(ids)) == len(ids)

        self.forward_schedule = [(f, items, whole_slots(items)) for f in self.dg.facts
                                 if (items := forward.get(id(f), [])) or f.coupling.zeros]
        # backward, each link with the elements it sets and whether they are distinct (then a
        # plain |= does what np.logical_or.at does, much faster)
        self.live_schedule = []
        for f in reversed(self.dg.facts):
            links = []
            for ln, a, b in backward.get(id(f), ()):
                if ln.kind == "flow" and ln.b != ("reshape", "split"):
                    links.append((True, a, b, unique(a)))
                elif ln.kind == "sink":
                    links.append((False, a, b, unique(b)))
            self.live_schedule.append((f, links, splits.get(id(f), ())))

    # --- forward analyses ---------------------------------------------------------
    def forward(self, value: Callable[[Link, np.ndarray, np.ndarray], np.ndarray | None]) -> np.ndarray:
        """Per element: every term true, a term being true if any of its factors is.

        ``value(link, a, val)`` gives each contribution as int8: 1 true, 0 false, -1 neutral
        (left out, like a follower; an element with only neutral contributions stays
        neutral); ``val`` is every element's state so far, in the same int8 code.
        """
        val = np.zeros(self.dg.n, np.int8)
        for f, items, whole in self.forward_schedule:
            for slot in f.coupling.zeros:  # torch.zeros: zero (and dead) whatever its sources
                val[self.dg.ids(slot)] = _TRUE
            if not items:
                continue
            # a rule's virtual slots are values inside the op (an LSTM's units): they feed the
            # op's outputs within the same fact, so evaluate it again once they are known
            for _ in range(3 if f.coupling.virtual else 1):
                self._fact_state(items, whole, value, val)
        return val == _TRUE

    def _fact_state(self, items: list, whole: bool, value, val: np.ndarray) -> None:
        """Set the state of every element one fact's links reach: true where every term is.
        ``whole``: every link reaches a whole slot with one term (the usual case: the slots
        hold disjoint elements, each combined on its own)."""
        contribs: list = []
        by_slot: dict[SlotKey, tuple] = {}
        for ln, a, b in items:
            v = value(ln, a, val)
            if v is None:
                continue
            if ln.kind == "feed":  # one term for every element of b
                v = np.full(len(b), 1 if (v == 1).all() else 0 if (v != -1).any() else -1, np.int8)
            if whole:
                entry = by_slot.get(ln.b)
                if entry is None:
                    by_slot[ln.b] = (b, [(ln.term, v)])
                else:
                    entry[1].append((ln.term, v))
            else:
                contribs.append((b, ln.term, v))
        for b, tv in by_slot.values():
            if len(tv) == 1:
                val[b] = tv[0][1]
            else:
                true, has = _combine(tv)
                val[b] = np.where(has, true.view(np.int8), _NEUTRAL)
        if contribs:
            el, true, has = _terms_and_factors(contribs)
            val[el] = np.where(has, true.view(np.int8), _NEUTRAL)

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
        for f, links, splits in self.live_schedule:
            for flow, a, b, distinct in links:
                if flow:  # the input is live where the output is
                    if distinct:
                        live[a] |= live[b]
                    else:
                        np.logical_or.at(live, a, live[b])
                elif distinct:  # a sink: the channels it reads are live where it is kept
                    live[b] |= ~gone[a]
                else:
                    np.logical_or.at(live, b, ~gone[a])
            for big, parts in splits:
                both = np.ones(len(big), bool)
                for part in parts:
                    both &= live[part]
                live[big] |= both
            for contracted, by in f.coupling.uses:
                if contracted in dg.offset and by in dg.offset and live[dg.ids(by)].any():
                    live[dg.ids(contracted)] = True
        return live

    def dead(self) -> np.ndarray:
        def value(ln: Link, a: np.ndarray, val: np.ndarray):
            if ln.kind == "feed":
                return None  # a broadcast term: what removes a channel is its own sources
            if ln.kind == "flow":
                return val[a]
            if ln.kind == "source":
                return self.user_masked[a].view(np.int8)
            # a masked follower (BN γ in network slimming, a layer scale) kills its factor;
            # an unmasked one neither keeps a channel alive nor kills it
            return np.where(self.user_masked[a], _TRUE, _NEUTRAL)

        return self.forward(value)

    def zero(self, param_zero: np.ndarray) -> np.ndarray:
        def value(ln: Link, a: np.ndarray, val: np.ndarray):
            if ln.kind in ("flow", "feed") and ln.a[0] == "v":
                return ((val[a] == _TRUE) & ln.zero_ok).view(np.int8)
            return param_zero[a].view(np.int8)

        return self.forward(value)


__all__ = ["ProductFact", "Propagation", "param_aliases"]
