"""Chosen groups → complete masks: what ``slimc compile`` will remove, and nothing else.

The chosen groups' source slices (the filters, the rows) are handed to the compiler's own
planner (:func:`slimc.propagate.plan`); every parameter slice its plan removes — weight rows
*and* columns, biases, norm γ and β — is zeroed in the masks it returns (buffers need none:
running statistics of a removed channel are read by nothing). So the masked model a user
fine-tunes computes exactly what the slim model will, and compiling the masks removes
exactly those slices again. A chosen group the compiler must keep (a channel shuffle's
rectangle) is left unmasked rather than half-masked, and counted in ``notes``.

:func:`removal_mask` is the one place a mask tensor is made: compact, per dim (:mod:`slimc.compact`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Mapping

import numpy as np
import torch

from slimc.compact import is_part, structured_mask
from slimc.masks import MaskSet
from slimc.propagate import RemovalPlan, plan
from slimc.prune.space import PruneSpace

LAYOUTS = ("flat", "nni")


def removal_mask(shape: torch.Size | tuple, removed: Mapping[Any, np.ndarray]) -> torch.Tensor:
    """The compact 0/1 mask of a parameter of ``shape`` with the ``removed[dim]`` slices
    zeroed: per-dim keep vectors that broadcast to it (``(out, 1, 1, 1)`` for conv filters,
    ``(1, in)`` for columns, their product where both go), never a full-size copy of the
    parameter (see :mod:`slimc.compact`)."""
    m = torch.ones((1,) * len(shape))
    for dim, idx in removed.items():
        if len(idx):
            keep = np.ones(int(shape[dim[0] if is_part(dim) else dim]), bool)  # a part dim: one expert's rows
            keep[np.asarray(idx, dtype=np.int64)] = False
            m = m * structured_mask(shape, dim, keep).float()
    return m


@dataclass
class Emitted:
    masks: dict[str, torch.Tensor]  # flat {param_fqn: 0/1}, the params of removed groups
    plan: RemovalPlan = field(repr=False)
    notes: list[str] = field(default_factory=list)


def source_masks(space: PruneSpace, chosen_groups: np.ndarray) -> dict[str, torch.Tensor]:
    """Masks of the chosen groups' source slices only (filters, rows): what a pruner that
    does not complete its masks writes, and what the planner starts from."""
    src: dict[str, dict[int, list[np.ndarray]]] = {}
    for s in space.sources:
        sel = chosen_groups[s.groups]
        if sel.any():
            src.setdefault(s.fqn, {}).setdefault(s.dim, []).append(s.index[sel])
    return {fqn: removal_mask(space.gm_params[fqn].shape, {d: np.concatenate(v) for d, v in dims.items()})
            for fqn, dims in src.items()}


def complete_masks(space: PruneSpace, chosen_groups: np.ndarray,
                   base: Mapping[str, torch.Tensor] | None = None) -> Emitted:
    """Masks removing ``chosen_groups`` (bool per group) completely; ``base`` (unstructured
    zeros, the level pruner's) is kept and completed where it empties whole channels."""
    params = space.gm_params
    given = source_masks(space, chosen_groups)
    for fqn, m in (base or {}).items():
        given[fqn] = given[fqn] * m if fqn in given else m.float()
    p = plan(space.dg, MaskSet({k: v != 0 for k, v in given.items()}), mode="channel")
    removed: dict[str, dict[int, np.ndarray]] = {}
    for slot, kept in p.kept.items():
        kind, fqn, dim = slot
        if kind == "p" and fqn in params:
            removed.setdefault(fqn, {})[dim] = np.setdiff1d(np.arange(space.dg.size[slot]), kept)
    masks = {fqn: removal_mask(params[fqn].shape, dims) for fqn, dims in removed.items()}
    for fqn, m in (base or {}).items():
        masks[fqn] = masks[fqn] * m if fqn in masks else m.float()
    for names in space.P.aliases:  # a tied weight: one mask under each of its names
        given_ms = [masks[n] for n in names if n in masks]
        if given_ms:
            joint = reduce(torch.mul, given_ms)
            masks.update({n: joint.clone() for n in names})
    notes = []
    held = chosen_groups & ~_removed_groups(space, p)
    if held.any():
        notes.append(f"{int(held.sum())} chosen channel group(s) kept unmasked: the compiler must keep them "
                     f"({p.kept_reasons[0]['reason'] if p.kept_reasons else 'constraints'})")
    return Emitted(masks, p, notes)


def _removed_groups(space: PruneSpace, p: RemovalPlan) -> np.ndarray:
    return np.bincount(space.P.group, weights=p.removed.astype(float), minlength=space.ng) > 0


def to_layout(masks: Mapping[str, torch.Tensor], layout: str = "flat") -> dict:
    """Flat ``{"a.b.weight": m}`` or NNI ``{"a.b": {"weight": m}}``."""
    if layout not in LAYOUTS:
        from slimc.errors import ConfigError

        raise ConfigError(f"unknown mask format '{layout}': use {' or '.join(LAYOUTS)}")
    if layout == "flat":
        return dict(masks)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in masks.items():
        mod, _, leaf = k.rpartition(".")
        out.setdefault(mod, {})[leaf] = v
    return out
