"""Choose the units to remove: how many per family, then the lowest-scored ones.

1. *How many* — layer-wise: ``floor(n · sparsity)`` per family; global: the pool's
   ``floor(Σn · total_sparsity)`` lowest units across its families (scores divided by their
   family's mean unless the criterion's scores share one scale), each family capped by
   ``max_sparsity_per_layer`` and by ``min_keep`` units;
2. ``uniform``: families of repeated layers (same kind, size and layer names up to the
   block number) lose the same number of units — their mean;
3. ``round_to``: a channel family keeps a multiple of N channels (rounded up); ``"auto"``
   (the default): families of at least :data:`AUTO_MIN` channels keep multiples of
   :data:`AUTO_BLOCK`, smaller ones are not rounded, a grouped conv keeps a count of whole
   groups that makes such a multiple (see :func:`rounding`); and of what
   the compiler keeps multiples of (``Family.multiple``: transformers' expert kernels);
   ``fit`` (a Hugging Face model's :class:`~slimc.prune.expressible.ConfigFit`): only the
   widths its config can express;
4. *which* — the lowest-scored units of each family; units pruned before (a schedule's
   earlier steps) stay pruned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimc.errors import ConfigError
from slimc.prune.config import Target
from slimc.prune.space import PruneSpace, alike


AUTO = "auto"
#: channels per block of the CPU kernels that a slim layer should keep multiples of: onnxruntime's
#: NCHWc convolutions and oneDNN's blocked layouts use 16 floats with AVX-512 and 8 with AVX2 (16
#: serves both); measured: benchmarks/latency_vs_flops.py, docs/benchmarks/flops.md
AUTO_BLOCK = 16
#: families smaller than this are not rounded by ``"auto"`` (an SE block's squeeze of 8): a
#: 16-channel family keeps 16 — pruned to 8 it ran no faster (EfficientNet-B0, MobileNetV2: the
#: layers of 8 or 12 channels at 112×112 and 56×56 lost the most time of all)
AUTO_MIN = 16


def check_round_to(round_to: int | str) -> int | str:
    if round_to == AUTO or (isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1):
        return round_to
    raise ConfigError(f"round_to must be an integer >= 1 or '{AUTO}', got {round_to!r}")


def rounding(round_to: int | str, f) -> int:
    """The multiple of units family ``f`` keeps under ``round_to``: ``"auto"`` rounds families of
    at least :data:`AUTO_MIN` units that are one channel each; a grouped conv's family, whose
    unit is a whole group of ``per_unit`` channels, keeps as many groups as make a multiple of
    the block (RegNet's groups of 8: an even count; ResNeXt's of 4: a multiple of 4), where
    the family has more than that many groups; other units of several channels (heads) are
    not rounded by ``"auto"``."""
    if f.kind == "conv groups":
        block = AUTO_BLOCK if round_to == AUTO else int(round_to)
        m = block // math.gcd(block, f.per_unit)
        return m if m < len(f) and (round_to != AUTO or len(f) * f.per_unit >= AUTO_MIN) else 1
    if round_to == AUTO:
        return AUTO_BLOCK if len(f) >= AUTO_MIN and f.per_unit == 1 else 1
    return int(round_to)


@dataclass(frozen=True)
class Selection:
    min_keep: int = 1
    round_to: int | str = AUTO
    uniform: bool = False
    fit: Any = field(default=None, compare=False)  # ConfigFit: widths an HF config can express


def _filled(space: PruneSpace, scores: np.ndarray) -> np.ndarray:
    """Units without a score (no statistic reached them) take their family's mean."""
    out = scores.astype(np.float64).copy()
    for f in space.families:
        s = out[f.units]
        if np.isnan(s).any():
            mean = np.nanmean(s) if (~np.isnan(s)).any() else 0.0
            out[f.units] = np.where(np.isnan(s), mean, s)
    return out


def _cap(n: int, t: Target, sel: Selection) -> int:
    return max(0, min(int(np.floor(n * t.max_sparsity + 1e-9)), n - sel.min_keep))


def counts(space: PruneSpace, scores: np.ndarray, targets: dict[int, Target], sel: Selection,
           comparable: bool = False, pruned_before: np.ndarray | None = None) -> dict[int, int]:
    """Units to remove per family index."""
    fams = space.families
    before = np.zeros(space.n_units, bool)
    if pruned_before is not None:
        before[pruned_before] = True
    k: dict[int, int] = {}
    pools: dict[int, list[int]] = {}
    for fi, t in targets.items():
        if t.pool is None:
            n = len(fams[fi])
            k[fi] = min(int(np.floor(n * t.sparsity + 1e-9)), _cap(n, t, sel))
        else:
            pools.setdefault(t.pool, []).append(fi)
    for members in pools.values():
        k.update(_global_counts(space, scores, targets, members, sel, comparable, before))
    for fi in k:
        k[fi] = max(k[fi], int(before[fams[fi].units].sum()))
    if sel.uniform:
        _equalize(space, k)
    for fi, ki in k.items():
        f = fams[fi]
        r = math.lcm(rounding(sel.round_to, f), f.multiple)  # (and what the compiler keeps multiples of)
        if f.kind in ("channels", "conv groups") and r > 1:
            n = len(f)
            k[fi] = n - min(n, -(-(n - ki) // r) * r)
    if sel.fit is not None:
        stream = sel.fit.stream
        sel.fit.adjust(space, k, rounding(sel.round_to, fams[stream]) if stream is not None else 1)
    return {fi: ki for fi, ki in k.items() if ki > 0}


def _global_counts(space, scores, targets, members, sel, comparable, before) -> dict[int, int]:
    fams = space.families
    units = np.concatenate([fams[fi].units for fi in members])
    s = scores[units].astype(np.float64)
    if not comparable:
        for fi in members:
            sel_f = np.isin(units, fams[fi].units)
            mean = np.abs(s[sel_f]).mean() if sel_f.any() else 1.0
            s[sel_f] = s[sel_f] / (mean if mean > 0 else 1.0)
    s = np.where(before[units], -np.inf, s)
    total = int(np.floor(sum(len(fams[fi]) for fi in members) * targets[members[0]].sparsity + 1e-9))
    caps = {fi: _cap(len(fams[fi]), targets[fi], sel) for fi in members}
    taken = dict.fromkeys(members, 0)
    fam_of = space.family_of_unit
    left = total
    for u in units[np.argsort(s, kind="stable")].tolist():
        if left <= 0:
            break
        fi = int(fam_of[u])
        if taken[fi] < caps[fi]:
            taken[fi] += 1
            left -= 1
    return taken


def _equalize(space: PruneSpace, k: dict[int, int]) -> None:
    for members in space.classes(k):
        alike(k, members)


def choose(space: PruneSpace, scores: np.ndarray, k: dict[int, int],
           pruned_before: np.ndarray | None = None) -> np.ndarray:
    """Unit ids: the ``k[f]`` lowest-scored units of every family f (earlier picks first)."""
    s = scores.astype(np.float64).copy()
    if pruned_before is not None and len(pruned_before):
        s[pruned_before] = -np.inf
    picked = []
    for fi, ki in k.items():
        units = space.families[fi].units
        picked.append(units[np.argsort(s[units], kind="stable")[:ki]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def select_units(space: PruneSpace, scores: np.ndarray, targets: dict[int, Target], sel: Selection,
                 comparable: bool = False, pruned_before: np.ndarray | None = None) -> np.ndarray:
    scores = _filled(space, scores)
    k = counts(space, scores, targets, sel, comparable, pruned_before)
    return choose(space, scores, k, pruned_before)
