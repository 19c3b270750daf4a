"""What a pruner can remove from a model: its channel groups, ranked in units, gathered in
families — traced once, reused by every criterion, config list and schedule step.

* A *group* is one set of coupled channels (:mod:`slimc.propagate`): removing it removes a
  conv filter together with its BatchNorm, its bias and the next layer's input columns.
* A *unit* is what a pruner ranks and removes at once: one group or — where a reshape
  splits channels into heads × head dim — one head (every group on that head index, the
  query heads of a grouped-query key/value head included) or one head dim across every
  head (``attention="dims"``). A channel shuffle is ranked per channel: successive
  shuffles entangle their axes, and the compiler keeps what a rectangle needs.
* A *family* is the set of units created by the same layers: a conv's filters; a residual
  stream's channels, written by every block; one attention's heads. Config lists size
  families, schedules grow their sparsity, and units are compared within a family
  (layer-wise ranking) or across the families of a pool (global ranking).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slimc import graph as graph_mod
from slimc.errors import ConfigError
from slimc.inputs import bind
from slimc.masks import MaskSet
from slimc.propagate import Propagation, any_by_group
from slimc.shape_rules import HeadAxis, Multiple
from slimc.trace import shapes_of, trace

ATTENTION = ("heads", "dims")


@dataclass(frozen=True)
class Family:
    """Units created by the same layers (what a config list calls "a layer")."""

    index: int
    name: str  # the first layer that creates the channels, e.g. "layer1.0.conv1"
    kind: str  # "channels" | "heads" | "head dims" | "conv groups"
    units: np.ndarray  # unit ids, in channel order
    sources: tuple[str, ...]  # layers (module names) whose weights create the channels
    members: frozenset[str]  # every module holding a slice of them: sources, followers, sinks
    pattern: str  # sources with layer numbers as '#': repeated layers (blocks) share it
    multiple: int = 1  # the compiler keeps a multiple of this many of its channels (an aligned kernel)
    per_unit: int = 1  # channels one unit is in a layer: > 1 where groups stay aligned (a grouped conv)

    def __len__(self) -> int:
        return len(self.units)


@dataclass(frozen=True)
class SourceSlice:
    """Slices of a parameter along ``dim`` that create channels: index → group."""

    fqn: str
    dim: int | tuple  # a part dim (dim, at, index): one expert's slices of stacked experts
    index: np.ndarray
    groups: np.ndarray


def _head_units(P: Propagation, has_src: np.ndarray, attention: str) -> tuple[dict[int, set], dict[int, tuple]]:
    """Reshape products → {unit: member groups}, {unit: family key}.

    A unit is one index of the product axis that is ranked (heads, or the innermost axis);
    its members are the groups of every product element on that index."""
    dg, grp = P.dg, P.group
    heads = np.zeros(P.ng, bool)
    conv_groups = np.zeros(P.ng, bool)
    for f in dg.facts:
        for c in f.coupling.constraints:
            if isinstance(c, HeadAxis) and c.slot in dg.offset:
                heads[grp[dg.ids(c.slot)]] = True
                conv_groups[grp[dg.ids(c.slot)]] |= c.unit == "conv groups"
    members: dict[int, set] = {}
    fam: dict[int, tuple] = {}
    for i, pf in enumerate(P.products):
        if not has_src[grp[pf.big]].any():
            continue  # a flatten of channel dims that no source creates: nothing to rank
        axes = [grp[c] for c in pf.coords]
        head = next((j for j, a in enumerate(axes) if heads[a].any()), None)
        if head is None:
            continue  # a channel shuffle: ranked per channel
        whole = attention == "heads" or conv_groups[axes[head]].any()  # conv groups go whole either way
        k = head if whole else len(axes) - 1
        kind = "conv groups" if conv_groups[axes[head]].any() else "heads" if whole else "head dims"
        for u, m in zip(axes[k].tolist(), grp[pf.big].tolist()):
            members.setdefault(u, {u}).add(m)  # the axis itself may carry sources (GQA's k rows)
            fam.setdefault(u, (kind, i, k))
    return _separable(members, fam)


def _separable(members: dict[int, set], fam: dict[int, tuple]) -> tuple[dict[int, set], dict[int, tuple]]:
    """The head families whose units are disjoint. Where an op couples the same position of
    every head (ResNeSt's softmax across its radix groups), one unit's channels are every
    unit's: removing a head removes them all, so the axis is not a unit; its positions are
    ranked as channels instead."""
    by_key: dict[tuple, list[int]] = {}
    for u, key in fam.items():
        by_key.setdefault(key, []).append(u)
    for us in by_key.values():
        total = sum(len(members[u]) for u in us)
        if len(set().union(*(members[u] for u in us))) < total:  # a channel in two units
            for u in us:
                del members[u], fam[u]
    return members, fam


def owner(fqn: str) -> str:
    """The module that holds a parameter: 'layer1.0.conv1.weight' → 'layer1.0.conv1'."""
    return fqn.rpartition(".")[0]


def leaf_modules(model: nn.Module) -> set[str]:
    """Names of the modules without children: the layers."""
    return {n for n, m in model.named_modules() if n and not any(True for _ in m.children())}


def layer_pattern(names: Any) -> str:
    return "|".join(sorted({re.sub(r"\d+", "#", n) for n in names}))


def alike(k: dict[int, int], members: list[int]) -> None:
    """One count, the rounded mean, for every family of ``members`` (absent ones count 0)."""
    mean = int(round(sum(k.get(fi, 0) for fi in members) / len(members)))
    k.update(dict.fromkeys(members, mean))


class PruneSpace:
    """The units and families of ``model`` (traced once on ``example_inputs``)."""

    def __init__(self, model: nn.Module, example_inputs: Any, *, attention: str = "heads", front_end: str = "auto"):
        if attention not in ATTENTION:
            raise ConfigError(f"unknown attention unit '{attention}': use heads or dims")
        self.model = model
        self._param_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        self.inputs = bind(model, example_inputs)
        self.attention = attention
        traced = trace(model, self.inputs, front_end)
        self.gm = traced.gm
        self.front_end = traced.front_end
        self.dg = graph_mod.build(traced.gm, shapes_of(traced.gm))
        self.P = P = Propagation(self.dg, MaskSet())
        grp, ng = P.group, P.ng
        self.ng = ng
        self.barrier = any_by_group(P.barrier, grp, ng)
        self.gm_params = dict(traced.gm.named_parameters(remove_duplicate=False))  # tied weights under any name
        self.sources: list[SourceSlice] = []
        family_slots: dict[int, set] = {}
        for _, ln, a, _b in P.links:
            if ln.kind != "source" or ln.a[1] not in self.gm_params:
                continue
            g = grp[a]
            self.sources.append(SourceSlice(ln.a[1], ln.a[2], a - self.dg.offset[ln.a], g))
            for gi in np.unique(g).tolist():
                family_slots.setdefault(gi, set()).add(ln.a)
        self._build_units(family_slots)
        self._build_families()

    # --- units -----------------------------------------------------------------------
    def _build_units(self, family_slots: dict[int, set]) -> None:
        P, ng = self.P, self.ng
        members, unit_fam = _head_units(P, any_by_group(P.is_source, P.group, ng), self.attention)
        in_head = np.zeros(ng, bool)
        for ms in members.values():
            in_head[list(ms)] = True
        by_key: dict[Any, list[list[int]]] = {}
        for g, slots in sorted(family_slots.items()):
            if not self.barrier[g] and not in_head[g]:
                by_key.setdefault(("channels", frozenset(slots)), []).append([g])
        for u, ms in sorted(members.items()):
            ms_list = sorted(ms)
            if not self.barrier[ms_list].any():
                by_key.setdefault(unit_fam[u], []).append(ms_list)
        unit_groups: list[list[int]] = []
        self._family_units: list[tuple[str, np.ndarray]] = []
        for key, units in by_key.items():
            ids = np.arange(len(unit_groups), len(unit_groups) + len(units))
            unit_groups.extend(units)
            self._family_units.append((key[0], ids))
        self.n_units = len(unit_groups)
        self.notes = self._held_heads() if self.attention == "heads" else []
        self.unit_of_entry = np.repeat(np.arange(self.n_units), [len(u) for u in unit_groups]).astype(np.int64)
        self.group_of_entry = np.array([g for u in unit_groups for g in u], dtype=np.int64)

    def _held_heads(self) -> list[str]:
        """Why attention heads (the groups of a head axis) cannot be pruned, where an op of
        the model holds them (ALiBi slopes computed from the head count): one line per reason,
        with the user's line that made the barrier."""
        dg, grp = self.dg, self.P.group
        heads = np.zeros(self.ng, bool)
        for f in dg.facts:
            for c in f.coupling.constraints:
                if isinstance(c, HeadAxis) and c.unit == "heads" and c.slot in dg.offset:
                    heads[grp[dg.ids(c.slot)]] = True
        held = heads & self.barrier
        nodes = {n.name: n for n in dg.gm.graph.nodes}
        whys: dict[str, None] = {}
        for slot, why in self.P.barrier_why.items():  # (propagation adds reshapes of fixed dims)
            node = nodes.get(str(slot[1]).split("#")[0]) if slot[0] == "v" else None
            if not held.any() or slot not in dg.offset or node is None or node.op in ("placeholder", "output"):
                continue
            hit = grp[dg.ids(slot)]
            if held[hit].any():
                line = graph_mod.source_line(node)
                whys[f"{why} at {node.name}" + (f" ({line})" if line else "")] = None
                held[hit] = False
        return [f"attention heads stay whole (not prunable): {why}" for why in whys]

    def unit_scores(self, group_scores: np.ndarray, mean: bool = False) -> np.ndarray:
        """Per unit: the sum (or the mean) of its groups' scores (NaN where no group has one).
        A sum suits magnitudes (a head's norm is its groups' together); a mean suits scores
        on one scale (a fraction), so a head compares with a channel."""
        v = group_scores[self.group_of_entry]
        known = ~np.isnan(v)
        s = np.bincount(self.unit_of_entry[known], weights=v[known], minlength=self.n_units)
        seen = np.bincount(self.unit_of_entry[known], minlength=self.n_units)
        return np.where(seen > 0, s / np.where(mean & (seen > 0), seen, 1), np.nan)

    def groups_of(self, chosen_units: np.ndarray) -> np.ndarray:
        """Bool per group: does a chosen unit hold it?"""
        out = np.zeros(self.ng, bool)
        sel = np.zeros(self.n_units, bool)
        sel[chosen_units] = True
        out[self.group_of_entry[sel[self.unit_of_entry]]] = True
        return out

    # --- families --------------------------------------------------------------------
    def _modules_by_family(self, fam_of_group: np.ndarray, kinds: tuple[str, ...]) -> list[set]:
        out: list[set] = [set() for _ in self._family_units]
        for _, ln, a, _b in self.P.links:
            if ln.kind not in kinds or ln.a[0] != "p":
                continue
            for f in np.unique(fam_of_group[self.P.group[a]]).tolist():
                if f >= 0:
                    out[f].add(self.module_of(ln.a[1]))
        return out

    def _build_families(self) -> None:
        fam_of_group = np.full(self.ng, -1, dtype=np.int64)
        for i, (_, ids) in enumerate(self._family_units):
            sel = np.isin(self.unit_of_entry, ids)
            fam_of_group[self.group_of_entry[sel]] = i
        srcs = self._modules_by_family(fam_of_group, ("source",))
        members = self._modules_by_family(fam_of_group, ("source", "follower", "sink"))
        order = {n: i for i, n in enumerate(self.module_order())}
        leaves = self.leaf_modules()
        multiple = self._multiples(fam_of_group)
        per_unit = self._per_unit(fam_of_group)
        self.families: list[Family] = []
        seen: dict[str, int] = {}
        for i, (kind, ids) in enumerate(self._family_units):
            # named after its first layer (a leaf module; a pos-embed held by the model itself comes last)
            s = tuple(sorted(srcs[i], key=lambda n: (n not in leaves, order.get(n, len(order)), n)))
            name = s[0] if s else f"family{i}"
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:  # one layer's channels split over several families (a channel shuffle)
                name = f"{name}[{seen[name] - 1}]"
            self.families.append(Family(i, name, kind, ids, s, frozenset(members[i]), kind + ":" + layer_pattern(s),
                                        multiple.get(i, 1), per_unit.get(i, 1)))
        self.family_of_unit = np.zeros(self.n_units, dtype=np.int64)
        for f in self.families:
            self.family_of_unit[f.units] = f.index

    def _per_unit(self, fam_of_group: np.ndarray) -> dict[int, int]:
        """Family → the most channels one of its units is in one source layer (a grouped conv's
        channel position k in every group: one unit, ``groups`` channels)."""
        out: dict[int, int] = {}
        for s in self.sources:
            fams = fam_of_group[s.groups]
            for fi, n in zip(*np.unique(fams[fams >= 0], return_counts=True)):
                units = len(self._family_units[fi][1])
                out[int(fi)] = max(out.get(int(fi), 1), int(n) // max(1, units))
        return out

    def _multiples(self, fam_of_group: np.ndarray) -> dict[int, int]:
        """Family → the multiple the compiler keeps of its channels (:class:`Multiple` constraints
        on slots it lies on: transformers' grouped expert products need aligned widths)."""
        dg, grp = self.dg, self.P.group
        out: dict[int, int] = {}
        for f in dg.facts:
            for c in f.coupling.constraints:
                if isinstance(c, Multiple):
                    for s in c.slots:
                        for fi in np.unique(fam_of_group[grp[dg.ids(s)]]).tolist() if s in dg.offset else ():
                            if fi >= 0:
                                out[fi] = math.lcm(out.get(fi, 1), c.n)
        return out

    def module_of(self, fqn: str) -> str:
        """The user's module holding ``fqn``; a constant the tracer made is named by itself."""
        return owner(fqn) if fqn in self._param_names else fqn

    def module_order(self) -> list[str]:
        return [n for n, _ in self.model.named_modules()]

    def leaf_modules(self) -> set[str]:
        return leaf_modules(self.model)

    def output_layers(self) -> set[str]:
        """Modules whose own channels are a model output (their width is the model's interface)."""
        dg, grp = self.dg, self.P.group
        out_groups = np.zeros(self.ng, bool)
        for slot, why in dg.barrier_reasons.items():
            if why == "graph output" and slot in dg.offset:
                out_groups[grp[dg.ids(slot)]] = True
        return {self.module_of(s.fqn) for s in self.sources if out_groups[s.groups].any()}

    def classes(self, families) -> list[list[int]]:
        """``families`` (indices) by class: repeated layers, one pattern and one width."""
        by: dict[tuple, list[int]] = {}
        for fi in families:
            f = self.families[fi]
            by.setdefault((f.pattern, len(f)), []).append(fi)
        return list(by.values())

    def family(self, name: str) -> Family:
        for f in self.families:
            if f.name == name:
                return f
        raise KeyError(name)

    def describe(self) -> list[dict]:
        return [{"family": f.name, "kind": f.kind, "units": len(f), "sources": list(f.sources)} for f in self.families]

    def params(self, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The current values of the traced parameters, read from ``model`` (the traced copy
        is frozen at trace time; a training loop updates the user's model)."""
        live = dict((model or self.model).named_parameters(remove_duplicate=False))
        return {k: live.get(k, v).detach() for k, v in self.gm_params.items()}
