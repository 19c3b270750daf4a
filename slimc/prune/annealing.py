"""Simulated Annealing over per-family sparsities (the search of Liu et al. 2020, AutoCompress,
as NNI's SimulatedAnnealingPruner runs it).

The state is a distribution — one weight per family — landed on the budget by its global
scale (:class:`~slimc.prune.fit.Sizer`), so every state the search visits meets the
budget. Each iteration perturbs the weights by up to ``perturbation × T / T₀``, prunes at
the perturbed distribution (the criterion chooses the units, at the current weights),
evaluates the masked model with the user's ``evaluate(model)``, and moves there when it is
better, or with probability ``exp(Δ / T)`` when it is worse; ``T`` starts at
``start_temperature`` × |dense score| and cools by ``cool_down_rate`` per iteration. The
best state seen is landed on the budget exactly at the end. Weights are not trained.
"""
from __future__ import annotations

import math

import numpy as np

from slimc.prune.auto import AutoPruner, auto_pruner
from slimc.prune.fit import MIN_WEIGHT, Sizer
from slimc.prune.pruner import Pruned


def anneal(auto: AutoPruner, sizer: Sizer, target: float, *, iterations: int, start_temperature: float,
           cool_down_rate: float, perturbation: float) -> np.ndarray:
    """The best distribution (per family index) found under ``target``."""
    scores = auto.pruner.scores()
    prunable = sizer.uniform() > 0
    d = prunable.astype(np.float64)
    here = auto.score_masked(sizer.fit(d, target, refine=False, scores=scores).pruned)
    best_d, best = d, here
    t0 = max(start_temperature * abs(auto.callbacks.score(auto.model)), 1e-6)
    temperature = t0
    for it in range(iterations):
        magnitude = perturbation * temperature / t0
        d_new = np.where(prunable, np.clip(d + auto.rng.uniform(-magnitude, magnitude, d.shape), MIN_WEIGHT, 1.0), 0.0)
        fit = sizer.fit(d_new, target, refine=False, scores=scores)
        score = auto.score_masked(fit.pruned)
        delta = score - here
        accepted = delta > 0 or auto.rng.random() < math.exp(delta / temperature)
        if accepted:
            d, here = d_new, score
        if score > best:
            best_d, best = d_new, score
        auto.log(iteration=it, temperature=temperature, cost=fit.cost, score=score, accepted=bool(accepted))
        temperature *= cool_down_rate
    return best_d


@auto_pruner("sa")
class SimulatedAnnealing(AutoPruner):
    label = "perturb per-family sparsities under the budget; keep what evaluates best"
    paper = "Kirkpatrick et al. 1983; as the search of Liu et al. 2020 (AutoCompress)"
    needs = ("evaluate",)

    def __init__(self, *args, iterations: int = 16, start_temperature: float = 0.05, cool_down_rate: float = 0.85,
                 perturbation: float = 0.35, **kw):
        super().__init__(*args, **kw)
        self.schedule = dict(iterations=iterations, start_temperature=start_temperature,
                             cool_down_rate=cool_down_rate, perturbation=perturbation)

    def search(self) -> Pruned:
        sizer = self.sizer()
        d = anneal(self, sizer, self.budget.fraction, **self.schedule)
        return sizer.fit(d, self.budget.fraction).pruned
