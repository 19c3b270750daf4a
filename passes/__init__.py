"""Rewrite passes: removal plan → physically smaller GraphModule.

Each pass is ``run(gm, ctx) -> PassResult`` in its own file; :data:`PIPELINE` lists
them in the order they run, and reads like the algorithm.
"""
from __future__ import annotations

from typing import Callable

from torch import fx

from slimc.passes.context import PassResult, RewriteContext, SizeEvent

__all__ = ["PassResult", "RewriteContext", "SizeEvent", "run_pipeline"]


def _pipeline() -> list[tuple[str, Callable[[fx.GraphModule, RewriteContext], PassResult]]]:
    from slimc.passes import (drop_dead, exact_layernorm, exact_mean, patch_constants, patch_factories, patch_slices,
                              slice_params)

    return [
        ("slice_params", slice_params.run),  # smaller leaf modules and params, same classes
        ("patch_constants", patch_constants.run),  # view/reshape sizes, split sizes, conv groups
        ("patch_slices", patch_slices.run),  # x[:, a:b] bounds: the count of kept channels before them
        ("patch_factories", patch_factories.run),  # torch.zeros(B, H) sizes (an RNN cell's initial state)
        ("exact_mean", exact_mean.run),  # a mean over pruned channels divides by the original count
        ("exact_layernorm", exact_layernorm.run),  # LayerNorm stats as if removed channels were zeros
        ("drop_dead", drop_dead.run),  # dead nodes out, lint, recompile
    ]


def run_pipeline(gm: fx.GraphModule, ctx: RewriteContext) -> tuple[fx.GraphModule, list[str]]:
    notes: list[str] = []
    for name, fn in _pipeline():
        res = fn(gm, ctx)
        gm = res.gm
        if res.modified:
            gm.graph.lint()
        notes.extend(f"{name}: {n}" for n in res.notes)
    gm.recompile()
    return gm, notes
