"""Whole experts of mixture-of-experts layers: the masks say an expert does not exist.

The experts rule (:mod:`slimc.shape_rules.experts`) joins expert e — the router's row e and
index e of every stacked expert parameter — into one group per expert, held by the barriers
the router's softmax and top-k put on the expert dim.

**What such a mask means.** Masks that zero *all* of an expert's weights (index e of every
stacked parameter: ``gate_up_proj[e]``, ``down_proj[e]``, their biases) *and* its router row
(row e of the router's weight, and its bias entry where the router has one) say that the
expert does not exist: the masked model is the original whose router gives that expert a
logit of −∞ — softmax gives it 0, top-k never picks it (while at least ``top_k`` experts are
left) — which is, by definition, the model without it. A zero router row alone (logit 0)
would still take a share of the routing; that is why the whole expert, router row included,
is what the masks must name. Masks that zero only part of it (the FFN but not the router
row, or the router row but not the FFN) mean what they say, zeros: the expert stays.

So (``experts="remove"``, the default) the plan lifts the softmax and top-k barriers at the
index of each expert masked whole, where no other op holds the expert dim (a router output
returned by the model still holds it), and that expert's group goes: router rows, stacked
slices, ``num_experts`` (the surgery, :mod:`slimc.surgery.experts`). The check runs the
masked original with those logits at −∞ (:mod:`slimc.rerouted`), so the slim model equals
the model the masks describe, exactly. ``experts="keep"``: no expert goes (the masks read as
plain zeros, logit 0).
"""
from __future__ import annotations

import numpy as np

from slimc.errors import PlanError
from slimc.graph import DependencyGraph
from slimc.shape_rules import EqualCount, ExpertRoute, Multiple, SlotKey

EXPERT_MODES = ("remove", "keep")


def expert_routes(dg: DependencyGraph) -> list[ExpertRoute]:
    """Every MoE layer's expert route (:class:`ExpertRoute`), found or not, in graph order."""
    return [c for f in dg.facts for c in f.coupling.constraints if isinstance(c, ExpertRoute)]


def _holders(dg: DependencyGraph) -> dict[SlotKey, set[str]]:
    """Slot → the nodes whose facts put a barrier on it (once per graph)."""
    held = dg._ids.get("barrier_holders")
    if held is None:
        held = dg._ids["barrier_holders"] = {}
        for f in dg.facts:
            for s, _ in f.coupling.barriers:
                held.setdefault(s, set()).add(f.node.name)
    return held


def whole_experts(dg: DependencyGraph, user_masked: np.ndarray, routes: list[ExpertRoute]) -> dict[str, np.ndarray]:
    """Experts module → the experts the masks remove whole: every stacked slice *and* the
    router's row (weight row, bias entry) masked."""
    out = {}
    for r in routes:
        if r.logits is None:
            continue
        whole = np.logical_and.reduce([user_masked[dg.ids(("p", s, 0))] for s in (*r.stacked, *r.router)])
        if whole.any():
            out[r.experts] = np.nonzero(whole)[0]
    return out


def unrouted_notes(masks, routes: list[ExpertRoute]) -> list[str]:
    """Experts whose every stacked slice the masks (a MaskSet) zero, in a layer whose router
    the rule could not follow: they stay, zero (and why)."""
    notes = []
    for r in routes:
        if r.logits is None and r.stacked and all(s in masks for s in r.stacked):
            whole = np.logical_and.reduce([masks.zero_slices(s, 0).numpy() for s in r.stacked])
            if whole.any():
                notes.append(f"experts {np.nonzero(whole)[0].tolist()} of '{r.experts}' are masked whole but stay, "
                             f"zero: {r.why_not}")
    return notes


def lifted_barriers(dg: DependencyGraph, barrier: np.ndarray, routes: list[ExpertRoute],
                    whole: dict[str, np.ndarray]) -> np.ndarray:
    """``barrier`` without the routes' softmax and top-k barriers at the experts masked whole,
    where no other node holds that slot."""
    held = _holders(dg)
    out = barrier
    for r in routes:
        gone = whole.get(r.experts)
        if gone is None:
            continue
        by_slot: dict[SlotKey, set[str]] = {}
        for node, slot in r.lift:
            by_slot.setdefault(slot, set()).add(node)
        for slot, nodes in by_slot.items():
            if slot in dg.offset and held.get(slot, set()) <= nodes:
                out = out.copy() if out is barrier else out
                out[dg.ids(slot)[gone]] = False
    return out


def dropped_experts(dg: DependencyGraph, group: np.ndarray, removed_g: np.ndarray,
                    routes: list[ExpertRoute], whole: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Experts module → the experts masked whole whose groups go (their index in the stacked
    parameters); an expert whose group something else holds stays."""
    out = {}
    for r in routes:
        cand = whole.get(r.experts)
        if cand is None:
            continue
        gone = cand[removed_g[group[dg.ids(("p", r.stacked[0], 0))[cand]]]]
        if len(gone):
            out[r.experts] = gone
    return out


def check_dropped(dg: DependencyGraph, routes: list[ExpertRoute], dropped: dict[str, np.ndarray],
                  removed: np.ndarray) -> None:
    """The experts the plan set out to drop are those its final decision removes (no
    constraint kept one back): the check's reference routes around exactly these."""
    for r in routes:
        if r.logits is None:
            continue
        gone = np.nonzero(removed[dg.ids(("p", r.stacked[0], 0))])[0]
        if not np.array_equal(gone, dropped.get(r.experts, gone[:0])):
            raise PlanError(f"internal: the plan removes experts {gone.tolist()} of '{r.experts}', it set out to "
                            f"remove {dropped.get(r.experts, gone[:0]).tolist()}")


def check_top_k(dg: DependencyGraph, routes: list[ExpertRoute], whole: dict[str, np.ndarray]) -> None:
    """Each router still finds its top-k among the experts the masks leave."""
    for r in routes:
        gone = whole.get(r.experts)
        n = dg.size[("p", r.stacked[0], 0)] if r.stacked else 0
        if gone is not None and n - len(gone) < r.top_k:
            raise PlanError(f"the masks remove {len(gone)} of the {n} experts of '{r.experts}' whole, but its router "
                            f"picks {r.top_k} per token (num_experts_per_tok): leave at least {r.top_k}")


def own_slots(routes: list[ExpertRoute], dropped: dict[str, np.ndarray]) -> set[SlotKey]:
    """The FFN-channel slots of the dropped experts: no constraint counts them (an expert that
    goes keeps no channels, and the others need not keep as many as it)."""
    out: set[SlotKey] = set()
    for r in routes:
        for e in dropped.get(r.experts, ()):
            out.update(r.own[int(e)])
    return out


def without(constraint, skip: set[SlotKey]):
    """``constraint`` over its slots not in ``skip`` (equal counts, multiples); others as they are."""
    if skip and isinstance(constraint, (EqualCount, Multiple)):
        slots = [s for s in constraint.slots if s not in skip]
        if len(slots) != len(constraint.slots):
            return EqualCount(slots, constraint.why) if isinstance(constraint, EqualCount) else \
                Multiple(slots, constraint.n, constraint.why)
    return constraint


def expert_notes(dg: DependencyGraph, plan, experts: str) -> list[str]:
    """What the report says of whole experts: those removed (per layer), and those masked
    whole that stay (``experts="keep"``, or something else holds them)."""
    routes = expert_routes(dg)
    whole, dropped = plan.whole_experts, plan.dropped_experts
    notes = []
    if dropped:
        total = {r.experts: dg.size[("p", r.stacked[0], 0)] for r in routes if r.stacked}
        per = ", ".join(f"{k}: {len(v)} of {total[k]}" for k, v in list(dropped.items())[:4])
        notes.append(f"{sum(len(v) for v in dropped.values())} expert(s) masked whole (all their weights and their "
                     f"router rows) removed ({per}{' …' if len(dropped) > 4 else ''}): the masks say they do not "
                     "exist, and the check routes around them (router logit −inf)")
    stay = {k: sorted(set(v.tolist()) - set(dropped.get(k, np.zeros(0, int)).tolist())) for k, v in whole.items()}
    stay = {k: v for k, v in stay.items() if v}
    if stay:
        listed = ", ".join(f"{k}: {v}" for k, v in list(stay.items())[:3]) + (" …" if len(stay) > 3 else "")
        why = "experts='keep' (--keep-experts)" if experts == "keep" else "another op holds the expert dim"
        notes.append(f"{sum(len(v) for v in stay.values())} expert(s) masked whole stay, zero, routed to with logit 0 "
                     f"({listed}): {why}")
    return notes


__all__ = ["EXPERT_MODES", "check_dropped", "check_top_k", "dropped_experts", "expert_notes", "expert_routes", "lifted_barriers",
           "own_slots", "unrouted_notes", "whole_experts", "without"]
