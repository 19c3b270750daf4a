"""Rewrite passes: removal plan → physically smaller GraphModule.

Each pass is ``run(gm, ctx) -> PassResult`` in its own file; :data:`PIPELINE` lists
them in the order they run, and reads like the algorithm.
"""
from __future__ import annotations

from typing import Callable

from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent, node_error
from slimc.passes import (drop_dead, exact_layernorm, exact_mean, patch_constants, patch_factories, patch_slices,
                          slice_params)

__all__ = ["PIPELINE", "PassResult", "RewriteContext", "SizeEvent", "node_error", "run_pipeline"]

Pass = Callable[[fx.GraphModule, RewriteContext], PassResult]

PIPELINE: list[tuple[str, Pass]] = [
    ("slice_params", slice_params.run),  # smaller leaf modules and params, same classes
    ("patch_constants", patch_constants.run),  # view/reshape sizes, split sizes, conv groups
    ("patch_slices", patch_slices.run),  # x[:, a:b] bounds: the count of kept channels before them
    ("patch_factories", patch_factories.run),  # torch.zeros(B, H) sizes (an RNN cell's initial state)
    ("exact_mean", exact_mean.run),  # a mean over pruned channels divides by the original count
    ("exact_layernorm", exact_layernorm.run),  # LayerNorm stats as if removed channels were zeros
    ("drop_dead", drop_dead.run),  # dead nodes out, lint, recompile
]


def run_pipeline(gm: fx.GraphModule, ctx: RewriteContext) -> tuple[fx.GraphModule, list[str]]:
    """Every pass of :data:`PIPELINE` in order; one ``graph.lint()`` (if any pass changed
    the graph) and one ``recompile()`` at the end. Returns the slim module and the passes' notes."""
    notes: list[str] = []
    modified = False
    for name, fn in PIPELINE:
        res = fn(gm, ctx)
        gm = res.gm
        modified |= res.modified
        notes.extend(f"{name}: {n}" for n in res.notes)
    if modified:
        gm.graph.lint()
    gm.recompile()
    return gm, notes
