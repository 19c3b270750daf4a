"""Whole experts of mixture-of-experts layers as pruning units (opt-in; default none).

``Pruner(..., experts=0.25)`` (``slimc prune --experts 0.25``) masks a quarter of the
experts of every MoE layer — the same number in each, so the model's config (one
``num_local_experts``) still describes the slim model — with their router rows: index e of
every stacked expert parameter and row e of the router's weight (and bias). Which experts go:

* ``l1`` (default): the lowest L1 norm of the expert's weights (every stacked slice);
* ``frequency``: the experts the router picks least often on the calibration batches
  (``calibration_batches()`` in model.py, or ``data=``), ties broken by L1.

Such masks say that those experts do not exist (router logit −∞: :mod:`slimc.propagate.experts`),
and ``slimc compile`` removes them exactly.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from slimc.errors import ConfigError
from slimc.prune.data import batch_failed
from slimc.prune.emit import removal_mask
from slimc.propagate.experts import expert_routes
from slimc.shape_rules import ExpertRoute

EXPERT_CRITERIA = ("l1", "frequency")


def check_args(fraction: float, criterion: str) -> None:
    """One line where ``fraction`` or ``criterion`` is not usable (before the model is traced)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"experts={fraction}: give the fraction of each MoE layer's experts to remove, "
                          "between 0 and 1 (e.g. 0.25)")
    if criterion not in EXPERT_CRITERIA:
        raise ConfigError(f"unknown expert criterion '{criterion}': use {' or '.join(EXPERT_CRITERIA)}")


def droppable(space, fraction: float) -> list[ExpertRoute]:
    """The MoE layers whose experts can go; a one-line error where none can."""
    routes = expert_routes(space.dg)
    found = [r for r in routes if r.logits is not None]
    if not found:
        why = f": {routes[0].why_not}" if routes else " (no transformers experts module)"
        raise ConfigError(f"experts={fraction}: the model has no mixture-of-experts layer whose experts can "
                          f"be removed{why}")
    return found


def l1_scores(space, routes: list[ExpertRoute], model) -> dict[str, np.ndarray]:
    """Per MoE layer, per expert: the L1 norm of its slices of every stacked parameter."""
    params = space.params(model)
    out = {}
    for r in routes:
        out[r.experts] = sum(params[s].abs().flatten(1).sum(1).double().numpy() for s in r.stacked)
    return out


def routing_counts(space, routes: list[ExpertRoute], model, calibration) -> dict[str, np.ndarray]:
    """Per MoE layer, per expert: how often the router picks it on the calibration batches
    (read off the top-k indices the experts module is called with)."""
    from slimc.prune.activations import _sync
    from slimc.prune.criteria import ScoreContext

    gm = _sync(space, ScoreContext(model, np.random.default_rng(0)))
    counts = {r.experts: np.zeros(space.dg.size[("p", r.stacked[0], 0)]) for r in routes}

    def hook(path: str):
        def count(_module, args, kwargs):
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            counts[path] += np.bincount(idx.reshape(-1).cpu().numpy(), minlength=len(counts[path]))
        return count

    handles = [gm.get_submodule(r.experts).register_forward_pre_hook(hook(r.experts), with_kwargs=True)
               for r in routes]
    codegen = gm.graph._codegen
    try:
        for batch in calibration.batches("experts: routing frequency"):
            try:
                with torch.no_grad():
                    gm(*codegen.process_inputs(*batch.inputs))
            except Exception as e:
                raise batch_failed(e) from e
    finally:
        for h in handles:
            h.remove()
    return counts


def choose(routes: list[ExpertRoute], scores: dict[str, np.ndarray], tie: dict[str, np.ndarray],
           fraction: float) -> dict[str, np.ndarray]:
    """Per MoE layer, the ⌊fraction · E⌋ experts of lowest score (``tie`` breaks ties): as many
    in every layer of the same E; at most E − top-k (the router still picks its k)."""
    out = {}
    for r in routes:
        s = scores[r.experts]
        n = min(math.floor(fraction * len(s) + 1e-9), len(s) - r.top_k)
        if n <= 0:
            continue
        order = np.lexsort((tie[r.experts], s))  # by score, then by the tie-breaker
        out[r.experts] = np.sort(order[:n])
    return out


def with_expert_masks(masks: dict[str, torch.Tensor], space, routes: list[ExpertRoute],
                      chosen: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``masks`` and the chosen experts' slices zeroed: index e of every stacked parameter,
    row e of the router's weight and bias (compact masks along dim 0, multiplied in)."""
    out = dict(masks)
    for r in routes:
        gone = chosen.get(r.experts)
        if gone is None:
            continue
        for fqn in (*r.stacked, *r.router):
            m = removal_mask(space.gm_params[fqn].shape, {0: gone})
            out[fqn] = out[fqn] * m if fqn in out else m
    return out


def expert_note(chosen: dict[str, np.ndarray], space) -> str:
    sizes = {space.dg.size[("p", r.stacked[0], 0)] for r in expert_routes(space.dg) if r.experts in chosen}
    per = sorted({len(v) for v in chosen.values()})
    return (f"{'/'.join(map(str, per))} of {'/'.join(map(str, sorted(sizes)))} experts masked whole in each of "
            f"{len(chosen)} MoE layer(s), with their router rows: they do not exist (router logit −inf), and "
            "slimc compile removes them")


__all__ = ["EXPERT_CRITERIA", "check_args", "choose", "droppable", "expert_note", "l1_scores", "routing_counts",
           "with_expert_masks"]
