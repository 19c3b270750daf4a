"""AutoCompress (Liu et al. 2020, *AutoCompress: An Automatic DNN Structured Pruning Framework*).

In ``rounds`` steps the budget tightens geometrically from the dense model to the target
(NNI's ``sparsity_per_iteration``); each step runs Simulated Annealing for the per-family
distribution (:func:`~slimc.prune.annealing.anneal`, at the current weights, evaluated
with the user's ``evaluate``), then ADMM-regularised training towards that step's counts
(:func:`~slimc.prune.admm.admm_prune`, with the user's ``finetune``), then the hard prune,
whose units stay pruned in the next steps. The last step lands on the budget exactly.
"""
from __future__ import annotations

from slimc.prune.admm import admm_prune
from slimc.prune.annealing import anneal
from slimc.prune.auto import AutoPruner, auto_pruner
from slimc.prune.pruner import Pruned


@auto_pruner("autocompress")
class AutoCompress(AutoPruner):
    label = "Simulated Annealing for the per-family sparsities, ADMM-regularised training, hard prune; in rounds"
    paper = "Liu et al. 2020, AutoCompress"
    needs = ("evaluate", "finetune")
    trains = True

    def __init__(self, *args, rounds: int = 2, sa_iterations: int = 8, admm_rounds: int = 2, rho: float = 0.01,
                 start_temperature: float = 0.05, cool_down_rate: float = 0.8, perturbation: float = 0.35, **kw):
        super().__init__(*args, **kw)
        self.rounds = max(1, int(rounds))
        self.admm = dict(rounds=admm_rounds, rho=rho)
        self.schedule = dict(iterations=sa_iterations, start_temperature=start_temperature,
                             cool_down_rate=cool_down_rate, perturbation=perturbation)

    def search(self) -> Pruned:
        sizer = self.sizer()
        final = self.budget.fraction
        pruned = None
        for r in range(1, self.rounds + 1):
            target = final ** (r / self.rounds)
            d = anneal(self, sizer, target, **self.schedule)
            fit = sizer.fit(d, target)
            pruned = admm_prune(self, sizer, fit.counts, **self.admm)
            self.log(round=r, target=target, cost=sizer.cost(sizer.counts_of(pruned)))
            if r < self.rounds:
                sizer.keep(pruned)
                self.callbacks.train(self.model, self.steps, pruned.masks)
        # the trained weights may rank other units lowest: land the final distribution exactly
        return sizer.land(sizer.distribution(sizer.counts_of(pruned)), self.budget, scores=self.pruner.scores()).pruned
