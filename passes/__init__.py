"""Rewrite passes: removal plan → physically smaller GraphModule.

Each pass is ``run(gm, ctx) -> PassResult`` in its own file; :data:`PIPELINE` lists
them in the order they run, and reads like the algorithm.
"""
from __future__ import annotations

from typing import Callable

from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent, node_error
from slimc.passes import (drop_dead, exact_layernorm, exact_mean, inline_whole, patch_constants, patch_factories,
                          patch_slices, slice_params)

__all__ = ["PIPELINE", "PassResult", "RewriteContext", "SizeEvent", "node_error", "run_pipeline"]

Pass = Callable[[fx.GraphModule, RewriteContext], PassResult]

PIPELINE: list[tuple[str, Pass]] = [
    ("slice_params", slice_params.run),  # smaller leaf modules and params, same classes
    ("patch_constants", patch_constants.run),  # view/reshape sizes, split sizes, conv groups
    ("patch_slices", patch_slices.run),  # x[:, a:b] bounds: the count of kept channels before them
    ("patch_factories", patch_factories.run),  # torch.zeros(B, H) sizes (an RNN cell's initial state)
    ("exact_mean", exact_mean.run),  # a mean over pruned channels divides by the original count
    ("exact_layernorm", exact_layernorm.run),  # LayerNorm stats as if removed channels were zeros
    ("inline_whole", inline_whole.run),  # modules traced whole (MoE experts) → their slim ATen graph
    ("drop_dead", drop_dead.run),  # dead nodes out, lint, recompile
]


def run_pipeline(gm: fx.GraphModule, ctx: RewriteContext,
                 code_from: fx.GraphModule | None = None) -> tuple[fx.GraphModule, list[str]]:
    """Every pass of :data:`PIPELINE` in order, then one ``graph.lint()`` and one
    ``recompile()`` if any pass changed the graph. ``code_from``: the module whose graph
    ``gm``'s is a copy of (:func:`slimc.analysis.fork`); where the passes changed modules and
    params only, ``gm`` runs that module's generated ``forward`` (the same code), not one
    generated again. Returns the slim module and the passes' notes."""
    notes: list[str] = []
    graph_changed = False
    for name, fn in PIPELINE:
        res = fn(gm, ctx)
        gm = res.gm
        graph_changed |= res.changed_graph
        notes.extend(f"{name}: {n}" for n in res.notes)
    if graph_changed or code_from is None:
        if graph_changed:
            gm.graph.lint()
        gm.recompile()
    else:
        adopt_code(gm, code_from)
    return gm, notes


#: what ``GraphModule.recompile`` sets on the instance besides its class's ``forward``
_CODE_ATTRS = ("_code", "_lineno_map", "_prologue_start", "_in_spec", "_out_spec")


def adopt_code(gm: fx.GraphModule, src: fx.GraphModule) -> None:
    """``gm`` runs ``src``'s generated code (their graphs generate the same): the compiled
    ``forward`` goes on ``gm``'s own class (each GraphModule has one), so a later
    ``recompile`` of either leaves the other alone."""
    for attr in _CODE_ATTRS:
        if attr in src.__dict__:
            gm.__dict__[attr] = src.__dict__[attr]
    type(gm).forward = type(src).forward
