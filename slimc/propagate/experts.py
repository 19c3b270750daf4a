"""Whole experts of mixture-of-experts layers: the approximate mode ``experts="drop"``.

The experts rule (:mod:`slimc.shape_rules.experts`) joins expert e — the router's row e and
index e of every stacked expert parameter — into one group per expert, held by the
barriers the router's softmax and top-k put on the expert dim: a masked router row gives a
logit of 0, not −∞, so the masked model still routes tokens to that expert, and removing it
is not exact. ``experts="drop"`` lifts those barriers (and only those: another op that
holds the expert dim, a router output, still holds it), so an expert whose router row is
masked, or whose every stacked slice is, goes with its router row; the router then picks
its top-k among the experts left. The result equals the masked model whose router gives
the dropped experts a logit of −∞ (:mod:`slimc.rerouted`), not the masked model itself.
"""
from __future__ import annotations

import numpy as np

from slimc.errors import PlanError
from slimc.graph import DependencyGraph
from slimc.shape_rules import EqualCount, ExpertRoute, Multiple, SlotKey

EXPERT_MODES = ("keep", "drop")


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


def lifted_barriers(dg: DependencyGraph, barrier: np.ndarray, routes: list[ExpertRoute]) -> np.ndarray:
    """``barrier`` without the routes' softmax and top-k barriers on the expert dim, where no
    other node holds that slot."""
    held = _holders(dg)
    out = barrier.copy()
    for r in routes:
        by_slot: dict[SlotKey, set[str]] = {}
        for node, slot in r.lift:
            by_slot.setdefault(slot, set()).add(node)
        for slot, nodes in by_slot.items():
            if slot in dg.offset and held.get(slot, set()) <= nodes:
                out[dg.ids(slot)] = False
    return out


def dropped_experts(dg: DependencyGraph, group: np.ndarray, removed_g: np.ndarray,
                    routes: list[ExpertRoute]) -> dict[str, np.ndarray]:
    """Experts module → the experts whose groups go (their index in the stacked parameters)."""
    out = {}
    for r in routes:
        if r.logits is not None:
            gone = np.nonzero(removed_g[group[dg.ids(("p", r.stacked[0], 0))]])[0]
            if len(gone):
                out[r.experts] = gone
    return out


def check_top_k(dg: DependencyGraph, routes: list[ExpertRoute], dropped: dict[str, np.ndarray]) -> None:
    """Each router still finds its top-k among the experts left."""
    for r in routes:
        gone = dropped.get(r.experts)
        n = dg.size[("p", r.stacked[0], 0)] if r.stacked else 0
        if gone is not None and n - len(gone) < r.top_k:
            raise PlanError(f"the masks drop {len(gone)} of the {n} experts of '{r.experts}', whose router picks "
                            f"{r.top_k} per token (num_experts_per_tok): keep at least {r.top_k}, mask fewer experts")


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


def whole_experts(dg: DependencyGraph, user_masked: np.ndarray, routes: list[ExpertRoute]) -> dict[str, list[int]]:
    """Experts module → the experts the masks remove whole (the router's weight row masked, or
    every stacked slice): what ``experts="drop"`` removes, and the default mode keeps."""
    out = {}
    for r in routes:
        if r.logits is None:
            continue
        slices = np.logical_and.reduce([user_masked[dg.ids(("p", s, 0))] for s in r.stacked])
        whole = slices | user_masked[dg.ids(("p", r.router[0], 0))]
        if whole.any():
            out[r.experts] = np.nonzero(whole)[0].tolist()
    return out


def expert_notes(dg: DependencyGraph, plan, experts: str) -> list[str]:
    """What the report says of whole experts: in the default mode, those the masks remove whole
    (kept: ``--approximate-experts`` would drop them); with ``experts="drop"``, the layers whose
    experts cannot go, and why."""
    routes = expert_routes(dg)
    if experts == "keep" and plan.whole_experts:
        whole = plan.whole_experts
        n = sum(len(v) for v in whole.values())
        listed = ", ".join(f"{k}: {v}" for k, v in list(whole.items())[:3]) + (" …" if len(whole) > 3 else "")
        return [f"{n} expert(s) masked whole stay, zero ({listed}): the router still routes tokens to them; "
                "--approximate-experts (experts='drop') removes them with their router rows (approximate: the "
                "router then picks among the others)"]
    if experts == "drop":
        why = {r.why_not: r.experts for r in routes if r.why_not}
        return [f"experts of '{path}' cannot be dropped: {reason}" for reason, path in why.items()]
    return []


__all__ = ["EXPERT_MODES", "check_top_k", "dropped_experts", "expert_notes", "expert_routes", "lifted_barriers",
           "own_slots", "whole_experts", "without"]
