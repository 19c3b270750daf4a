"""Reshape resolution: a view that merges or splits channel dims (flatten into a linear,
C ↔ (H, D) heads, a channel shuffle). Reshapes with at most one free part join the free
part's channels; what still has several free parts is matched by coordinates (the kept
set then stays a rectangle, see :mod:`slimc.propagate.plan`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimc.propagate.groups import any_by_group, row_ids
from slimc.shape_rules import Copies, Link


@dataclass
class ProductFact:
    big: np.ndarray  # element ids of the big dim
    coords: list[np.ndarray]  # per free part: element id of that part for each big element
    why: str


def resolve_reshapes(prop) -> None:
    """``prop``: a :class:`~slimc.propagate.interpreter.Propagation` being built. Reshapes
    with at most one free part are resolved first, in rounds: a union can fix
    a part of another reshape (a batch dim reached through a chain of views). What still
    has several free parts is then matched by coordinates."""
    dg = prop.dg
    todo = [(f, r) for f in dg.facts for r in f.coupling.reshapes]
    copies = {c.slot: c.why for f in dg.facts for c in f.coupling.constraints if isinstance(c, Copies)}
    multi: list[tuple] = []
    while todo:
        grp = prop.element_groups.labels()
        fixing = _fixing(prop, grp)
        multi, progress = [], False
        for f, r in todo:
            free = _free_parts(dg, grp, fixing, r)
            if len(free) > 1 and any(r.parts[k] in copies for k in free):
                for k in [k for k in free if r.parts[k] in copies]:  # (see shape_rules.Copies)
                    prop.barrier[dg.ids(r.parts[k])] = True
                    prop.barrier_why.setdefault(r.parts[k], copies[r.parts[k]])
                free = [k for k in free if r.parts[k] not in copies]
            if len(free) > 1:
                multi.append((f, r))
                continue
            progress = True
            big = dg.ids(r.big)
            if not free:
                prop.barrier[big] = True
                prop.barrier_why.setdefault(r.big, f"reshape at '{r.node}' of fixed dims")
                continue
            part = part_flows(prop, f, r, free)[0]
            prop.element_groups.add(big, part)
        if not progress:
            break
        todo = multi
    grp = prop.element_groups.labels()
    if not multi:
        prop.group = grp
        return
    fixing = _fixing(prop, grp)
    pending: list[tuple] = []
    for f, r in multi:
        free = _free_parts(dg, grp, fixing, r)
        pending.append((f, dg.ids(r.big), part_flows(prop, f, r, free), f"reshape at '{r.node}'", r.big_is_input))
    width = max(len(p[2]) for p in pending)
    keys = []
    for f, big, parts, why, _ in pending:
        key = np.full((len(big), width), -1, dtype=np.int64)
        key[:, : len(parts)] = np.sort(np.stack([grp[p] for p in parts], axis=1), axis=1)
        keys.append(key)
        prop.products.append(ProductFact(big, parts, why))
    inv = row_ids(np.concatenate(keys))
    allel = np.concatenate([p[1] for p in pending])
    first = np.full(inv.max() + 1, -1, dtype=np.int64)
    first[inv[::-1]] = allel[::-1]
    prop.element_groups.add(allel, first[inv])
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
            reshape_flow(prop, f, src[key][ok], big[ok], np.zeros(int(ok.sum()), np.int64))
    prop.group = prop.element_groups.labels()

def _fixing(prop, grp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: a barrier that fixes its dims; any barrier (a position held, Coupling.hold)."""
    ng = int(grp.max()) + 1 if prop.dg.n else 0
    return any_by_group(prop.barrier & ~prop.held, grp, ng), any_by_group(prop.barrier, grp, ng)


def _free_parts(dg, grp: np.ndarray, fixing: tuple[np.ndarray, np.ndarray], r) -> list[int]:
    """The parts of reshape ``r`` that may lose elements: more than one, no fixing barrier, and
    not every position held (k and v read by int indices leave the query positions free)."""
    fixed, barrier = fixing
    free = []
    for k, s in enumerate(r.parts):
        g = grp[dg.ids(s)]
        if r.sizes[k] > 1 and not fixed[g].any() and not barrier[g].all():
            free.append(k)
    return free


def part_flows(prop, f, r, free: list[int]) -> list[np.ndarray]:
    """Element ids of each free part for every big element; dead/zero flows between them."""
    big = prop.dg.ids(r.big)
    sizes = np.array(r.sizes)
    strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int64)
    e = np.arange(len(big))
    parts = []
    if r.big_is_input and free:
        prop.splits.append((f, big, [prop.dg.ids(r.parts[k])[(e // strides[k]) % sizes[k]] for k in free]))
    for k in free:
        part = prop.dg.ids(r.parts[k])[(e // strides[k]) % sizes[k]]
        if r.big_is_input:  # an axis element is dead/zero when its whole fiber is
            fiber = (e // (strides[k] * sizes[k])) * strides[k] + e % strides[k]
            reshape_flow(prop, f, big, part, fiber, split=True)
        else:  # a merged element is dead/zero when any of its axis elements is
            reshape_flow(prop, f, part, big, np.zeros(len(big), np.int64))
        parts.append(part)
    return parts

def reshape_flow(prop, fact, a: np.ndarray, b: np.ndarray, terms: np.ndarray, split: bool = False) -> None:
    """A synthetic flow link for the dead/zero analyses through a reshape, one term per
    element (``split``: big element → its axis elements, one term per fiber; liveness
    handles those itself)."""
    tag = ("reshape", "split") if split else ("reshape",)
    term = int(terms[0]) if len(terms) and (terms == terms[0]).all() else terms
    prop.links.append((fact, Link("flow", ("reshape",), tag, term=term), a, b))


__all__ = ["ProductFact", "part_flows", "reshape_flow", "resolve_reshapes"]
