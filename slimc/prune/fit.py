"""Land a per-family sparsity distribution on a budget.

An automatic pruner chooses *how* the sparsity is distributed over families (a vector
``d``, one weight per family); :class:`Sizer` finds *how much*: the global scale ``s`` at
which per-family counts ``floor(n_f · min(1, s · d_f))`` (capped so every family keeps a
unit) cost the budget, by bisection against the exact cost of the plan (or the estimated
latency), then gives units back one at a time until the cost is within the tolerance of
the target. The cost of a result depends only on how many units each family loses (the
units of a family have one shape), so costs are memoised by those counts; which units go
is the criterion's choice at the pruner's current weights.

Planning a result takes a tenth of a second, and a search prices hundreds of counts. A
meter of params or FLOPs is a function of the kept widths of the parameters, and a unit of
a family removes the same number of indices from the same parameter dims whatever the
other families lose, so the widths are linear in the counts: one plan per family (one
unit removed) gives the coefficients, and every count is priced from them. The result of
:meth:`Sizer.fit` is planned for real and its cost checked against the estimate; where
they differ (a plan that keeps a rectangle) the sizer drops the estimate and fits again
with a plan per count. Latency is priced the same way, through the latency meter's
calibrated estimate (FLOPs of the plan mapped to time); only results are timed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from slimc.errors import BudgetError
from slimc.prune.budget import TOLERANCE, Budget, Meter
from slimc.prune.pruner import Pruned, Pruner

BISECTIONS = 24
REFINE_STEPS = 24
MIN_WEIGHT = 0.02  # a family's weight never reaches 0: the scale could not move it


@dataclass
class Fit:
    counts: np.ndarray  # units removed per family index
    cost: float  # fraction of the dense cost
    pruned: Pruned


class Sizer:
    """Per-family unit counts → a pruning result and its cost relative to the dense model."""

    def __init__(self, pruner: Pruner, meter: Meter, previous: Pruned | None = None):
        self.pruner, self.meter = pruner, meter
        self.space = pruner.space
        self.sizes = np.array([len(f) for f in self.space.families], dtype=np.int64)
        self.caps = np.zeros(len(self.sizes), dtype=np.int64)  # families the config leaves out stay whole
        for fi, t in pruner.targets.items():
            n = int(self.sizes[fi])
            self.caps[fi] = max(0, min(int(np.floor(n * t.max_sparsity + 1e-9)), n - pruner.selection.min_keep))
        self.previous = previous
        self.floor = self.counts_of(previous) if previous is not None else np.zeros_like(self.sizes)
        self._costs: dict[tuple, float] = {}
        self._scores: np.ndarray | None = None
        self._widths: tuple[list, np.ndarray, np.ndarray] | None = None  # the estimate's coefficients
        self.estimated = meter.weights is not None and pruner.selection.round_to == 1 and not pruner.selection.uniform

    def keep(self, pruned: Pruned) -> None:
        """From now on the units of ``pruned`` stay pruned (costs stay valid: they depend on counts)."""
        self.previous = pruned
        self.floor = np.maximum(self.floor, self.counts_of(pruned))

    def release(self) -> None:
        """Units pruned before may come back (an iterative search that overshot a coarse budget)."""
        self.previous = None
        self.floor = np.zeros_like(self.sizes)

    def land(self, distribution: Mapping[str, float] | np.ndarray, budget: Budget,
             scores: np.ndarray | None = None) -> Fit:
        """:meth:`fit` on the budget; where the units kept pruned make it miss the tolerance
        (coarse families: one unit is more than the tolerance), fit again without them."""
        fit = self.fit(distribution, budget.fraction, scores=scores)
        if not budget.met(fit.cost) and self.floor.any():
            self.release()
            fit = self.fit(distribution, budget.fraction, scores=scores)
        return fit

    @property
    def prunable(self) -> list[int]:
        return [int(fi) for fi in np.flatnonzero(self.caps > self.floor)]

    def counts_of(self, pruned: Pruned) -> np.ndarray:
        return np.bincount(self.space.family_of_unit[pruned.units], minlength=len(self.sizes)).astype(np.int64)

    def distribution(self, counts: np.ndarray) -> np.ndarray:
        """The distribution that ``counts`` realise, every family the config prunes given at
        least :data:`MIN_WEIGHT` (to land it on another budget, every family may move)."""
        return np.maximum(counts / self.sizes.clip(1), MIN_WEIGHT * self.uniform())

    def scaled(self, distribution: np.ndarray, scale: float) -> np.ndarray:
        """Counts at ``scale``: ``floor(n · min(1, scale · d))``, within [previous, cap]."""
        k = np.floor(self.sizes * np.minimum(1.0, scale * distribution) + 1e-9).astype(np.int64)
        return np.maximum(np.minimum(k, self.caps), self.floor)

    def vector(self, distribution: Mapping[str, float] | np.ndarray) -> np.ndarray:
        if isinstance(distribution, np.ndarray):
            return distribution.astype(np.float64)
        by_name = {f.name: f.index for f in self.space.families}
        d = np.zeros(len(self.sizes))
        for name, v in distribution.items():
            d[by_name[name]] = float(v)
        return d

    def weights(self, distribution: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """The distribution's weights of the families that may lose more units (every family
        the config prunes alike where it weighs none of them)."""
        d = np.where(self.caps > self.floor, np.clip(self.vector(distribution), 0.0, None), 0.0)
        return d if (d > 0).any() else self.uniform()

    def top(self, distribution: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """The counts at the distribution's largest scale: every family it weighs at its limit."""
        d = self.weights(distribution)
        return self.scaled(d, 1.0 / d[d > 0].min())

    def uniform(self) -> np.ndarray:
        """Every family the config prunes, at the same sparsity."""
        return (self.caps > 0).astype(np.float64)

    def prune(self, counts: np.ndarray, scores: np.ndarray | None = None) -> Pruned:
        sparsities = {f.name: int(counts[f.index]) / len(f) for f in self.space.families if counts[f.index] > 0}
        if scores is None:
            scores = self._unit_scores()
        return self.pruner.prune(sparsities=sparsities, scores=scores, previous=self.previous)

    def cost(self, counts: np.ndarray) -> float:
        key = tuple(counts.tolist())
        if key not in self._costs:
            if self.estimated and self._linear() is not None:
                self._costs[key] = self.estimate(counts)
            else:
                pruned = self.prune(counts)
                self._costs[key] = self._costs[tuple(self.counts_of(pruned).tolist())] = self.meter.relative(pruned)
        return self._costs[key]

    def _linear(self) -> tuple[list, np.ndarray, np.ndarray] | None:
        """(param dims, their sizes, indices one unit of each family removes from each), planned
        once; None (and no more estimates) where a family's unit does not remove one unit."""
        if self._widths is None:
            dims = [(fqn, d) for fqn, shape in self.meter.shapes.items() for d in range(len(shape))]
            size = np.array([self.meter.shapes[f][d] for f, d in dims], dtype=np.float64)
            per_unit = np.zeros((len(self.sizes), len(dims)))
            for fi in np.flatnonzero(self.caps > 0).tolist():
                one = np.zeros_like(self.sizes)
                one[fi] = 1
                pruned = self.pruner.prune(sparsities={self.space.families[fi].name: 1 / self.sizes[fi]},
                                           scores=self._unit_scores())
                if not np.array_equal(self.counts_of(pruned), one):
                    self.estimated = False
                    return None
                per_unit[fi] = [size[i] - pruned.plan.new_size(("p", f, d)) for i, (f, d) in enumerate(dims)]
            self._widths = (dims, size, per_unit)
        return self._widths

    def estimate(self, counts: np.ndarray) -> float:
        dims, size, per_unit = self._linear()
        kept = dict(zip(dims, size - counts.astype(np.float64) @ per_unit))
        return self.meter.of_widths(lambda fqn, d: kept[(fqn, d)]) / self.meter.dense

    def _unit_scores(self) -> np.ndarray:
        if self._scores is None:
            self._scores = self.pruner.scores()
        return self._scores

    def fit(self, distribution: Mapping[str, float] | np.ndarray, target: float, *, refine: bool = True,
            scores: np.ndarray | None = None) -> Fit:
        """The counts whose cost is closest to ``target`` (a fraction of the dense cost) along
        the distribution's scale; ``refine``: then give units back until within tolerance."""
        d = self.weights(distribution)
        lo, hi = 0.0, 1.0 / d[d > 0].min()
        top = self.scaled(d, hi)  # (what :meth:`top` gives, its weights and scale at hand)
        if self.cost(top) > target:
            raise BudgetError(
                f"the budget cannot be met: with every prunable layer at its limit the slim model costs "
                f"{self.cost(top):.3g} of the dense model's {self.meter.kind} (target {target:.3g}); "
                "allow more layers in the config list, or ask for a larger fraction")
        best = top
        if self.cost(self.scaled(d, lo)) > target:
            for _ in range(BISECTIONS):
                mid = 0.5 * (lo + hi)
                k = self.scaled(d, mid)
                if self.cost(k) <= target:
                    hi, best = mid, k
                else:
                    lo = mid
                if (best - self.scaled(d, lo)).sum() <= 1 or abs(self.cost(best) / target - 1) <= TOLERANCE / 4:
                    break
        else:
            best = self.scaled(d, lo)
        if refine:
            best = self.give_back(best, target)
        pruned = self.prune(best, scores)
        if self.estimated:
            exact = self.meter.relative(pruned)
            if abs(exact - self.cost(best)) > 1e-9 * max(exact, 1e-12):  # not additive: plan every count
                self.estimated, self._costs = False, {}
                return self.fit(distribution, target, refine=refine, scores=scores)
        return Fit(best, self.cost(best), pruned)

    def give_back(self, counts: np.ndarray, target: float) -> np.ndarray:
        """Restore single units while the cost stays at most the target's upper tolerance,
        each time the one that brings the cost closest to the target."""
        counts = counts.copy()
        for _ in range(REFINE_STEPS):
            if self.cost(counts) >= target * (1 - TOLERANCE / 2):
                break
            best, best_cost = None, self.cost(counts)
            for fi in np.flatnonzero(counts > self.floor).tolist():
                k = counts.copy()
                k[fi] -= 1
                c = self.cost(k)
                if best_cost < c <= target * (1 + TOLERANCE / 2):
                    best, best_cost = k, c
            if best is None:
                break
            counts = best
        return counts


def fit_budget(pruner: Pruner, budget: Budget | str, meter: Meter, distribution: Mapping[str, float] | None = None,
               previous: Pruned | None = None) -> Fit:
    """``pruner``'s units at ``distribution`` (default: every configured family alike),
    scaled to ``budget``."""
    sizer = Sizer(pruner, meter, previous)
    b = Budget.parse(budget)
    return sizer.fit(sizer.uniform() if distribution is None else distribution, b.fraction)
