"""Dependency-aware pruning criteria: produce masks that remove whole channel groups.

A *family* is the set of channel groups created by the same source slots (a conv's
filters; a residual stream's channels across every block that writes it). Within each
family, channels are ranked by the summed norm of all their source slices, and the
lowest ``ratio`` are masked in every source — so a residual channel goes in every block
at once, and the slim model really shrinks.

Channels that a reshape splits into attention heads × head dim only go as rectangles,
so there the ranked *unit* is one index of an axis: a whole head (``attention="heads"``,
the default) or the same channel of every head (``"dims"``). A channel shuffle is
ranked per channel: successive shuffles entangle their axes, and the compiler keeps
what a rectangle needs (the report says so).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimc import graph as graph_mod
from slimc.inputs import bind
from slimc.masks import MaskSet
from slimc.propagate import Propagation, _any_by_group
from slimc.shape_rules import HeadAxis
from slimc.trace import shapes_of, trace

CRITERIA = ("l1", "l2", "fpgm", "slim", "random")


def _slice_scores(w: torch.Tensor, d: int, criterion: str, rng) -> torch.Tensor:
    """One score per slice of ``w`` along ``d`` (low = pruned first): L1/L2 norm; FPGM, the
    summed distance to the other slices (near the geometric median = redundant); random."""
    other = [i for i in range(w.dim()) if i != d]
    if criterion == "random":
        return torch.from_numpy(rng.random(w.shape[d]))
    if criterion == "fpgm":
        flat = w.movedim(d, 0).reshape(w.shape[d], -1).double()
        return torch.cdist(flat, flat).sum(dim=1)
    if criterion == "l2":
        return w.pow(2).sum(dim=other) if other else w.pow(2)
    return w.abs().sum(dim=other) if other else w.abs()  # l1, and slim where no BatchNorm follows


def _is_bn(gm: nn.Module, owner: str) -> bool:
    try:
        return isinstance(gm.get_submodule(owner), nn.modules.batchnorm._BatchNorm)
    except AttributeError:
        return False
ATTENTION = ("heads", "dims")


def _units(P: Propagation, has_src: np.ndarray, attention: str) -> tuple[dict[int, set], dict[int, tuple]]:
    """Reshape products → {unit group: member groups}, {unit group: family key}.

    A unit is one index of the product axis that is ranked (heads, or the innermost axis);
    its members are the groups of every product element on that index."""
    dg, grp = P.dg, P.group
    heads = np.zeros(P.ng, bool)
    for f in dg.facts:
        for c in f.coupling.constraints:
            if isinstance(c, HeadAxis) and c.slot in dg.offset:
                heads[grp[dg.ids(c.slot)]] = True
    members: dict[int, set] = {}
    fam: dict[int, tuple] = {}
    for i, pf in enumerate(P.products):
        if not has_src[grp[pf.big]].any():
            continue  # a flatten of channel dims that no source creates: nothing to rank
        axes = [grp[c] for c in pf.coords]
        head = next((j for j, a in enumerate(axes) if heads[a].any()), None)
        if head is None:
            continue  # a channel shuffle: successive shuffles entangle their axes; ranked per channel
        k = head if attention == "heads" else len(axes) - 1
        for u, m in zip(axes[k].tolist(), grp[pf.big].tolist()):
            members.setdefault(u, {u}).add(m)  # the axis itself may carry sources (GQA's k rows)
            fam.setdefault(u, (i, k))
    return members, fam


def group_masks(model: nn.Module, example_inputs: Any, ratio: float = 0.5, criterion: str = "l1",
                seed: int = 0, min_channels: int = 1, attention: str = "heads",
                front_end: str = "auto", round_to: int = 1) -> dict[str, torch.Tensor]:
    """Masks (flat ``{param_fqn: 0/1}``) zeroing the lowest-``ratio`` channels of every family
    (whole heads, or the same channels of every head, where a reshape splits channels).
    ``round_to``: keep a multiple of this many channels per family (hardware-friendly widths)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion '{criterion}': use one of {', '.join(CRITERIA)}")
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention unit '{attention}': use heads or dims")
    if round_to < 1:
        raise ValueError("round_to must be >= 1")
    if not 0 <= ratio < 1:
        raise ValueError("ratio must be in [0, 1)")
    inputs = bind(model, example_inputs)
    traced = trace(model, inputs, front_end)
    dg = graph_mod.build(traced.gm, shapes_of(traced.gm))
    P = Propagation(dg, MaskSet())
    grp, ng = P.group, P.ng
    gbar = _any_by_group(P.barrier, grp, ng)
    params = dict(traced.gm.named_parameters(remove_duplicate=False))  # a tied weight under any of its names
    score = np.zeros(ng)
    family: dict[int, set] = {}
    source_slices: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    rng = np.random.default_rng(seed)
    for _, ln, a, _b in P.links:
        if ln.kind != "source" or ln.a[1] not in params:
            continue
        fqn, d = ln.a[1], ln.a[2]
        w = params[fqn].detach()
        other = [i for i in range(w.dim()) if i != d]
        norms = _slice_scores(w, d, criterion, rng)
        idx = a - dg.offset[ln.a]
        g = grp[a]
        np.add.at(score, g, norms.numpy()[idx])
        for gi in np.unique(g).tolist():
            family.setdefault(gi, set()).add(ln.a)
        source_slices.append((fqn, d, idx, g))
    if criterion == "slim":  # network slimming: |γ| of the BatchNorms that follow a channel, where any
        bn = np.zeros(ng)
        has_bn = np.zeros(ng, bool)
        for _, ln, a, _b in P.links:
            if ln.kind == "follower" and ln.term == 0 and ln.a[1] in params and _is_bn(traced.gm, ln.a[1].rpartition(".")[0]):
                np.add.at(bn, grp[a], params[ln.a[1]].detach().abs().numpy()[a - dg.offset[ln.a]])
                has_bn[grp[a]] = True
        score = np.where(has_bn, bn, score)  # elsewhere L1 of the filters
    members, unit_fam = _units(P, _any_by_group(P.is_source, grp, ng), attention)
    in_unit = np.zeros(ng, bool)
    for ms in members.values():
        in_unit[list(ms)] = True
    fam_of: dict[Any, list[int]] = {}
    for g, slots in family.items():
        if not gbar[g] and not in_unit[g]:
            fam_of.setdefault(frozenset(slots), []).append(g)
    unit_score = np.zeros(ng)
    for u, ms in members.items():
        if not gbar[u] and not gbar[list(ms)].any():
            unit_score[u] = score[list(ms)].sum()
            fam_of.setdefault(unit_fam[u], []).append(u)
    chosen = np.zeros(ng, bool)
    for key, groups in fam_of.items():
        groups = np.array(sorted(groups))
        n = len(groups)
        k = min(int(n * ratio), n - min_channels)
        if round_to > 1 and not isinstance(key, tuple):  # kept channels → a multiple of round_to
            k = n - min(n, -(-(n - k) // round_to) * round_to)
        if k <= 0:
            continue
        s = unit_score if isinstance(key, tuple) else score
        pick = groups[np.argsort(s[groups], kind="stable")[:k]]
        if isinstance(key, tuple):
            pick = np.array(sorted({m for u in pick.tolist() for m in members[u]}))
        chosen[pick] = True
    masks: dict[str, torch.Tensor] = {}
    for fqn, d, idx, g in source_slices:
        sel = chosen[g]
        if not sel.any():
            continue
        m = masks.setdefault(fqn, torch.ones(params[fqn].shape))
        m.index_fill_(d, torch.from_numpy(idx[sel]), 0.0)
    return masks
