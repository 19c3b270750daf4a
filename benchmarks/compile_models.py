"""Compile time of whole models against Torch-Pruning's dependency graph + prune.

For each model: masks from another tool (Torch-Pruning's L1 MagnitudePruner choice, 50 %
of every group, classifier output kept, when ``torch_pruning`` is installed; else
``slimc.prune.group_masks``), then — interleaved, in one process, after one warm-up run of
each — ``slimc.compile(verify=False)``, ``slimc.compile()`` (the built-in check), both
reusing the model's analysis from the earlier compiles (a sweep: :mod:`slimc.analysis`),
``slimc.compile(verify=False, cache=False)`` (a first compile: everything analysed afresh),
``slimc.compile(copy.deepcopy(model), verify=False)`` (a sweep that prunes a fresh copy at each
point: the analysis is reused by structure, the copy not timed) and Torch-Pruning's ``DependencyGraph.build_dependency`` + pruning the same channels on a
deep copy (the copy is not timed). Reported: the median of the timed runs, slimc's stage
times (``report["times_s"]``, medians) and the ratios (the median of each round's).

Models come from torchvision when it is installed (``resnet50``, ``mobilenet_v2``,
``densenet121``, ``vgg16_bn`` at 1×3×224×224), else from ``slimc.zoo``.
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import torch
from torch import nn

import slimc


def load_model(name: str) -> tuple[nn.Module, tuple, str]:
    """(model in eval mode, example inputs, where it came from)."""
    try:
        import torchvision

        if hasattr(torchvision.models, name):
            torch.manual_seed(0)
            return getattr(torchvision.models, name)().eval(), (torch.randn(1, 3, 224, 224),), "torchvision"
    except ImportError:
        pass
    from slimc import zoo

    return zoo.build(name).eval(), zoo.example_inputs(name, 1), "slimc.zoo"


def tp_available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def tp_masks(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> dict[str, torch.Tensor]:
    """The channels Torch-Pruning's L1 MagnitudePruner removes, as full-size 0/1 masks."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    names = {mod: n for n, mod in m.named_modules()}
    shapes = {n: p.shape for n, p in m.named_parameters()}
    last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(m, x, pruning_ratio=ratio, importance=tp.importance.MagnitudeImportance(p=1),
                                       ignored_layers=last)
    masks: dict[str, torch.Tensor] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            name = names.get(dep.target.module)
            if name is None or not pruner.DG.is_out_channel_pruning_fn(dep.handler):
                continue
            idx = torch.tensor([int(getattr(i, "idx", i)) for i in idxs], dtype=torch.long)
            for p in ("weight", "bias"):
                fqn = f"{name}.{p}"
                if fqn in shapes and isinstance(getattr(dep.target.module, p, None), torch.Tensor):
                    masks.setdefault(fqn, torch.ones(shapes[fqn])).index_fill_(0, idx, 0.0)
        group.prune()
    return masks


def tp_build_and_prune(model: nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> float:
    """Seconds for Torch-Pruning to build its dependency graph of a copy of ``model`` and
    prune the output channels that ``masks`` zero in every conv / linear (its groups
    carry the pruning to the coupled layers)."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    mods = dict(m.named_modules())
    t0 = time.perf_counter()
    dg = tp.DependencyGraph().build_dependency(m, example_inputs=x)
    for fqn, mk in masks.items():
        mod = mods.get(fqn.rsplit(".", 1)[0])
        if not fqn.endswith(".weight") or not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        idx = torch.nonzero((mk != 0).flatten(1).sum(1) == 0).flatten().tolist()
        if not idx:
            continue
        fn = tp.prune_conv_out_channels if isinstance(mod, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(mod, fn, idxs=idx)
        if dg.check_pruning_group(group):
            group.prune()
    return time.perf_counter() - t0


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def time_model(name: str, repeats: int = 3, log=print) -> dict:
    """One model: median wall times of slimc (no check, with it) and of Torch-Pruning, and
    slimc's median stage times, run interleaved after one warm-up of each; the ratios to
    Torch-Pruning are medians of each round's ratio (on a shared VM the whole machine runs
    up to 2× slower for seconds at a time: a round's runs share that state, the rounds do not)."""
    model, x, source = load_model(name)
    with_tp = tp_available()
    masks = tp_masks(model, x[0]) if with_tp else _zoo_masks(model, x)
    runs: dict[str, list[float]] = {"slimc_no_verify": [], "slimc_verified": [], "slimc_first": [], "slimc_copy": [],
                                    **({"tp": []} if with_tp else {})}
    stages: dict[str, list[dict]] = {k: [] for k in runs if k != "tp"}
    load = [os.getloadavg()[0]]
    for i in range(repeats + 1):  # the first round warms up
        for key in runs:
            if key == "tp":
                runs[key].append(tp_build_and_prune(model, x[0], masks)) if i else tp_build_and_prune(model, x[0], masks)
                continue
            m = copy.deepcopy(model) if key == "slimc_copy" else model
            t0 = time.perf_counter()
            res = slimc.compile(m, masks, x, verify=key == "slimc_verified", name=name, cache=key != "slimc_first")
            if i:
                runs[key].append(time.perf_counter() - t0)
                stages[key].append(dict(res.report["times_s"]))
    load.append(os.getloadavg()[0])
    row = {"model": name, "source": source, "masks_from": "torch_pruning" if with_tp else "slimc.prune.group_masks",
           "params": res.report["params"], "flops": res.report["flops"], "repeats": repeats,
           "load_1m": load, "wall_s": {k: _median(v) for k, v in runs.items()},
           "stages_s": {k: {s: _median([r.get(s, 0.0) for r in rs]) for s in rs[0]} for k, rs in stages.items()}}
    row["runs_s"] = runs
    if with_tp:  # each round's own ratio (its runs share the machine's state), the median of those
        for key in ("no_verify", "verified", "first", "copy"):
            row[f"ratio_{key}"] = _median([s / t for s, t in zip(runs[f"slimc_{key}"], runs["tp"])])
    log(f"[{name}] " + ", ".join(f"{k} {v:.3f} s" for k, v in row["wall_s"].items())
        + (f"; ratio {row['ratio_no_verify']:.2f} / {row['ratio_verified']:.2f} / first {row['ratio_first']:.2f}"
           f" / fresh copy {row['ratio_copy']:.2f}"
           if with_tp else ""))
    return row


def _zoo_masks(model: nn.Module, x: tuple) -> dict:
    from slimc.prune import group_masks

    return group_masks(model, x, ratio=0.5, criterion="l1")


def markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    tp = "tp" in rows[0]["wall_s"]
    head = ("| model | slimc no-verify s | slimc verified s | slimc first compile s | slimc fresh copy s | "
            + ("Torch-Pruning build + prune s | ratio no-verify | ratio verified | ratio first | ratio fresh copy | "
               if tp else "")
            + "load (1 min) |")
    out = [f"Models from {rows[0]['source']} at 1×3×224×224 (zoo models at their own size otherwise), masks from "
           f"{rows[0]['masks_from']}; one thread; median of {rows[0]['repeats']} warm runs, slimc and "
           "Torch-Pruning interleaved in one process; ratio = slimc ÷ Torch-Pruning, the median of the rounds' "
           "own ratios. *no-verify* and *verified* compile a model compiled before (a sweep point: the analysis is "
           "reused, `slimc.analysis`); *first compile* analyses afresh (`cache=False`, no check); *fresh copy* "
           "compiles a deep copy made for the run (not timed, as for Torch-Pruning), no check: the analysis is "
           "reused by structure.", "", head,
           "|---|---:|---:|---:|---:|" + ("---:|---:|---:|---:|---:|" if tp else "") + "---|"]
    for r in rows:
        w = r["wall_s"]
        out.append(f"| {r['model']} | {w['slimc_no_verify']:.3f} | {w['slimc_verified']:.3f} | {w['slimc_first']:.3f} | "
                   f"{w.get('slimc_copy', float('nan')):.3f} | "
                   + (f"{w['tp']:.3f} | {r['ratio_no_verify']:.2f}× | {r['ratio_verified']:.2f}× | "
                      f"{r['ratio_first']:.2f}× | {r.get('ratio_copy', float('nan')):.2f}× | " if tp else "")
                   + " → ".join(f"{v:.1f}" for v in r["load_1m"]) + " |")
    for key, what in (("slimc_verified", "verified compile (analysis reused)"), ("slimc_first", "first compile")):
        stages = list(dict.fromkeys(s for r in rows for s in r["stages_s"][key] if s != "total"))
        out += ["", f"Stage times of the {what} (`report[\"times_s\"]`, medians, seconds; they add up to "
                "`total`, its wall time):", "",
                "| model | " + " | ".join(stages) + " | total |", "|---|" + "---:|" * (len(stages) + 1)]
        for r in rows:
            st = r["stages_s"][key]
            out.append(f"| {r['model']} | " + " | ".join(f"{st.get(s, 0.0):.3f}" for s in stages)
                       + f" | {st['total']:.3f} |")
    return out + [""]


__all__ = ["load_model", "markdown", "time_model", "tp_available", "tp_build_and_prune", "tp_masks"]
