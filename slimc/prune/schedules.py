"""Schedules around any pruner, driven by the user's own training loop::

    agp = AGP(Pruner(model, x, "l1", ratio=0.5), steps=10)
    for epoch in range(epochs):
        for x, y in loader:
            ...; optimizer.step(); agp.apply()      # masked weights stay zero
        agp.step()                                  # next sparsity; masks applied in place
    torch.save(agp.masks(), "masks.pth")            # complete masks: slimc compile builds this model

Each step prunes at the schedule's sparsity (every family's target transformed), keeps
the units pruned at earlier steps pruned, and zeroes the masked weights of the model.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from slimc.masks import MaskSet
from slimc.prune.pruner import Pruned


class Schedule:
    def __init__(self, pruner: Any, model: nn.Module | None = None):
        self.pruner = pruner
        self.model = model if model is not None else pruner.model
        self.current: Pruned | None = None
        self.t = 0

    def fraction(self, target: float, t: int) -> float:
        """The sparsity of a family whose final target is ``target``, at step ``t``."""
        raise NotImplementedError

    @property
    def steps(self) -> int:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self.t >= self.steps

    def step(self) -> Pruned:
        """Advance one step: prune at the next sparsity and zero the masked weights."""
        if not self.done:
            self.t += 1
        t = self.t
        self.current = self.pruner.prune(transform=lambda s: self.fraction(s, t), previous=self.current)
        self.after_prune()
        self.apply()
        return self.current

    def after_prune(self) -> None:
        pass

    def masks(self) -> dict[str, torch.Tensor]:
        """The complete masks of the last step ({} before the first)."""
        return dict(self.current.masks) if self.current is not None else {}

    def apply(self) -> None:
        """Zero the masked weights in place (call after ``optimizer.step()``)."""
        if self.current is not None:
            MaskSet(self.current.masks).apply(self.model)


class AGP(Schedule):
    """Automated gradual pruning (Zhu & Gupta 2017): over ``steps`` steps the sparsity grows
    from ``initial`` to the target ``s_f`` as ``s_f + (s_i − s_f)(1 − t/n)³``."""

    def __init__(self, pruner: Any, steps: int, initial: float = 0.0, model: nn.Module | None = None):
        if steps < 1:
            raise ValueError("AGP needs steps >= 1")
        super().__init__(pruner, model)
        self.n = steps
        self.initial = initial

    @property
    def steps(self) -> int:
        return self.n

    def fraction(self, target: float, t: int) -> float:
        s_i = min(self.initial, target)
        return target + (s_i - target) * (1.0 - min(t, self.n) / self.n) ** 3


class LotteryTicket(Schedule):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019): ``rounds`` rounds,
    each removing ``1 − (1 − P)^(1/n)`` of what is left (so ``P`` after n rounds), after which
    the surviving weights go back to their initial values. Train between ``step()`` calls."""

    def __init__(self, pruner: Any, rounds: int, model: nn.Module | None = None,
                 initial_state: dict[str, torch.Tensor] | None = None):
        if rounds < 1:
            raise ValueError("LotteryTicket needs rounds >= 1")
        super().__init__(pruner, model)
        self.n = rounds
        self.initial_state = copy.deepcopy(initial_state if initial_state is not None else self.model.state_dict())

    @property
    def steps(self) -> int:
        return self.n

    def rate(self, target: float) -> float:
        """The fraction of the remaining units each round removes."""
        return 1.0 - (1.0 - target) ** (1.0 / self.n)

    def fraction(self, target: float, t: int) -> float:
        return 1.0 - (1.0 - self.rate(target)) ** min(t, self.n)

    def after_prune(self) -> None:
        self.model.load_state_dict(self.initial_state)  # rewind; apply() then re-zeroes the pruned
