"""``slimc inspect``: what slimc sees in a model — channel families, barriers and why."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from slimc import graph as graph_mod
from slimc.inputs import bind
from slimc.masks import normalize
from slimc.probe import Prober
from slimc.propagate import Propagation, any_by_group, plan as make_plan
from slimc.trace import shapes_of, trace


def inspect_model(model: nn.Module, example_inputs: Any, masks: Any = None, front_end: str = "auto",
                  probe: bool = True, graph_path: str | None = None) -> dict:
    """Channel families (channels created by the same source params), barriers and why;
    ``graph_path``: also write the slot graph (GraphML or DOT) with each slot's families."""
    inputs = bind(model, example_inputs)
    traced = trace(model, inputs, front_end)
    dg = graph_mod.build(traced.gm, shapes_of(traced.gm), Prober(traced.gm, inputs) if probe else None)
    user = normalize(masks, model)
    prop = Propagation(dg, user)
    grp, ng = prop.group, prop.ng
    group_has_barrier = any_by_group(prop.barrier, grp, ng)
    removed = None
    if masks is not None:
        removed = make_plan(dg, user, allow_empty=True).removed
    fam: dict[frozenset, dict[str, Any]] = {}
    family_groups: dict[frozenset, list[int]] = {}
    group_sources: dict[int, set] = {}
    group_sinks: dict[int, set] = {}
    for _, ln, a, _b in prop.links:
        if ln.kind == "source":
            for g in np.unique(grp[a]).tolist():
                group_sources.setdefault(g, set()).add(ln.a[1])
        elif ln.kind == "sink":
            for g in np.unique(grp[a]).tolist():
                group_sinks.setdefault(g, set()).add(ln.a[1])
    for _, big, parts in prop.splits:  # read through the axes it is split into: a grouped conv's columns
        names = {n for part in parts for g in np.unique(grp[part]).tolist() for n in group_sinks.get(g, ())}
        for g in np.unique(grp[big]).tolist() if names else ():
            group_sinks.setdefault(g, set()).update(names)
    first_bar: dict[int, Any] = {}
    bar_ids = np.nonzero(prop.barrier)[0]
    if len(bar_ids):
        starts = sorted((dg.offset[s], s) for s in dg.offset)
        offs = np.array([o for o, _ in starts])
        for e in bar_ids[np.unique(grp[bar_ids], return_index=True)[1]].tolist():
            s = starts[int(np.searchsorted(offs, e, side="right")) - 1][1]
            first_bar[int(grp[e])] = prop.barrier_why.get(s, "fixed dim")
    for g, srcs in group_sources.items():
        key = frozenset(srcs)
        f = fam.setdefault(key, {"sources": sorted(srcs), "sinks": set(), "channels": 0, "barrier": None,
                                 "masked_sources": 0, "removed": 0})
        family_groups.setdefault(key, []).append(g)
        f["channels"] += 1
        f["sinks"].update(group_sinks.get(g, ()))
        if group_has_barrier[g] and f["barrier"] is None:
            f["barrier"] = first_bar.get(g, "fixed dim")
    if removed is not None:
        rem_g = np.zeros(ng, bool)
        rem_g[grp[removed]] = True
        for g, srcs in group_sources.items():
            if rem_g[g]:
                fam[frozenset(srcs)]["removed"] += 1
    families = []
    for f in fam.values():
        f["sinks"] = sorted(f["sinks"])
        families.append(f)
    families.sort(key=lambda f: f["sources"])
    if graph_path is not None:
        _write_graph(dg, grp, families, family_groups, graph_path)
    barrier_reasons: dict[str, int] = {}
    for s, why in dg.barrier_reasons.items():
        if s[0] == "v" and dg.size.get(s, 0) > 1 and not why.startswith(("graph input", "graph output")) and "spatial" not in why and "pooled" not in why and "resampled" not in why:
            barrier_reasons[why] = barrier_reasons.get(why, 0) + 1
    return {
        "front_end": traced.front_end,
        "nodes": len(traced.gm.graph.nodes),
        "elements": dg.n,
        "families": families,
        "unsupported": graph_mod.unsupported_table(dg),
        "probed": graph_mod.probed_table(dg),
        "barrier_reasons": [{"reason": k, "dims": v} for k, v in sorted(barrier_reasons.items(), key=lambda kv: -kv[1])],
        "masked": masks is not None,
    }


def _write_graph(dg, grp: np.ndarray, families: list[dict], family_groups: dict[frozenset, list[int]], path) -> None:
    """The slot graph with each slot's channel families (their indices in ``families``, as
    listed by ``slimc inspect``) and its first source."""
    family_of: dict[int, int] = {}
    for i, f in enumerate(families):
        for g in family_groups[frozenset(f["sources"])]:
            family_of[g] = i
    attrs = {}
    for slot in dg.nx.nodes:
        fams = sorted({family_of[g] for g in np.unique(grp[dg.ids(slot)]).tolist() if g in family_of})
        attrs[slot] = {"families": ",".join(map(str, fams)),
                       "source": families[fams[0]]["sources"][0] if fams else ""}
    graph_mod.write_graph(dg, path, attrs)


def render_inspection(info: dict, console, verbose: bool = False) -> None:
    from rich.table import Table

    from slimc.report import rows_table

    console.print(f"front end: {info['front_end']}, {info['nodes']} nodes, {info['elements']:,} channel elements")
    t = Table(title="channel families (channels created by the same source params)")
    t.add_column("sources")
    t.add_column("channels", justify="right")
    if info["masked"]:
        t.add_column("removed", justify="right")
    t.add_column("sinks", justify="right")
    t.add_column("status")
    fams = info["families"] if verbose else info["families"][:60]
    for f in fams:
        src = ", ".join(f["sources"][:3]) + (f" +{len(f['sources']) - 3}" if len(f["sources"]) > 3 else "")
        status = f"[yellow]barrier: {f['barrier']}[/yellow]" if f["barrier"] else "[green]prunable[/green]"
        row = [src, str(f["channels"])]
        if info["masked"]:
            row.append(str(f["removed"]))
        row += [str(len(f["sinks"])), status]
        t.add_row(*row)
    console.print(t)
    if len(info["families"]) > len(fams):
        console.print(f"… {len(info['families']) - len(fams)} more families (--verbose)")
    if info["unsupported"]:
        console.print(rows_table("ops without a usable rule (barriers)", info["unsupported"],
                                 ["node", "op", "reason", "source"]))
    if info.get("probed"):
        console.print(rows_table("ops without a rule, probed: channel-wise where no mixing was found "
                                 "(the check is the proof)", info["probed"], ["node", "op", "found", "source"]))
    if info["barrier_reasons"]:
        b = Table(title="other fixed dims (not spatial, not graph inputs/outputs)")
        b.add_column("reason")
        b.add_column("dims", justify="right")
        for r in info["barrier_reasons"][:30]:
            b.add_row(r["reason"], str(r["dims"]))
        console.print(b)
