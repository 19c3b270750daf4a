"""The slim copy of the user's model: every parameter and buffer masked with the final
masks and cut to the kept indices, the rest of the object copied as it is.

A deep copy (:func:`slimc.module_copy.copy_module`) with a memo that already maps each
original tensor to its slim tensor: the module tree, its attributes and the user's class
are copied, the full-size weights never are, and tied weights stay tied (one tensor, one
memo entry). What the user's modules derive from their tensors is not copied but made again
(:mod:`slimc.surgery.derived`): a cache of full-size tensors would undo the slimming.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from slimc.copying import is_cache
from slimc.module_copy import copy_module
from slimc.shards import sliced


def slim_copy(model: nn.Module, plan, ready: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` whose tensors are the slim ones (fresh storage, gradients kept).
    ``ready``: slim tensors already cut under the same names (the slim graph's): cloned,
    not cut again, where their shape is the one the plan gives."""
    memo: dict[int, object] = {}
    ready = ready or {}

    def own(name: str, t: torch.Tensor) -> torch.Tensor:
        d = t.detach()
        r = ready.get(name)
        if r is not None and tuple(r.shape) == new_shape(plan, name, d):
            return r.detach().clone()
        s = sliced(plan, name, d)
        return d.clone() if s is d else s  # sliced or masked tensors are new already

    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) not in memo:
                memo[id(p)] = nn.Parameter(own(name, p), requires_grad=p.requires_grad)
        for name, b in model.named_buffers(remove_duplicate=False):
            if id(b) not in memo:
                memo[id(b)] = own(name, b)
        for m in model.modules():  # timm's attention_bias_cache: computed again, from the slim tensors
            for attr, value in vars(m).items():
                if is_cache(attr, value):
                    memo[id(value)] = type(value)()
    return copy_module(model, memo)


def new_shape(plan, name: str, t: torch.Tensor) -> tuple[int, ...]:
    """The shape of tensor ``name`` in the slim model."""
    return tuple(plan.new_size(("p", name, d)) if ("p", name, d) in plan.dg.size else n for d, n in enumerate(t.shape))


__all__ = ["slim_copy"]
