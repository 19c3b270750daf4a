"""Budgets of the automatic pruners: params, FLOPs or *measured* latency of the slim model,
as a fraction of the dense model's (``params=0.3``, ``flops=0.5``, ``latency=0.5``).

A :class:`Meter` tells what a :class:`~slimc.prune.pruner.Pruned` result costs:

* params — counted from the compiler's removal plan (:meth:`Pruned.params_after`);
* FLOPs — from the plan too: every conv / linear costs its dense FLOPs times the fraction
  of its weight the plan keeps (exact for them: their FLOPs are proportional to their
  weight's size at a fixed input); a model with FLOPs outside weight layers (attention
  products) is compiled and counted instead;
* latency — *measured*: the masks are compiled (``verify=False``) and the physically slim
  module is timed against the dense one at one thread, interleaved (:func:`latency_ratio`:
  on a shared machine two timings taken back to back differ with the neighbours' load by
  tens of percent; alternating blocks cancel that drift). A search prices its candidates
  with a calibrated estimate instead (:class:`LatencyMeter`), and the automatic pruner
  measures what it returns and corrects it (:meth:`~slimc.prune.auto.AutoPruner.run`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from slimc.errors import ConfigError
from slimc.prune.pruner import Pruned
from slimc.prune.space import PruneSpace

BUDGET_KINDS = ("params", "flops", "latency")
#: a budget is met when the slim model's cost is within this fraction of the target
TOLERANCE = 0.05

#: rounds of an interleaved latency measurement (:func:`latency_ratio`)
ROUNDS = 16
#: seconds of calls in one block of it (at least 3 calls)
BLOCK_S = 0.02
#: points of a latency curve or secant line lie at least this far apart …
MIN_SPAN = 0.01
#: … and rises at least this steeply
MIN_SLOPE = 0.1

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
    measured = False  # timed on a clock: the costs a search prices are estimates, :meth:`measure` times

    def __call__(self, pruned: Pruned) -> float:
        return self.of_widths(lambda fqn, d: pruned.plan.new_size(("p", fqn, d)))

    def of_widths(self, width: Callable[[str, int], float]) -> float:
        """The cost at the kept width ``width(fqn, dim)`` of every parameter dim."""
        shapes = self.shapes
        return float(self.fixed) + sum(w * math.prod(width(fqn, d) / n for d, n in enumerate(shapes[fqn]))
                                       for fqn, w in self.weights.items())

    def relative(self, pruned: Pruned) -> float:
        return self(pruned) / self.dense

    def measure(self, pruned: Pruned) -> float:
        """What ``pruned`` costs, a fraction of the dense cost: counted, or timed where ``measured``."""
        return self.relative(pruned)


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


def block_latency(module: nn.Module, inputs: tuple) -> float:
    """One block of an interleaved measurement (inside :func:`~slimc.bench.timing.cpu_timing`):
    a warm-up call, then the fastest of the calls that cover :data:`BLOCK_S`, at least 3, in ms."""
    from slimc.bench.timing import Repeats, fastest_ms

    return fastest_ms(module, inputs, Repeats(min_time_s=BLOCK_S, min_repeats=3))


def latency_ratio(slim: nn.Module, dense: nn.Module, inputs: tuple, timer: Timer | None = None,
                  rounds: int = ROUNDS) -> float:
    """``slim``'s time over ``dense``'s (eval copies, one thread), timed interleaved: each round
    times one block of dense, slim, slim, dense, and gives one ratio (the slim blocks' sum over
    the dense blocks'); the answer is the median of the rounds' ratios. Within a round the
    drift of a shared machine's load cancels (the order is symmetric), and a neighbour's
    burst spoils the rounds it falls in, not the median. (The ratio of the two modules'
    fastest blocks, used before, read ±4 % between repeats on a 2-core VM; this, ±2 %.)"""
    from slimc.bench.timing import cpu_timing

    timer = timer or block_latency
    dense, slim = (copy.deepcopy(m).eval() for m in (dense, slim))
    ratios = []
    with cpu_timing(threads=1):
        for _ in range(rounds):
            d1, s1, s2, d2 = (timer(m, inputs) for m in (dense, slim, slim, dense))
            ratios.append((s1 + s2) / (d1 + d2))
    return float(np.median(ratios))


class LatencyMeter(Meter):
    """Latency of the physically slim module relative to the dense module's, at ``inputs``.

    A search prices hundreds of candidates, so it prices them with an *estimate*: the FLOPs
    fraction of the plan (:class:`FlopsMeter`, at ``inputs``) mapped to a latency fraction
    by a curve through measured results — piecewise linear, rising, through the dense
    model's (1, 1) and every point :meth:`calibrate` adds (as FLOPs proportional until one
    is). :meth:`measure` compiles a result (``verify=False``) and times it against the dense
    model as given (a copy), interleaved (:func:`latency_ratio`); ``timer=`` injects another
    clock (tests use a deterministic one)."""

    kind = "latency"
    measured = True

    def __init__(self, space: PruneSpace, model: nn.Module, inputs: tuple, timer: Timer | None = None):
        self.model, self.inputs, self.timer = model, inputs, timer
        # the reference: the dense model as given (a copy; the pruner trains and masks ``model``,
        # and the traced module shares its parameters)
        self.reference = copy.deepcopy(model).eval()
        self.flops = FlopsMeter(space, model, inputs)
        self.weights, self.shapes = self.flops.weights, getattr(self.flops, "shapes", None)
        self.points: list[tuple[float, float]] = [(0.0, 0.0), (1.0, 1.0)]  # (FLOPs, latency) fractions

    def of_widths(self, width: Callable[[str, int], float]) -> float:
        return self.of_flops(self.flops.of_widths(width) / self.flops.dense)

    def __call__(self, pruned: Pruned) -> float:
        return self.of_flops(self.flops.relative(pruned))

    def of_flops(self, flops: float) -> float:
        """The estimated latency fraction at a FLOPs fraction (below the lowest point measured:
        on the line of the lowest segment)."""
        (x0, y0), (x1, y1) = self.points[:2]
        if flops < x0:
            return y0 + (flops - x0) * (y1 - y0) / (x1 - x0)
        xs, ys = zip(*self.points)
        return float(np.interp(flops, xs, ys))

    def slim_module(self, masks: dict) -> nn.Module:
        import slimc

        return slimc.compile(self.model, masks, self.inputs, verify=False, user_model=False).module

    def measure(self, pruned: Pruned) -> float:
        """The slim module's time over the dense module's, measured interleaved."""
        return latency_ratio(self.slim_module(pruned.masks), self.reference, self.inputs, self.timer)

    def calibrate(self, pruned: Pruned, measured: float) -> None:
        """Lay the estimate's curve through ``pruned``'s measured latency fraction too (the
        first point measured replaces the FLOPs-proportional guess)."""
        flops = self.flops.relative(pruned)
        if flops > 1.0 - MIN_SPAN:
            return
        points = sorted([p for p in self.points if p != (0.0, 0.0) and abs(p[0] - flops) >= MIN_SPAN]
                        + [(flops, measured)])
        self.points = [(float(x), float(y)) for (x, _), y in zip(points, np.maximum.accumulate([y for _, y in points]))]


def secant(points: list[tuple[float, float]], goal: float) -> float:
    """The next x to try for ``f(x) = goal``, ``f`` rising with f(1) = 1, from the ``points``
    ``(x, f(x))`` tried. Where some point lies below the goal, the root is bracketed: between
    the largest x measured below it and the smallest larger x measured above it (or 1), by
    false position, or halfway where that would try an x tried before (a step of ``f`` or a
    noisy reading can hold false position in place). Else on the line through the two
    smallest x (or the smallest and (1, 1) where those two do not rise together)."""
    tried = [x for x, _ in points]
    below = [p for p in points if p[1] < goal]
    if below:
        x1, y1 = max(below)
        x2, y2 = min([p for p in points if p[1] >= goal and p[0] > x1] + [(1.0, 1.0)])
        x = x1 + (goal - y1) * (x2 - x1) / (y2 - y1) if y2 > y1 else (x1 + x2) / 2
        if not x1 < x < x2 or any(abs(x - t) < MIN_SPAN / 2 for t in tried):
            x = (x1 + x2) / 2
        return x
    (x1, y1), (x2, y2) = sorted(points + [(1.0, 1.0)])[:2]
    if abs(x2 - x1) < MIN_SPAN or (y2 - y1) / (x2 - x1) < MIN_SLOPE:
        (x2, y2) = (1.0, 1.0)
    slope = max((y2 - y1) / (x2 - x1), MIN_SLOPE) if abs(x2 - x1) >= MIN_SPAN else 1.0
    return x1 + (goal - y1) / slope


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
