"""Dependency-aware pruners that write *complete* masks: what you fine-tune is what you get.

Every pruner here scores the units of slimc's channel groups (a filter with everything that
goes with it; a whole attention head), chooses the lowest per family (layer-wise) or across
families (global), and writes the masks of every parameter slice the compiler will remove
— rows, columns, biases, norm γ/β — so ``apply(model, masks)`` is exactly the model
``slimc compile`` builds.

    from slimc.prune import Pruner, prune, AGP, LotteryTicket, slim_regularizer
    masks = prune(model, x, "l1", ratio=0.5)                          # one shot
    masks = prune(model, x, "taylor", config_list, data=batches, loss_fn=F.cross_entropy)
    result = make_auto("netadapt", model, x, "latency=0.5", evaluate=evaluate, finetune=finetune).run()

Files: space (groups → units → families), criteria (weight scores), activations
(data-driven scores), config (NNI config lists), select (how many, which), emit (complete
masks), pruner (the interface), level (unstructured), schedules (AGP, Lottery Ticket),
regularizer (network slimming), sensitivity (per-family sensitivity analysis), data
(calibration batches, losses, evaluation). Automatic pruners under a params / FLOPs /
measured-latency budget: auto (the interface), budget (meters), fit (landing a per-family
distribution on a budget), callbacks (the user's evaluate / finetune), netadapt,
annealing, admm, autocompress.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimc.prune.config import RANKINGS, ConfigList
from slimc.prune.criteria import CRITERIA, Criterion, ScoreContext, criterion
from slimc.prune.auto import AUTO_PRUNERS, AutoPruner, AutoResult, auto_names, make_auto
from slimc.prune.budget import Budget
from slimc.prune.emit import LAYOUTS, removal_mask, to_layout
from slimc.prune.level import LevelPruner
from slimc.prune.pruner import Pruned, Pruner
from slimc.prune.regularizer import slim_regularizer
from slimc.prune.schedules import AGP, LotteryTicket, Schedule
from slimc.prune.space import ATTENTION, Family, PruneSpace


def make_pruner(model: nn.Module, example_inputs: Any, criterion: str | Criterion = "l1", config_list: Any = None,
                **kw: Any) -> Pruner | LevelPruner:
    """A :class:`Pruner` for a structured criterion, a :class:`LevelPruner` for ``"level"``."""
    if criterion == "level":
        return LevelPruner(model, example_inputs, config_list, **kw)
    return Pruner(model, example_inputs, criterion, config_list, **kw)


def prune(model: nn.Module, example_inputs: Any, criterion: str | Criterion = "l1", config_list: Any = None,
          **kw: Any) -> dict[str, torch.Tensor]:
    """Complete masks (flat ``{param_fqn: 0/1}``) in one shot; keywords as :class:`Pruner`."""
    return make_pruner(model, example_inputs, criterion, config_list, **kw).masks()


def group_masks(model: nn.Module, example_inputs: Any, ratio: float = 0.5, criterion: str = "l1", seed: int = 0,
                min_channels: int = 1, attention: str = "heads", front_end: str = "auto",
                round_to: int = 1, expressible: bool = False, **kw: Any) -> dict[str, torch.Tensor]:
    """The lowest-``ratio`` units of *every* family, as complete masks (the first pruner API;
    unlike :func:`prune`, also widths a Hugging Face config cannot express, unless ``expressible``)."""
    return prune(model, example_inputs, criterion, ratio=ratio, seed=seed, min_channels=min_channels,
                 attention=attention, front_end=front_end, round_to=round_to, expressible=expressible, **kw)


__all__ = [
    "AGP", "ATTENTION", "AUTO_PRUNERS", "AutoPruner", "AutoResult", "Budget", "auto_names", "make_auto", "CRITERIA", "ConfigList", "Criterion", "Family", "LAYOUTS", "LevelPruner",
    "LotteryTicket", "PruneSpace", "Pruned", "Pruner", "RANKINGS", "Schedule", "ScoreContext", "criterion",
    "group_masks", "make_pruner", "prune", "removal_mask", "slim_regularizer", "to_layout",
]
