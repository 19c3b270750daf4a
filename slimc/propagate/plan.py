"""Removal plan: which channel groups go, in named steps — removal candidates, growth by
liveness, closure under constraints (blocks, equal counts, rectangles, zero inputs),
empty layers, kept indices — then the final masks and the kept-and-why report."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from slimc.compact import FinalMasks, KeepSpec, is_part
from slimc.errors import PlanError
from slimc.graph import DependencyGraph
from slimc.masks import MaskSet
from slimc.propagate import experts as moe
from slimc.propagate.groups import any_by_group, count_by_group
from slimc.propagate.interpreter import Propagation
from slimc.shape_rules import Blocks, EqualCount, KeepMore, Multiple, NeedsZero, SlotKey


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
    dropped_experts: dict[str, np.ndarray] = field(default_factory=dict)  # experts module → experts removed
    whole_experts: dict[str, np.ndarray] = field(default_factory=dict)  # experts the masks remove whole
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
        """The slot's size in the slim model; a param dim cut in parts (each expert its own
        rows) has the size each part keeps."""
        k = self.kept.get(slot)
        if k is None and slot[0] == "p" and not is_part(slot[2]):
            part = next((self._kept_parts(slot[1], at, slots)[0] for (d, at), slots in self.dg.parts(slot[1]).items()
                         if d == slot[2]), None)
            if part is not None:
                return self.new_size(part)
        return self.dg.size[slot] if k is None else len(k)

    def cuts(self, fqn: str, ndim: int) -> dict:
        """How param ``fqn`` is cut: dim → kept indices (a tensor), and for a dim cut in parts
        ``(dim, at)`` → a (parts × kept) index tensor (:func:`slimc.compact.slice_masked`)."""
        out: dict = {d: k for d in range(ndim) if (k := self.kept_index(("p", fqn, d))) is not None}
        for (d, at), slots in self.dg.parts(fqn).items():
            if not any(s in self.kept for s in slots):
                continue
            rows = [self.kept_idx(s) if s in self.kept else np.arange(self.dg.size[s]) for s in slots]
            kept_parts = self._kept_parts(fqn, at, slots)
            n = len(rows[slots.index(kept_parts[0])])
            gone = set(slots) - set(kept_parts)  # parts cut away along ``at`` (dropped experts): any n rows
            rows = [np.arange(n) if s in gone else r for s, r in zip(slots, rows)]
            if len({len(r) for r in rows}) > 1 or len(rows) != self.dg.size.get(("p", fqn, at), len(rows)):
                raise PlanError(f"internal: the parts of '{fqn}' along dim {at} keep {[len(r) for r in rows]} "
                                f"of dim {d}: one tensor holds as many for each")
            out[(d, at)] = torch.from_numpy(np.stack(rows).astype(np.int64))
        return out

    def _kept_parts(self, fqn: str, at: int, slots: list) -> list:
        """The parts of ``fqn`` along ``at`` that the slim parameter keeps (all, unless that dim
        loses indices: dropped experts)."""
        k = self.kept_idx(("p", fqn, at))
        return slots if k is None else [slots[i] for i in k.tolist()]


def _constraints(dg: DependencyGraph):
    for f in dg.facts:
        for c in f.coupling.constraints:
            yield c


class _Decision:
    """Which groups go (``removed_g``, per group), and why a group the masks wanted gone was
    kept after all (``forced``: group → reason)."""

    def __init__(self, prop: Propagation, removed_g: np.ndarray):
        self.grp, self.ng = prop.group, prop.ng
        self.removed_g = removed_g
        self.wanted_g = removed_g.copy()
        self.forced: dict[int, str] = {}

    def keep(self, groups: np.ndarray, why: str) -> bool:
        """Keep ``groups`` (those still marked removed); False where none was."""
        groups = np.unique(groups)
        groups = groups[self.removed_g[groups]]
        if len(groups) == 0:
            return False
        self.removed_g[groups] = False
        for g in groups.tolist():
            self.forced.setdefault(g, why)
        return True

    def kept_elements(self) -> np.ndarray:
        return ~self.removed_g[self.grp]


def _removal_candidates(prop: Propagation, mode: str, is_value: np.ndarray, group_has_barrier: np.ndarray) -> np.ndarray:
    """Per group, before any constraint: no barrier, and either its channels are dead
    (``channel``: every source behind the channels the sinks read is masked, and behind those
    a contraction reads) or provably zero in the user-masked model (``exact``), or every sink
    slice is masked."""
    grp, ng = prop.group, prop.ng
    if mode == "channel":
        dead = prop.dead()
        read = prop.sink_consumed | prop.contracted
        n_read = count_by_group(prop.sink_consumed, grp, ng)
        n_read_dead = count_by_group(read & dead, grp, ng)
        n_read_all = count_by_group(read, grp, ng)
        n_sources = count_by_group(prop.is_source, grp, ng)
        n_sources_masked = count_by_group(prop.is_source & prop.user_masked, grp, ng)
        by_source = (n_sources > 0) & np.where(n_read > 0, n_read_dead == n_read_all, n_sources_masked == n_sources)
    else:
        zero_user = prop.zero(prop.user_masked)
        n_values = count_by_group(is_value, grp, ng)
        n_values_zero = count_by_group(is_value & zero_user, grp, ng)
        by_source = (n_values > 0) & (n_values_zero == n_values)
    n_sinks = count_by_group(prop.is_sink, grp, ng)
    n_sinks_masked = count_by_group(prop.is_sink & prop.user_masked, grp, ng)
    by_sink = (n_sinks > 0) & (n_sinks_masked == n_sinks)
    by_sink &= ~_read_through_axes(prop, n_sinks > 0, by_sink)
    return ~group_has_barrier & (by_source | by_sink)


def _read_through_axes(prop: Propagation, sunk: np.ndarray, unread: np.ndarray) -> np.ndarray:
    """Per group: is it read by sinks of the axes it is split into (none of them unread)? A
    grouped conv's input channel (group g, position p) is read by the weight columns of
    position p, which sink the position axis, not the channel: masked sinks of its own
    elsewhere (an SE gate's columns) do not make it unread."""
    read = np.zeros(prop.ng, bool)
    for _, big, parts in prop.splits:
        if not any(sunk[prop.group[part]].any() for part in parts):
            continue
        reads = np.ones(len(big), bool)
        for part in parts:
            reads &= ~unread[prop.group[part]]
        read[prop.group[big[reads]]] = True
    return read


def _grow_by_liveness(prop: Propagation, removed_g: np.ndarray, is_value: np.ndarray,
                      group_has_barrier: np.ndarray, has_param: np.ndarray) -> np.ndarray:
    """Channels nothing kept reads go too: a head whose output columns are masked, or whose
    output went because its q (or k) did; in rounds, as a removed group's sinks read
    nothing any more."""
    grp, ng = prop.group, prop.ng
    for _ in range(5):
        live = prop.live(prop.user_masked | (prop.is_sink & removed_g[grp]))
        grown = removed_g | (~group_has_barrier & has_param & (count_by_group(is_value & live, grp, ng) == 0))
        if (grown == removed_g).all():
            break
        removed_g = grown
    return removed_g


class _Rectangles:
    """Reshape products: an element (i, j, …) of a merged/split dim lives iff every axis
    index lives. Elements that carry sources (a shuffled channel) are *primary*: their axes
    follow them and the kept set stays a rectangle. Elements without sources (features of a
    flatten of two channel dims) are *derived*: they go with any of their axes."""

    def __init__(self, prop: Propagation, decision: _Decision, group_has_barrier: np.ndarray, mode: str = "channel"):
        grp = prop.group
        self.decision, self.ng, self.group_has_barrier = decision, prop.ng, group_has_barrier
        has_src = any_by_group(prop.is_source, grp, prop.ng)
        self.products = []  # (fact, big groups, derived per big element, axis groups, primary per axis)
        for pf in prop.products:
            big_g = grp[pf.big]
            axes = [grp[c] for c in pf.coords]
            derived = ~has_src[big_g] & ~group_has_barrier[big_g]
            if mode == "exact":  # one that is neither zero nor unused holds its axes (an attention head's
                derived &= decision.removed_g[big_g]  # output whose q rows are all masked: uniform, not zero)
            self.products.append((pf, big_g, derived, axes, [has_src[a] | group_has_barrier[a] for a in axes]))

    def projections(self, kept_el: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per group: does a kept primary element of *any* product sit on it (``proj``), and
        does any product have a primary element on it at all (``leadable``)? One axis is one
        dim of one tensor: a head kept by q keeps that head in v's reshape too."""
        proj = np.zeros(self.ng, bool)
        leadable = np.zeros(self.ng, bool)
        for pf, _, derived, axes, _ in self.products:
            lead = kept_el[pf.big] & ~derived
            for a in axes:
                proj[a[lead]] = True
                leadable[a[~derived]] = True
        return proj, leadable

    def axis_kept(self, axes, primary_axes, proj, leadable) -> np.ndarray:
        """Per big element: is every axis index it sits on kept?"""
        removed_g = self.decision.removed_g
        rect = np.ones(len(axes[0]), bool)
        for a, prim in zip(axes, primary_axes):
            # an axis no primary element leads (only derived products use it) stays
            rect &= np.where(prim, ~removed_g[a], proj[a] | ~leadable[a]) | self.group_has_barrier[a]
        return rect

    def close(self) -> bool:
        """One round: a kept primary element keeps its axes; a big element whose axes are all
        kept is kept. True where anything changed."""
        keep, changed = self.decision.keep, False
        kept_el = self.decision.kept_elements()
        for pf, _, derived, axes, primary_axes in self.products:
            lead = kept_el[pf.big] & ~derived
            for a, prim in zip(axes, primary_axes):
                changed |= keep(a[lead & prim], f"{pf.why}: kept set must stay a rectangle")
        kept_el = self.decision.kept_elements()
        proj, leadable = self.projections(kept_el)
        for pf, big_g, derived, axes, primary_axes in self.products:
            grow = self.axis_kept(axes, primary_axes, proj, leadable) & ~kept_el[pf.big] & ~derived
            if grow.any():
                changed |= keep(big_g[grow], f"{pf.why}: kept set must stay a rectangle")
        return changed

    def settle_derived(self) -> None:
        """Derived elements and source-less axes follow the rectangle."""
        removed_g = self.decision.removed_g
        proj, leadable = self.projections(self.decision.kept_elements())
        for pf, big_g, derived, axes, primary_axes in self.products:
            rect = self.axis_kept(axes, primary_axes, proj, leadable)
            removed_g[big_g[derived]] = ~rect[derived]
        for pf, big_g, derived, axes, primary_axes in self.products:
            for a, prim in zip(axes, primary_axes):
                sel = a[~prim & leadable[a]]
                removed_g[sel] = ~proj[sel]


def _equal_counts(dg: DependencyGraph, decision: _Decision, c: EqualCount) -> bool:
    """Slots that lose more elements than the least of them keep their last extra ones."""
    grp, removed_g = decision.grp, decision.removed_g
    ids = [dg.ids(s) for s in c.slots if s in dg.offset]
    gone = [np.nonzero(removed_g[grp[i]])[0] for i in ids]
    least = min((len(g) for g in gone), default=0)
    extra = [i[g[least:]] for i, g in zip(ids, gone) if len(g) > least]
    return decision.keep(grp[np.concatenate(extra)], c.why) if extra else False


def _multiple(dg: DependencyGraph, decision: _Decision, c: Multiple) -> bool:
    """A slot whose kept count is no multiple of ``c.n`` keeps its last removed ones until it is
    (a slot whose full size is no multiple of it is left as it is)."""
    grp, removed_g = decision.grp, decision.removed_g
    extra = []
    for s in c.slots:
        if s not in dg.offset or dg.size[s] % c.n:
            continue
        ids = dg.ids(s)
        gone = np.nonzero(removed_g[grp[ids]])[0]
        short = -(len(ids) - len(gone)) % c.n
        if short:
            extra.append(ids[gone[len(gone) - short:]])
    return decision.keep(grp[np.concatenate(extra)], c.why) if extra else False


def _keep_more(dg: DependencyGraph, decision: _Decision, c: KeepMore) -> bool:
    """A slot of ``big`` that keeps no more than the most kept of ``small`` keeps more."""
    grp, removed_g = decision.grp, decision.removed_g
    kept_n = lambda s: int((~removed_g[grp[dg.ids(s)]]).sum())  # noqa: E731
    most = max((kept_n(s) for s in c.small if s in dg.offset), default=0)
    extra = []
    for s in c.big:
        ids = dg.ids(s)
        gone = np.nonzero(removed_g[grp[ids]])[0]
        extra.append(ids[gone[: max(0, most + 1 - kept_n(s))]])
    extra = np.concatenate(extra) if extra else np.zeros(0, np.int64)
    return decision.keep(grp[extra], c.why) if len(extra) else False


def _close_under_constraints(dg: DependencyGraph, prop: Propagation, decision: _Decision, rectangles: _Rectangles,
                             mode: str, param_el: np.ndarray, skip: set) -> None:
    """Keep groups until every constraint holds: GroupNorm blocks whole, equal counts,
    keep-more, multiples, rectangles of reshapes, a channel removed at a LayerNorm's input is
    zero there. ``skip``: slots no constraint counts (the channels of dropped experts)."""
    grp, keep = decision.grp, decision.keep
    cons = [moe.without(c, skip) for c in _constraints(dg)]
    needs = [c for c in cons if isinstance(c, NeedsZero) and c.slot in dg.offset]
    for _ in range(100):
        changed = False
        kept_el = decision.kept_elements()
        for c in cons:
            if isinstance(c, Blocks) and c.slot in dg.offset:
                ids = dg.ids(c.slot).reshape(-1, c.block)
                partial = kept_el[ids].any(axis=1) & ~kept_el[ids].all(axis=1)
                if partial.any():
                    changed |= keep(grp[ids[partial].reshape(-1)], c.why)
        for c in cons:
            if isinstance(c, EqualCount):
                changed |= _equal_counts(dg, decision, c)
            elif isinstance(c, KeepMore):
                changed |= _keep_more(dg, decision, c)
            elif isinstance(c, Multiple):
                changed |= _multiple(dg, decision, c)
        changed |= rectangles.close()
        if needs:
            # channel mode compares against the final masks, exact mode against the user's
            removed_g = decision.removed_g
            param_zero = prop.user_masked | (removed_g[grp] & param_el) if mode == "channel" else prop.user_masked
            z = prop.zero(param_zero)
            for c in needs:
                ids = dg.ids(c.slot)
                bad = removed_g[grp[ids]] & ~z[ids]
                if bad.any():
                    changed |= keep(grp[ids[bad]], f"{c.why}: the removed channel is not zero at its input")
        if not changed:
            break


def _keep_one_in_empty_layers(dg: DependencyGraph, decision: _Decision, allow_empty: bool,
                              skip: set) -> np.ndarray:
    """A value dim that would lose every channel (but those of ``skip``, dropped experts'):
    refused, or (``allow_empty``) one zero channel kept. Returns the removed flag per element."""
    grp = decision.grp
    slots, _, sizes = dg.slot_table()
    removed = decision.removed_g[grp]
    n_removed = dg.per_slot_count(removed)
    for i in np.nonzero((n_removed == sizes) & (sizes > 1))[0].tolist():
        s = slots[i]
        ids = dg.ids(s)
        if s[0] == "v" and s not in skip and removed[ids].all():  # (one kept channel may have filled an earlier one)
            name = _slot_name(dg, s)
            if not allow_empty:
                raise PlanError(
                    f"the masks remove every channel of {name} ({len(ids)} channels): keep at least one, "
                    "or pass --allow-empty to keep one zero channel"
                )
            decision.removed_g[grp[ids[0]]] = False
            removed = decision.removed_g[grp]
            decision.forced.setdefault(int(grp[ids[0]]), f"{name} would be empty: one zero channel kept")
    return removed


def _kept_indices(dg: DependencyGraph, removed: np.ndarray) -> dict[SlotKey, np.ndarray]:
    """Per slot that loses elements: the indices it keeps."""
    slots, _, _ = dg.slot_table()
    return {slots[i]: np.nonzero(~removed[dg.ids(slots[i])])[0]
            for i in np.nonzero(dg.per_slot_count(removed))[0].tolist()}


def plan(dg: DependencyGraph, masks: MaskSet, mode: str = "channel", allow_empty: bool = False,
         experts: str = "remove") -> RemovalPlan:
    """The removal plan of ``masks`` on ``dg``: which channel groups go (``mode`` channel or
    exact), the kept indices of every slot, the final masks and why masked groups stay.
    ``experts``: ``remove`` (default) — experts of MoE layers that the masks remove whole
    (every weight and the router row) go, the router never picking them; ``keep`` — they
    stay, zero (:mod:`.experts`)."""
    if mode not in ("channel", "exact"):
        raise PlanError(f"unknown mode '{mode}': use channel or exact")
    if experts not in moe.EXPERT_MODES:
        raise PlanError(f"unknown experts mode '{experts}': use {' or '.join(moe.EXPERT_MODES)}")
    prop = Propagation(dg, masks)
    grp, ng = prop.group, prop.ng
    routes = moe.expert_routes(dg)
    whole = moe.whole_experts(dg, prop.user_masked, routes)
    if experts == "remove" and whole:
        moe.check_top_k(dg, routes, whole)
        prop.barrier = moe.lifted_barriers(dg, prop.barrier, routes, whole)  # this plan's (the graph's stays)
    group_has_barrier = any_by_group(prop.barrier, grp, ng)
    slots, _, sizes = dg.slot_table()
    # values: node outputs, and the parameters, buffers and constants an op reads as data (a
    # table fed to an MLP): what liveness and the exact mode look at, never left out of a group
    is_value = np.repeat(np.array([s[0] == "v" for s in slots], bool), sizes) | prop.read_as_value
    param_el = prop.is_source | prop.is_sink | prop.is_follower
    has_param = any_by_group(param_el, grp, ng)

    removed_g = _removal_candidates(prop, mode, is_value, group_has_barrier)
    removed_g = _grow_by_liveness(prop, removed_g, is_value, group_has_barrier, has_param)
    dropped = moe.dropped_experts(dg, grp, removed_g, routes, whole) if experts == "remove" else {}
    skip = moe.own_slots(routes, dropped)
    decision = _Decision(prop, removed_g)
    rectangles = _Rectangles(prop, decision, group_has_barrier, mode)
    _close_under_constraints(dg, prop, decision, rectangles, mode, param_el, skip)
    rectangles.settle_derived()
    removed = _keep_one_in_empty_layers(dg, decision, allow_empty, skip)
    moe.check_dropped(dg, routes, dropped, removed)

    result = RemovalPlan(dg, mode, removed, grp, _kept_indices(dg, removed), _final_masks(dg, prop, removed, masks),
                         n_groups_removed=int(decision.removed_g.sum()), param_group=has_param,
                         dropped_experts=dropped, whole_experts=whole,
                         notes=moe.unrouted_notes(masks, routes))
    result.kept_reasons = _kept_reasons(dg, prop, grp, decision.removed_g, decision.wanted_g, group_has_barrier,
                                        decision.forced, mode)
    return result


def _final_masks(dg: DependencyGraph, prop: Propagation, removed: np.ndarray, masks: MaskSet) -> FinalMasks:
    """The user's masks, times one compact keep vector per dim that loses slices (never a
    full-size tensor: see :class:`slimc.compact.FinalMasks`)."""
    kept = dg._ids.get("final_masks")  # the masks-independent part, once per graph
    if kept is None:
        kept = dg._ids["final_masks"] = ({k: tuple(p.shape) for k, p in dg.gm.named_parameters(remove_duplicate=False)},
                                         sorted(prop.linked_params, key=lambda s: (s[1], is_part(s[2]), s[2])))
    params, linked = kept
    keep: dict[str, list[KeepSpec]] = {}
    for slot in linked:
        fqn, d = slot[1], slot[2]
        if fqn not in params or is_part(d):
            continue
        r = removed[dg.ids(slot)]
        if r.any():  # made into a tensor when asked for (FinalMasks)
            keep.setdefault(fqn, []).append((params[fqn], d, ~r))
    for fqn in {s[1] for s in linked if is_part(s[2]) and s[1] in params}:  # one keep array per (dim, at)
        for (d, at), slots in dg.parts(fqn).items():
            joint = np.ones((params[fqn][at], params[fqn][d]), bool)
            for s in slots:
                joint[s[2][2]] = ~removed[dg.ids(s)]
            if not joint.all():
                keep.setdefault(fqn, []).append((params[fqn], (d, at), joint))
    for names in prop.aliases:  # tied weights share one final mask (normalize joined their user masks)
        joint = [f for n in names for f in keep.get(n, ())]
        if joint:
            for n in names:
                keep[n] = joint
    return FinalMasks(masks.masks, keep)


def _slot_name(dg: DependencyGraph, s: SlotKey) -> str:
    kind, name, d = s
    if kind == "p":
        return f"param '{name}' dim {d[0]} of part {d[2]} along dim {d[1]}" if is_part(d) else f"param '{name}' dim {d}"
    node = next((n for n in dg.gm.graph.nodes if n.name == name.split("#")[0]), None)
    where = f" ({node.op} {node.target})" if node is not None and node.op == "call_module" else ""
    return f"'{name}'{where} dim {d}"


def _kept_reasons(dg, prop, grp, removed_g, wanted_g, group_has_barrier, forced, mode: str = "channel") -> list[dict]:
    """Groups the user masked in part (or wholly) that are kept, aggregated by reason."""
    partly = any_by_group((prop.is_source | prop.is_sink) & prop.user_masked, grp, len(removed_g))
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

    first_bar = first_where(prop.barrier)
    first_unmasked_src = first_where(prop.is_source & ~prop.user_masked)
    agg: dict[str, dict] = {}
    for g in interesting.tolist():
        if group_has_barrier[g]:
            s, _ = slot_of(first_bar[g])
            why = f"barrier: {prop.barrier_why.get(s, 'fixed dim')}"
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


__all__ = ["RemovalPlan", "plan"]
