"""Level: unstructured magnitude pruning (the smallest |w| of each configured layer's weight).

Zeros that fill no whole channel stay in the slim model as unstructured sparsity (the
compile report counts them); where the zeros do empty a whole channel, the masks are
completed like a structured pruner's, so the masked model is still what compile builds.
Output layers are pruned only where a config entry names them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from slimc.errors import ConfigError
from slimc.prune.config import ConfigList, Target
from slimc.prune.emit import complete_masks
from slimc.prune.pruner import Pruned
from slimc.prune.space import PruneSpace


@dataclass(frozen=True)
class WeightFamily:
    name: str  # the layer
    size: int  # entries of its weight

    def __len__(self) -> int:
        return self.size


class LevelPruner:
    """Same calls as :class:`~slimc.prune.pruner.Pruner`; its families are the layers' weights."""

    name = "level"
    label = "|w| of single weights (unstructured)"
    paper = "Han et al. 2015; Zhu & Gupta 2017"
    needs_data = needs_loss = False

    def __init__(self, model: nn.Module, example_inputs: Any, config_list: Any = None, *, ratio: float = 0.5,
                 ranking: str = "layer", max_sparsity_per_layer: float | None = None, front_end: str = "auto",
                 round_to: int | str = "auto", uniform: bool = False, **_structured_only: Any):
        if round_to not in (1, "auto") or uniform:
            raise ConfigError("level prunes single weights, not channels: round_to / uniform apply to the "
                              "structured criteria (l1, l2, fpgm, random, slim, apoz, mean_activation, taylor)")
        self.model = model
        self.space = PruneSpace(model, example_inputs, front_end=front_end)
        self.config = ConfigList.of(config_list, ratio, ranking, max_sparsity_per_layer)
        mods = dict(model.named_modules())
        self.weights = {n: f"{n}.weight" for n, m in mods.items()
                        if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2
                        and f"{n}.weight" in self.space.gm_params}
        self.targets: dict[str, Target] = self.config.layer_targets(
            model, self.weights, self._output_layers(), max_sparsity_per_layer)

    def _output_layers(self) -> set[str]:
        """Output layers, and the layers whose weight is tied to one (GPT's embedding)."""
        out = self.space.output_layers()
        for names in self.space.P.aliases:
            mods = {n.rpartition(".")[0] for n in names}
            if mods & out:
                out |= mods
        return out

    @property
    def families(self) -> list[WeightFamily]:
        """The layers this pruner may prune (their weights' entries are its units)."""
        params = self.space.gm_params
        return [WeightFamily(n, params[w].numel()) for n, w in self.weights.items()]

    def prune(self, sparsities: Mapping[str, float] | None = None, transform: Callable[[float], float] | None = None,
              previous: Pruned | None = None, scores: Any = None) -> Pruned:
        targets = {n: Target(float(s)) for n, s in sparsities.items() if s > 0} if sparsities is not None \
            else dict(self.targets)
        if transform is not None:
            targets = {n: Target(float(transform(t.sparsity)), t.pool, t.max_sparsity) for n, t in targets.items()}
        params = dict(self.model.named_parameters(remove_duplicate=False))
        mags = {n: params[self.weights[n]].detach().abs().flatten() for n in targets}
        if previous is not None:  # zeros chosen before stay chosen
            for n in mags:
                old = previous.masks.get(self.weights[n])
                if old is not None:
                    mags[n] = torch.where(old.flatten() == 0, torch.full_like(mags[n], -1.0), mags[n])
        k = {n: int(np.floor(mags[n].numel() * min(t.sparsity, t.max_sparsity) + 1e-9))
             for n, t in targets.items() if t.pool is None}
        pools: dict[int, list[str]] = {}
        for n, t in targets.items():
            if t.pool is not None:
                pools.setdefault(t.pool, []).append(n)
        for names in pools.values():
            k.update(_global_counts(mags, targets, names))
        base = {}
        for n, kn in k.items():
            if kn <= 0:
                continue
            m = torch.ones(mags[n].numel())
            m[torch.argsort(mags[n], stable=True)[:kn]] = 0.0
            base[self.weights[n]] = m.reshape(params[self.weights[n]].shape)
        em = complete_masks(self.space, np.zeros(self.space.ng, bool), base)
        frac = {n: kn / mags[n].numel() for n, kn in k.items() if kn > 0}
        return Pruned(em.masks, np.zeros(0, dtype=np.int64), frac, em.plan, em.notes)

    def masks(self, **kw) -> dict[str, torch.Tensor]:
        return self.prune(**kw).masks


def _global_counts(mags: dict[str, torch.Tensor], targets: dict[str, Target], names: list[str]) -> dict[str, int]:
    """One magnitude threshold over the pool (global magnitude pruning), each layer capped."""
    allw = torch.cat([mags[n] for n in names])
    total = int(np.floor(allw.numel() * targets[names[0]].sparsity + 1e-9))
    if total <= 0:
        return dict.fromkeys(names, 0)
    thr = torch.kthvalue(allw, total).values
    return {n: min(int((mags[n] <= thr).sum()), int(np.floor(mags[n].numel() * targets[n].max_sparsity + 1e-9)))
            for n in names}
