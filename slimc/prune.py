"""Dependency-aware pruning criteria: produce masks that remove whole channel groups.

A *family* is the set of channel groups created by the same source slots (a conv's
filters; a residual stream's channels across every block that writes it). Within each
family, channels are ranked by the summed norm of all their source slices, and the
lowest ``ratio`` are masked in every source — so a residual channel goes in every block
at once, and the slim model really shrinks.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimc import graph as graph_mod
from slimc.loading import as_tuple
from slimc.masks import MaskSet
from slimc.propagate import Propagation, _any_by_group
from slimc.trace import shapes_of, trace

CRITERIA = ("l1", "l2", "random")


def group_masks(model: nn.Module, example_inputs: Any, ratio: float = 0.5, criterion: str = "l1",
                seed: int = 0, min_channels: int = 1) -> dict[str, torch.Tensor]:
    """Masks (flat ``{param_fqn: 0/1}``) zeroing the lowest-``ratio`` channels of every family."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion '{criterion}': use one of {', '.join(CRITERIA)}")
    if not 0 <= ratio < 1:
        raise ValueError("ratio must be in [0, 1)")
    inputs = as_tuple(example_inputs)
    traced = trace(model, inputs)
    dg = graph_mod.build(traced.gm, shapes_of(traced.gm))
    P = Propagation(dg, MaskSet())
    grp, ng = P.group, P.ng
    gbar = _any_by_group(P.barrier, grp, ng)
    params = dict(traced.gm.named_parameters())
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
        if criterion == "l1":
            norms = w.abs().sum(dim=other) if other else w.abs()
        elif criterion == "l2":
            norms = w.pow(2).sum(dim=other) if other else w.pow(2)
        else:
            norms = torch.from_numpy(rng.random(w.shape[d]))
        idx = a - dg.offset[ln.a]
        g = grp[a]
        np.add.at(score, g, norms.numpy()[idx])
        for gi in np.unique(g).tolist():
            family.setdefault(gi, set()).add(ln.a)
        source_slices.append((fqn, d, idx, g))
    fam_of: dict[frozenset, list[int]] = {}
    for g, slots in family.items():
        if not gbar[g]:
            fam_of.setdefault(frozenset(slots), []).append(g)
    chosen = np.zeros(ng, bool)
    for groups in fam_of.values():
        groups = np.array(sorted(groups))
        k = min(int(len(groups) * ratio), len(groups) - min_channels)
        if k <= 0:
            continue
        order = np.argsort(score[groups], kind="stable")
        chosen[groups[order[:k]]] = True
    masks: dict[str, torch.Tensor] = {}
    for fqn, d, idx, g in source_slices:
        sel = chosen[g]
        if not sel.any():
            continue
        m = masks.setdefault(fqn, torch.ones(params[fqn].shape))
        m.index_fill_(d, torch.from_numpy(idx[sel]), 0.0)
    return masks
