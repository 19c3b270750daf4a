"""Automatic pruners: choose how much of every family to prune under a budget.

One interface over the pruner of :mod:`slimc.prune.pruner` (its units, families, config
list and criterion rank the units inside each family)::

    auto = make_auto("netadapt", model, x, "latency=0.5", evaluate=evaluate, finetune=finetune)
    result = auto.run()        # → AutoResult: complete masks, the budget, what it achieved
    slimc.compile(model, result.masks, x)    # the model holds the masks (and its trained weights)

Every automatic pruner searches a per-family sparsity distribution and lands it on the
budget with :class:`~slimc.prune.fit.Sizer`; the model passed in is the one pruned: on
return it holds the masks and, for those that train (NetAdapt, ADMM, AutoCompress), the
weights their ``finetune`` calls trained. A classic criterion with a budget
(``make_auto("l1", …, "params=0.25")``) prunes every configured family alike, scaled to it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from slimc.errors import ConfigError
from slimc.masks import MaskSet
from slimc.prune.budget import TOLERANCE, Budget, Meter, Timer, meter_for, secant
from slimc.prune.callbacks import Callbacks
from slimc.prune.criteria import registrar
from slimc.prune.data import UserData
from slimc.prune.fit import Sizer
from slimc.prune.pruner import Pruned, Pruner

AUTO_PRUNERS: dict[str, type["AutoPruner"]] = {}
#: a measured latency this close to the budget (relative) is not corrected: within the
#: tolerance, with room for the noise of the next measurement
CORRECTED = 0.6 * TOLERANCE


#: register an automatic pruner under ``name`` (``slimc prune --criterion NAME --budget …``)
auto_pruner = registrar(AUTO_PRUNERS)


@dataclass
class AutoResult:
    pruned: Pruned
    budget: Budget
    achieved: float  # the slim model's cost, a fraction of the dense model's (latency: measured)
    trained: bool  # the pruner trained the model's weights (keep them with the masks)
    history: list[dict] = field(default_factory=list)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return self.pruned.masks

    @property
    def met(self) -> bool:
        return self.budget.met(self.achieved)


class AutoPruner:
    """Subclasses set ``needs`` (callbacks), ``trains`` and :meth:`search`."""

    name = ""
    label = ""
    paper = ""
    needs: tuple[str, ...] = ()  # "evaluate", "finetune"
    trains = False

    def __init__(self, model: nn.Module, example_inputs: Any, budget: Budget | str, *, criterion: str = "l1",
                 config_list: Any = None, evaluate: Callable | None = None, finetune: Callable | None = None,
                 higher_is_better: bool | None = None, user_data: UserData | None = None, timer: Timer | None = None,
                 latency_inputs: Any = None, seed: int = 0, steps: int = 20, retries: int = 6, **pruner_kw: Any):
        self.budget = Budget.parse(budget)
        who = f"criterion '{self.name}'"
        self.callbacks = Callbacks(evaluate, finetune, higher_is_better=higher_is_better, user_data=user_data)
        self.callbacks.require(who, evaluate="evaluate" in self.needs, finetune="finetune" in self.needs)
        self.model = model
        if pruner_kw.get("round_to", "auto") == "auto":  # a budget is landed unit by unit: no rounding
            pruner_kw["round_to"] = 1
        self.pruner = Pruner(model, example_inputs, criterion, config_list, seed=seed, user_data=user_data, **pruner_kw)
        self.meter: Meter = meter_for(self.budget, self.pruner.space, model, example_inputs, timer=timer,
                                      latency_inputs=latency_inputs)
        self.steps = steps  # fine-tuning steps between search iterations
        self.retries = retries  # corrections of a measured latency that misses the budget
        self.last_sizer: Sizer | None = None
        self.rng = np.random.default_rng(seed)
        self.history: list[dict] = []

    def sizer(self, previous: Pruned | None = None) -> Sizer:
        self.last_sizer = Sizer(self.pruner, self.meter, previous)
        return self.last_sizer

    def search(self) -> Pruned:
        raise NotImplementedError

    def run(self) -> AutoResult:
        """Search, land on the budget, apply the masks to the model; the cost measured.

        A latency budget is searched on the meter's estimate (:class:`~slimc.prune.budget.LatencyMeter`),
        calibrated first on every configured family alike, at its limit and at the budget;
        then the result is measured and corrected (:meth:`correct`)."""
        tried = self.calibrate() if self.meter.measured else []
        pruned = self.search()
        achieved = self.meter.measure(pruned)
        if self.meter.measured:
            pruned, achieved = self.correct(pruned, achieved, tried)
        MaskSet(pruned.masks).apply(self.model)
        return AutoResult(pruned, self.budget, achieved, self.trains, self.history)

    def calibrate(self) -> list[tuple[float, float]]:
        """Measure every configured family alike at its limit and at the budget, and calibrate
        the meter's estimate on both; the lowest cost as (estimated, measured)."""
        sizer = self.sizer()
        top = sizer.prune(sizer.top(sizer.uniform()))
        lowest = self.meter.measure(top)
        self.meter.calibrate(top, lowest)
        at_budget = sizer.fit(sizer.uniform(), self.budget.fraction).pruned
        self.meter.calibrate(at_budget, self.meter.measure(at_budget))
        self.log(calibrated=self.meter.points)
        return [(lowest, lowest)]

    def correct(self, pruned: Pruned, achieved: float, tried: list[tuple[float, float]]) -> tuple[Pruned, float]:
        """While the measured cost is more than :data:`CORRECTED` off the budget (``retries``
        times at most), land the distribution found again on another estimated target — secant
        steps on (estimated target, measured) towards the budget, ``tried`` the points known
        before — and measure it; the result measured closest to the budget, and its cost."""
        goal = self.budget.fraction
        tried = tried + [(goal, achieved)]
        sizer = self.last_sizer
        best = (abs(achieved / goal - 1), pruned, achieved)
        d = sizer.distribution(sizer.counts_of(pruned))
        for _ in range(self.retries):
            if best[0] <= CORRECTED:
                break
            target = min(max(secant(tried, goal), sizer.cost(sizer.top(d))), 1 - TOLERANCE)
            pruned = sizer.land(d, Budget(self.budget.kind, target), scores=self.pruner.scores()).pruned
            achieved = self.meter.measure(pruned)
            tried.append((target, achieved))
            self.log(corrected=achieved, target=target)
            # latency moves in steps (whole blocks of channels) and its readings in noise: the
            # closest landing measured is the answer, not the last one
            best = min(best, (abs(achieved / goal - 1), pruned, achieved), key=lambda b: b[0])
        return best[1], best[2]

    def masks(self) -> dict[str, torch.Tensor]:
        return self.run().masks

    def score_masked(self, pruned: Pruned, model: nn.Module | None = None) -> float:
        """``evaluate`` of a copy of the model with ``pruned``'s masks applied (higher = better)."""
        trial = copy.deepcopy(model if model is not None else self.model)
        MaskSet(pruned.masks).apply(trial)
        return self.callbacks.score(trial)

    def log(self, **row: Any) -> None:
        from slimc.progress import say

        self.history.append({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()})
        say(f"{self.name or 'budget'}: " + ", ".join(f"{k} {_short(v)}" for k, v in row.items()))


def _short(v: Any) -> str:
    """A progress line's value: numbers to 4 digits, lists by their length."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return f"[{len(v)} values]"
    return str(v)


class UniformBudget(AutoPruner):
    """A classic criterion with a budget: every configured family alike, scaled to it."""

    def search(self) -> Pruned:
        sizer = self.sizer()
        return sizer.fit(sizer.uniform(), self.budget.fraction).pruned


def make_auto(name: str, model: nn.Module, example_inputs: Any, budget: Budget | str, **kw: Any) -> AutoPruner:
    """The automatic pruner ``name`` (netadapt, sa, autocompress, admm), or a classic criterion
    (l1, fpgm, taylor, …) pruning every configured family alike at ``budget``."""
    cls = auto_class(name)
    if cls is None:
        from slimc.prune.criteria import get as get_criterion

        if name == "level":
            raise ConfigError("criterion 'level' is unstructured: a budget needs a structured criterion")
        get_criterion(name)  # one line naming the choices when unknown
        return UniformBudget(model, example_inputs, budget, criterion=name, **kw)
    return cls(model, example_inputs, budget, **kw)


def auto_class(name: str) -> type[AutoPruner] | None:
    from slimc.prune import admm, annealing, autocompress, netadapt  # noqa: F401  (register them)

    return AUTO_PRUNERS.get(name)


def auto_names() -> list[str]:
    auto_class("")
    return list(AUTO_PRUNERS)
