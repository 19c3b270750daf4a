"""The pruner: score the units of every group → choose → complete masks.

One interface for every criterion::

    pruner = Pruner(model, example_inputs, "taylor", config_list, data=batches, loss_fn=F.cross_entropy)
    masks = pruner.masks()                      # one shot, at the config list's sparsities
    pruned = pruner.prune(sparsities={"layer1.0.conv1": 0.3})   # an explicit per-family choice
    pruned = pruner.prune(transform=lambda s: s / 2, previous=pruned)   # a schedule's step

The model is traced once; each call reads its current weights, so a schedule (or an
automatic pruner sizing families under a budget) calls ``prune`` as often as it likes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from slimc.errors import ConfigError
from slimc.inputs import bind
from slimc.prune.config import ConfigList, Target
from slimc.prune.criteria import Criterion, ScoreContext, get as get_criterion
from slimc.prune.data import UserData
from slimc.masks import MaskSet
from slimc.prune import experts as moe
from slimc.prune.emit import complete_masks
from slimc.prune.expressible import ConfigCheck, measure
from slimc.prune.select import Selection, check_round_to, select_units
from slimc.prune.space import PruneSpace
from slimc.propagate import plan
from slimc.surgery.hf import is_hf


@dataclass
class Pruned:
    masks: dict[str, torch.Tensor]  # complete, flat {param_fqn: 0/1}
    units: np.ndarray  # unit ids chosen (a schedule passes the result back as previous=)
    sparsity: dict[str, float]  # per family name: the fraction of its units removed
    plan: Any = field(repr=False, default=None)  # the compiler's RemovalPlan for these masks
    notes: list[str] = field(default_factory=list)

    def params_after(self) -> int:
        """Parameters the slim model will have (counted from the plan, no compile needed)."""
        from slimc.compiler import expected_params

        return expected_params(self.plan)


class Pruner:
    """Structured pruning of whole channel groups and attention heads by ``criterion``.

    ``config_list`` (NNI style, a list / YAML / JSON path) or ``ratio`` (every layer) sets the
    sparsities; ``ranking="global"`` ranks units across families (``total_sparsity``);
    ``max_sparsity_per_layer`` caps a family; ``round_to`` keeps multiples of N channels
    (default ``"auto"``: layers of 16 channels or more keep multiples of 16, what the CPU
    kernels run fastest; 1: exactly the ratio, :mod:`slimc.prune.select`; the automatic pruners
    and the sensitivity analysis take ``"auto"`` as 1: they land a budget unit by unit);
    ``uniform`` gives repeated layers the same width; ``data`` / ``loss_fn`` feed the
    data-driven criteria. ``expressible`` (Hugging Face models): only widths the model's
    config can express, measured (:mod:`slimc.prune.expressible`), so ``from_pretrained``
    reloads the slim model; False prunes every family freely (``slimc.load`` rebuilds it).
    ``experts``: also mask this fraction of every mixture-of-experts layer's experts whole,
    with their router rows, chosen by ``expert_criterion`` (``l1`` or ``frequency``: routed
    least often on the calibration data; :mod:`slimc.prune.experts`); 0 (default): none.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, criterion: str | Criterion = "l1",
                 config_list: Any = None, *, ratio: float = 0.5, ranking: str = "layer",
                 max_sparsity_per_layer: float | None = None, round_to: int | str = "auto", uniform: bool = False,
                 attention: str = "heads", min_channels: int = 1, seed: int = 0, front_end: str = "auto",
                 data: Any = None, loss_fn: Callable | None = None, max_batches: int | None = None,
                 user_data: UserData | None = None, expressible: bool = True, experts: float = 0.0,
                 expert_criterion: str = "l1"):
        round_to = check_round_to(round_to)
        if experts:
            moe.check_args(experts, expert_criterion)
        self.criterion = get_criterion(criterion)
        self.model = model
        self.seed = seed
        self.selection = Selection(min_keep=min_channels, round_to=round_to, uniform=uniform)
        self.config = ConfigList.of(config_list, ratio, ranking, max_sparsity_per_layer)
        self.user_data = (user_data or UserData()).with_api(data, loss_fn)
        self.max_batches = max_batches
        self.calibration = None
        if self.criterion.needs_data:  # fail before tracing, not after
            self.calibration = self.user_data.calibration(
                len(bind(model, example_inputs)), f"criterion '{self.criterion.name}'",
                needs_loss=self.criterion.needs_loss, max_batches=max_batches)
        self.experts = (experts, expert_criterion)
        self.expert_data = None
        if experts and expert_criterion == "frequency":  # fail before tracing, not after
            self.expert_data = self.calibration or self.user_data.calibration(
                len(bind(model, example_inputs)), "expert criterion 'frequency'", max_batches=max_batches)
        self.space = PruneSpace(model, example_inputs, attention=attention, front_end=front_end)
        self.expert_routes = moe.droppable(self.space, experts) if experts else []
        self.targets: dict[int, Target] = self.config.targets(self.space, max_sparsity_per_layer)
        self.fit = None  # ConfigFit: the widths an HF model's config can express
        self._config_check = ConfigCheck(self.space) if is_hf(model) else None
        if expressible and self._config_check is not None:
            self.fit = measure(self.space, sorted(self.targets), self._config_check)
            self.targets = {fi: t for fi, t in self.targets.items() if fi not in self.fit.frozen}
            self.selection = Selection(min_channels, round_to, uniform=True, fit=self.fit)

    @property
    def families(self):
        return self.space.families

    def scores(self, model: nn.Module | None = None) -> np.ndarray:
        """Per unit, low = pruned first (NaN: no statistic reached it); of ``model``'s weights
        when given (a copy holding other values of the same parameters, as ADMM scores W + U)."""
        ctx = ScoreContext(model or self.model, np.random.default_rng(self.seed), self.calibration)
        return self.space.unit_scores(self.criterion.group_scores(self.space, ctx), mean=self.criterion.comparable)

    def resolve(self, sparsities: Mapping[str, float] | None = None,
                transform: Callable[[float], float] | None = None) -> dict[int, Target]:
        """Per family: the target after an explicit choice (``sparsities`` by family name; the
        families it leaves out are not pruned) or a schedule's ``transform`` of the config's."""
        if sparsities is not None:
            by_name = {f.name: f.index for f in self.families}
            unknown = [n for n in sparsities if n not in by_name]
            if unknown:
                raise ConfigError(f"no family '{unknown[0]}': families are named after their first layer, "
                                  f"e.g. {', '.join(list(by_name)[:3])}")
            base = {by_name[n]: Target(float(s)) for n, s in sparsities.items() if s > 0}
        else:
            base = dict(self.targets)
        if transform is not None:
            base = {fi: Target(float(transform(t.sparsity)), t.pool, t.max_sparsity, t.entry) for fi, t in base.items()}
        return base

    def prune(self, sparsities: Mapping[str, float] | None = None, transform: Callable[[float], float] | None = None,
              previous: Pruned | None = None, scores: np.ndarray | None = None) -> Pruned:
        """Complete masks at the config's sparsities, or at ``sparsities`` / ``transform`` (see
        :meth:`resolve`); the units of a ``previous`` result stay pruned."""
        targets = self.resolve(sparsities, transform)
        s = self.scores() if scores is None else scores
        before = previous.units if previous is not None else None
        units = select_units(self.space, s, targets, self.selection, self.criterion.comparable, before)
        em = complete_masks(self.space, self.space.groups_of(units))
        notes = [*(self.fit.notes if self.fit else []), *self.space.notes, *em.notes]
        masks, p = em.masks, em.plan
        if self.expert_routes:
            chosen = self.choose_experts()
            masks = moe.with_expert_masks(masks, self.space, self.expert_routes, chosen)
            p = plan(self.space.dg, MaskSet({k: v != 0 for k, v in masks.items()}))
            notes.append(moe.expert_note(chosen, self.space))
        return Pruned(masks, units, self._fractions(units), p, notes)

    def choose_experts(self) -> dict[str, np.ndarray]:
        """Per MoE layer, the experts to mask whole (:mod:`slimc.prune.experts`)."""
        fraction, criterion = self.experts
        l1 = moe.l1_scores(self.space, self.expert_routes, self.model)
        scores = l1 if criterion == "l1" else \
            moe.routing_counts(self.space, self.expert_routes, self.model, self.expert_data)
        return moe.choose(self.expert_routes, scores, l1, fraction)

    def expressible(self, pruned: Pruned) -> tuple[bool | None, str]:
        """Can the model's config (Hugging Face) express the widths of ``pruned``? (True, "")
        for other models; else the check's answer and why not, None where it cannot tell
        (:class:`slimc.prune.expressible.ConfigCheck`)."""
        if self._config_check is None:
            return True, ""
        return self._config_check(pruned.units)

    def masks(self, **kw) -> dict[str, torch.Tensor]:
        return self.prune(**kw).masks

    def _fractions(self, units: np.ndarray) -> dict[str, float]:
        hit = np.bincount(self.space.family_of_unit[units], minlength=len(self.families))
        return {f.name: float(hit[f.index]) / len(f) for f in self.families if hit[f.index]}
