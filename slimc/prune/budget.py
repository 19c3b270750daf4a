"""Budgets of the automatic pruners: params, FLOPs or *measured* latency of the slim model,
as a fraction of the dense model's (``params=0.3``, ``flops=0.5``, ``latency=0.5``).

A :class:`Meter` tells what a :class:`~slimc.prune.pruner.Pruned` result costs:

* params — counted from the compiler's removal plan (:meth:`Pruned.params_after`);
* FLOPs — from the plan too: every conv / linear costs its dense FLOPs times the fraction
  of its weight the plan keeps (exact for them: their FLOPs are proportional to their
  weight's size at a fixed input); a model with FLOPs outside weight layers (attention
  products) is compiled and counted instead;
* latency — the masks are compiled (``verify=False``) and the physically slim module is
  timed with warm-up, the fastest of at least 20 calls (:mod:`slimc.bench.timing`), at one
  thread: on a shared machine the median moves with the neighbours' load by tens of
  percent, the minimum by a few; ``timer=`` injects another clock (tests use a
  deterministic one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from slimc.errors import ConfigError
from slimc.prune.pruner import Pruned
from slimc.prune.space import PruneSpace

BUDGET_KINDS = ("params", "flops", "latency")
#: a budget is met when the slim model's cost is within this fraction of the target
TOLERANCE = 0.05

Timer = Callable[[nn.Module, tuple], float]  # (module, inputs) → milliseconds


@dataclass(frozen=True)
class Budget:
    kind: str  # params | flops | latency
    fraction: float  # of the dense model's

    @classmethod
    def parse(cls, text: "str | Budget") -> "Budget":
        """``"flops=0.5"`` → Budget("flops", 0.5); one line naming the fix when it is not one."""
        if isinstance(text, Budget):
            return text
        kind, sep, value = str(text).partition("=")
        kind = kind.strip()
        hint = "write KIND=FRACTION of the dense model, e.g. params=0.3, flops=0.5 or latency=0.5"
        if not sep or kind not in BUDGET_KINDS:
            raise ConfigError(f"budget '{text}': {hint}")
        try:
            fraction = float(value)
        except ValueError:
            raise ConfigError(f"budget '{text}': '{value.strip()}' is not a number; {hint}") from None
        if not 0 < fraction < 1:
            raise ConfigError(f"budget '{text}': the fraction must be in (0, 1), got {fraction:g}")
        return cls(kind, fraction)

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"

    def met(self, achieved: float) -> bool:
        """Whether ``achieved`` (a fraction of the dense cost) is within :data:`TOLERANCE` of the target."""
        return abs(achieved / self.fraction - 1.0) <= TOLERANCE


class Meter:
    """The cost of a pruning result, in the budget's unit; ``dense`` is the dense model's.

    A meter whose cost is ``fixed + Σ weight[fqn] · Π_d kept(fqn, d) / size(fqn, d)`` over
    parameters (params, FLOPs of weight layers) sets ``weights``: :meth:`of_widths` then
    prices any widths without a plan (what :class:`~slimc.prune.fit.Sizer` estimates with)."""

    kind = ""
    dense: float = 1.0
    fixed: float = 0.0
    weights: dict[str, float] | None = None  # None: only a compiled model tells the cost

    def __call__(self, pruned: Pruned) -> float:
        return self.of_widths(lambda fqn, d: pruned.plan.new_size(("p", fqn, d)))

    def of_widths(self, width: Callable[[str, int], float]) -> float:
        """The cost at the kept width ``width(fqn, dim)`` of every parameter dim."""
        shapes = self.shapes
        return float(self.fixed) + sum(w * math.prod(width(fqn, d) / n for d, n in enumerate(shapes[fqn]))
                                       for fqn, w in self.weights.items())

    def relative(self, pruned: Pruned) -> float:
        return self(pruned) / self.dense

    def refresh(self) -> None:
        """Measure the dense model again (a measured meter; counted ones need not)."""


class ParamsMeter(Meter):
    kind = "params"

    def __init__(self, space: PruneSpace):
        self.shapes = {fqn: tuple(p.shape) for fqn, p in space.gm.named_parameters()}
        self.weights = {fqn: float(math.prod(s)) for fqn, s in self.shapes.items()}
        self.dense = sum(self.weights.values())


def weight_flops(model: nn.Module, inputs: tuple) -> tuple[dict[str, int], int]:
    """FLOPs per weight (``{"features.0.weight": flops}``) of the layers that own them, and
    the model's total FLOPs; both at ``inputs``."""
    from slimc.flops import layer_costs
    from slimc.report import count_flops

    per_layer = layer_costs(model, inputs)
    owned = {f"{name}.weight": c["flops"] for name, c in per_layer.items()
             if c["flops"] and isinstance(getattr(model.get_submodule(name), "weight", None), torch.Tensor)}
    return owned, int(count_flops(model, inputs) or 0)


class FlopsMeter(Meter):
    kind = "flops"

    def __init__(self, space: PruneSpace, model: nn.Module, inputs: tuple):
        self.space, self.model, self.inputs = space, model, inputs
        self.owned, total = weight_flops(model, inputs)
        self.dense = float(total)
        self.fixed = total - sum(self.owned.values())  # FLOPs no weight layer owns
        if self.fixed <= 0.001 * max(total, 1) and all(k in space.gm_params for k in self.owned):
            self.weights = {k: float(v) for k, v in self.owned.items()}  # exact from the plan
            self.shapes = {k: tuple(space.gm_params[k].shape) for k in self.owned}

    def __call__(self, pruned: Pruned) -> float:
        if self.weights is None:
            return float(compiled_flops(self.model, pruned.masks, self.inputs))
        return super().__call__(pruned)


def compiled_flops(model: nn.Module, masks: dict, inputs: tuple) -> int:
    """FLOPs of the slim model ``slimc.compile`` builds from ``masks`` (not verified)."""
    import slimc

    return int(slimc.compile(model, masks, inputs, verify=False, user_model=False).report["flops"]["after"] or 0)


def best_latency(threads: int = 1, warmup: int = 5, min_time_s: float = 0.2, min_repeats: int = 20) -> Timer:
    """A timer: warm-up calls, then the fastest of the timed calls (``slimc.bench.timing``), in ms."""
    def timer(module: nn.Module, inputs: tuple) -> float:
        from slimc.bench.timing import time_torch

        return time_torch(module, inputs, warmup=warmup, min_time_s=min_time_s, min_repeats=min_repeats,
                          max_repeats=max(min_repeats, 200), threads=threads).min_ms

    return timer


class LatencyMeter(Meter):
    """Milliseconds of the physically slim module (compiled without verification) at ``inputs``."""

    kind = "latency"

    def __init__(self, space: PruneSpace, model: nn.Module, inputs: tuple, timer: Timer | None = None):
        self.model, self.inputs, self.gm = model, inputs, space.gm
        self.timer = timer or best_latency()
        self.refresh()

    def refresh(self) -> None:
        self.dense = float(self.timer(self.gm, self.inputs))

    def slim_module(self, masks: dict) -> nn.Module:
        import slimc

        return slimc.compile(self.model, masks, self.inputs, verify=False, user_model=False).module

    def __call__(self, pruned: Pruned) -> float:
        return float(self.timer(self.slim_module(pruned.masks), self.inputs))

    def relative(self, pruned: Pruned) -> float:
        """The slim module's time over the dense module's, timed back to back (the load of a
        shared machine drifts between a search's first timing and its last)."""
        slim = self(pruned)
        self.refresh()
        return slim / self.dense


def meter_for(budget: Budget, space: PruneSpace, model: nn.Module, inputs: Any, *,
              timer: Timer | None = None, latency_inputs: Any = None) -> Meter:
    """The meter of ``budget``'s kind; latency is timed at ``latency_inputs`` (default: the
    example inputs)."""
    from slimc.inputs import bind

    bound = bind(model, inputs)
    if budget.kind == "params":
        return ParamsMeter(space)
    if budget.kind == "flops":
        return FlopsMeter(space, model, bound)
    return LatencyMeter(space, model, bind(model, latency_inputs) if latency_inputs is not None else bound, timer)
