"""ADMM-regularised structured pruning (Zhang et al. 2018, *A Systematic DNN Weight Pruning
Framework using ADMM*; the structured form of NNI's ADMMPruner).

The sparsity per family is fixed (the budget landed on a distribution; uniform unless one
is given). ADMM splits the weights W from a copy Z that satisfies the constraint, with a
scaled dual U, for ``rounds`` rounds:

* W-step — ``finetune(model, steps)``, the user's own loop, with ``ρ (W − Z + U)`` added to
  every gradient of the pruned families' parameters (the gradient of ``ρ/2 ‖W − Z + U‖²``:
  a hook, so the user's loss and optimizer stay as they are);
* Z-step — Z = the projection of W + U on the constraint: the units the criterion ranks
  lowest *at W + U* zeroed (complete masks), the rest kept;
* U-step — U ← U + W − Z; ρ grows by ``rho_growth``.

W is pulled towards a model without the units it will lose; the final hard prune removes
them at the trained weights.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch

from slimc.prune.auto import AutoPruner, auto_pruner
from slimc.prune.fit import Sizer
from slimc.prune.pruner import Pruned


def _pull(rho: float, w: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda g: g + rho * (w.detach() - z + u)


def admm_prune(auto: AutoPruner, sizer: Sizer, counts: np.ndarray, *, rounds: int, rho: float,
               rho_growth: float = 2.0) -> Pruned:
    """``rounds`` of ADMM towards ``counts`` units per family, then the hard prune."""
    model, pruner = auto.model, auto.pruner
    params = dict(model.named_parameters(remove_duplicate=False))
    pruned = sizer.prune(counts, pruner.scores())
    z = {fqn: params[fqn].detach() * m for fqn, m in pruned.masks.items() if fqn in params}
    u = {fqn: torch.zeros_like(v) for fqn, v in z.items()}
    shadow = copy.deepcopy(model)
    shadow_params = dict(shadow.named_parameters(remove_duplicate=False))
    held = sizer.previous.masks if sizer.previous is not None else None
    for r in range(rounds):
        auto.callbacks.train(model, auto.steps, held, {fqn: _pull(rho, params[fqn], z[fqn], u[fqn]) for fqn in z})
        with torch.no_grad():
            for fqn in z:
                shadow_params[fqn].copy_(params[fqn] + u[fqn])
        pruned = sizer.prune(counts, pruner.scores(shadow))
        with torch.no_grad():
            for fqn in z:
                m = pruned.masks.get(fqn)
                z[fqn] = shadow_params[fqn].detach() * (m if m is not None else 1.0)
                u[fqn] = u[fqn] + params[fqn].detach() - z[fqn]
        gap = sum(float((params[f].detach() - z[f]).norm() ** 2) for f in z) ** 0.5
        auto.log(admm_round=r, rho=rho, gap=gap)
        rho *= rho_growth
    return sizer.prune(counts, pruner.scores())


@auto_pruner("admm")
class ADMM(AutoPruner):
    label = "ADMM-regularised training towards the budget's sparsities, then the hard prune"
    paper = "Zhang et al. 2018, A Systematic DNN Weight Pruning Framework using ADMM"
    needs = ("finetune",)
    trains = True

    def __init__(self, *args, rounds: int = 4, rho: float = 0.01, rho_growth: float = 2.0,
                 distribution: dict[str, float] | None = None, **kw):
        super().__init__(*args, **kw)
        self.rounds, self.rho, self.rho_growth = rounds, rho, rho_growth
        self.distribution = distribution

    def search(self) -> Pruned:
        sizer = self.sizer()
        fit = sizer.fit(self.distribution or sizer.uniform(), self.budget.fraction)
        return admm_prune(self, sizer, fit.counts, rounds=self.rounds, rho=self.rho, rho_growth=self.rho_growth)
