"""NetAdapt (Yang et al. 2018, *NetAdapt: Platform-Aware Neural Network Adaptation*).

Per iteration the resource target drops by one step (``(1 − budget) / iterations`` of the
dense model's cost); for every family, the fewest more units whose removal alone meets
the step are pruned (the lowest by the criterion), the candidate is fine-tuned for a few
steps (``finetune(model, steps)``) and evaluated (``evaluate(model)``); the best candidate
is kept, fine-tuned weights included. The resource is the budget's: params or FLOPs of the
plan, or latency, estimated as NetAdapt's lookup tables estimate it — from the plan's
FLOPs, calibrated on the measured slim model — and measured on the result. One family
shrinks per iteration, so high compression takes many iterations; where they stop short
of the budget (the classic finding: NetAdapt cannot reach high compression in its
iterations) the distribution reached — every family given at least a small weight — is
landed on the budget by a bisection on its global scale.
"""
from __future__ import annotations

import copy

import numpy as np

from slimc.prune.auto import AutoPruner, auto_pruner
from slimc.prune.budget import TOLERANCE
from slimc.prune.fit import Sizer
from slimc.prune.pruner import Pruned


@auto_pruner("netadapt")
class NetAdapt(AutoPruner):
    label = "per iteration, shrink the family that loses least for one resource step; short fine-tune"
    paper = "Yang et al. 2018, NetAdapt"
    needs = ("evaluate", "finetune")
    trains = True

    def __init__(self, *args, iterations: int = 8, **kw):
        super().__init__(*args, **kw)
        self.iterations = max(1, int(iterations))

    def fewest(self, sizer: Sizer, counts: np.ndarray, fi: int, goal: float) -> int:
        """The fewest units family ``fi`` must lose (others as they are) to cost at most ``goal``
        (within half the tolerance); its limit when no number does."""
        goal *= 1 + TOLERANCE / 2
        lo, hi = int(counts[fi]), int(sizer.caps[fi])
        trial = counts.copy()
        trial[fi] = hi
        if sizer.cost(trial) > goal:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            trial[fi] = mid
            if sizer.cost(trial) <= goal:
                hi = mid
            else:
                lo = mid
        return hi

    def search(self) -> Pruned:
        sizer = self.sizer()
        target = self.budget.fraction
        step = (1.0 - target) / self.iterations
        counts = sizer.floor.copy()
        for it in range(self.iterations):
            cost = sizer.cost(counts)
            if cost <= target * (1 + TOLERANCE / 2):
                break
            goal = max(target, cost - step)
            scores = self.pruner.scores()
            best = None
            for fi in [f for f in sizer.prunable if counts[f] < sizer.caps[f]]:
                cand = counts.copy()
                cand[fi] = self.fewest(sizer, counts, fi, goal)
                pruned = sizer.prune(cand, scores)
                trial = self.callbacks.train(copy.deepcopy(self.model), self.steps, pruned.masks)
                score = self.callbacks.score(trial)
                if best is None or score > best[0]:
                    best = (score, cand, trial, pruned, fi)
            if best is None:
                break
            score, counts, trial, pruned, fi = best
            self.model.load_state_dict(trial.state_dict())
            sizer.keep(pruned)
            self.log(iteration=it, family=self.pruner.families[fi].name, cost=sizer.cost(counts), score=score)
        return sizer.land(sizer.distribution(counts), self.budget, scores=self.pruner.scores()).pruned
