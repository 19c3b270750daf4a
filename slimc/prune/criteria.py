"""Criteria: one score per channel group, low = pruned first.

A criterion sees the :class:`~slimc.prune.space.PruneSpace` (every group, the parameter
slices that create it) and a :class:`ScoreContext` (the model as it is now, calibration
data, a seeded generator). Weight criteria score the *source* slices of a group (the conv
filters, linear rows that create its channels) and sum them over the group, so a residual
channel is scored by every block that writes it. Data-driven criteria live in
:mod:`slimc.prune.activations`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from slimc.compact import part_of
from slimc.errors import ConfigError
from slimc.prune.space import PruneSpace

CRITERIA: dict[str, type["Criterion"]] = {}


def registrar(table: dict[str, type]) -> Callable[[str], Callable[[type], type]]:
    """A class decorator factory: ``@deco(name)`` sets ``cls.name`` and files the class in ``table``."""
    def named(name: str) -> Callable[[type], type]:
        def register(cls: type) -> type:
            cls.name = name
            table[name] = cls
            return cls

        return register

    return named


#: register a criterion class under ``name`` (``slimc prune --criterion NAME``)
criterion = registrar(CRITERIA)


@dataclass
class ScoreContext:
    model: nn.Module  # the user's model, with its current weights
    rng: np.random.Generator
    data: Any = None  # a slimc.prune.data.Calibration, for data-driven criteria
    extra: dict = field(default_factory=dict)


class Criterion:
    """Scores channel groups. Subclasses set the class attributes and ``group_scores``."""

    name = ""
    label = ""  # for the docs' table
    paper = ""
    needs_data = False  # calibration batches
    needs_loss = False  # and a loss to differentiate
    #: scores of different families are on one scale (global ranking uses them as they are;
    #: otherwise each family's scores are divided by their mean first)
    comparable = False

    def group_scores(self, space: PruneSpace, ctx: ScoreContext) -> np.ndarray:
        raise NotImplementedError


class SliceCriterion(Criterion):
    """A score per source slice, summed over the slices of a group."""

    def slice_scores(self, w: torch.Tensor, dim: int, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, summed: np.ndarray) -> np.ndarray:
        return summed

    def group_scores(self, space: PruneSpace, ctx: ScoreContext) -> np.ndarray:
        params = space.params(ctx.model)
        score = np.zeros(space.ng)
        cache: dict[tuple[str, int], np.ndarray] = {}
        for s in space.sources:
            key = (s.fqn, s.dim)
            if key not in cache:  # (a part dim: the slices of one expert of stacked experts)
                w, dim = part_of(params[s.fqn].float(), s.dim)
                cache[key] = self.slice_scores(w, dim, ctx.rng).double().numpy()
            np.add.at(score, s.groups, cache[key][s.index])
        return self.finish(score)


def _other_dims(w: torch.Tensor, dim: int) -> list[int]:
    return [i for i in range(w.dim()) if i != dim]


@criterion("l1")
class L1(SliceCriterion):
    label, paper = "L1 norm of the filters", "Li et al. 2017, Pruning Filters for Efficient ConvNets"

    def slice_scores(self, w, dim, rng):
        other = _other_dims(w, dim)
        return w.abs().sum(dim=other) if other else w.abs()


@criterion("l2")
class L2(SliceCriterion):
    label, paper = "L2 norm of the filters", "Li et al. 2017; He et al. 2018 (soft filter pruning)"

    def slice_scores(self, w, dim, rng):
        other = _other_dims(w, dim)
        return w.pow(2).sum(dim=other) if other else w.pow(2)

    def finish(self, summed):
        return np.sqrt(summed)  # the L2 norm of all of a group's source slices together


@criterion("fpgm")
class FPGM(SliceCriterion):
    label = "distance to the geometric median of the layer's filters"
    paper = "He et al. 2019, Filter Pruning via Geometric Median"

    def slice_scores(self, w, dim, rng):
        flat = w.movedim(dim, 0).reshape(w.shape[dim], -1).double()
        return torch.cdist(flat, flat).sum(dim=1)  # near the median = replaceable by the others


@criterion("random")
class Random(SliceCriterion):
    label, paper = "uniform random scores (a baseline)", "Blalock et al. 2020 (ShrinkBench baselines)"
    comparable = True

    def slice_scores(self, w, dim, rng):
        return torch.from_numpy(rng.random(w.shape[dim]))


def _is_batchnorm(model: nn.Module, module_name: str) -> bool:
    try:
        return isinstance(model.get_submodule(module_name), nn.modules.batchnorm._BatchNorm)
    except AttributeError:
        return False


@criterion("slim")
class Slim(Criterion):
    """|γ| of the BatchNorms that follow a channel (their mean where several do: a residual
    channel's, one per block); groups with no BatchNorm fall back to the L1 norm of their filters."""

    label = "|BatchNorm γ| (train with slim_regularizer)"
    paper = "Liu et al. 2017, Network Slimming"
    comparable = True  # γ of every layer is on one scale: network slimming ranks globally

    def group_scores(self, space, ctx):
        params = space.params(ctx.model)
        P, dg = space.P, space.dg
        gamma = np.zeros(space.ng)
        n_bn = np.zeros(space.ng)
        for _, ln, a, _b in P.links:
            if ln.kind != "follower" or ln.a[0] != "p":
                continue
            fqn = ln.a[1]
            if (ln.term == 0 and fqn.endswith("weight") and fqn in params
                    and _is_batchnorm(ctx.model, space.module_of(fqn))):
                np.add.at(gamma, P.group[a], params[fqn].abs().double().numpy()[a - dg.offset[ln.a]])
                np.add.at(n_bn, P.group[a], 1.0)
        return np.where(n_bn > 0, gamma / np.maximum(n_bn, 1), L1().group_scores(space, ctx))


def get(name_or_criterion: str | Criterion) -> Criterion:
    """A criterion instance by name (one line naming the choices when unknown)."""
    if isinstance(name_or_criterion, Criterion):
        return name_or_criterion
    from slimc.prune import activations  # noqa: F401  (registers the data-driven criteria)

    cls = CRITERIA.get(str(name_or_criterion))
    if cls is None:
        raise unknown(str(name_or_criterion))
    return cls()


def names() -> list[str]:
    """The one-shot criteria (``level``: unstructured)."""
    from slimc.prune import activations  # noqa: F401

    return ["level", *CRITERIA]


def choices() -> str:
    """Every name ``--criterion`` takes, in one phrase: the message, the CLI help and the docs'
    CLI reference read it from here."""
    from slimc.prune.auto import auto_names

    every = names()
    data = {n for n, c in CRITERIA.items() if c.needs_data}
    one = [f"{n} (needs data)" if n in data else n for n in every]
    return f"{', '.join(one)}; automatic, with a budget: {', '.join(auto_names())}"


def unknown(name: str) -> ConfigError:
    """The one-line error for a criterion name that is none of :func:`choices` (with the closest)."""
    import difflib

    from slimc.prune.auto import auto_names

    close = difflib.get_close_matches(name, [*names(), *auto_names()], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown criterion '{name}'{hint}: use one of {choices()}")
