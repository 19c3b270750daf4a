"""Where a module tree keeps its tensors: names that share one tensor (tied weights), and
setting a submodule, parameter, buffer or attribute by its dotted path."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def tied_groups(named: Iterable[tuple[str, torch.Tensor]]) -> list[list[str]]:
    """Names that refer to one shared tensor (tied weights, by identity), each list with ≥ 2
    names, in the order given. ``named``: e.g. ``model.named_parameters(remove_duplicate=False)``."""
    by_id: dict[int, list[str]] = {}
    for name, t in named:
        by_id.setdefault(id(t), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def owner_of(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding ``path`` (dotted) and the last name in it."""
    owner, _, leaf = path.rpartition(".")
    return (root.get_submodule(owner) if owner else root), leaf


def set_by_path(root: nn.Module, path: str, value: Any) -> None:
    """Set submodule, parameter, buffer or plain attribute ``path`` of ``root``, in the store
    that holds that name now (a parameter is replaced by a Parameter; anything else goes
    through ``setattr``)."""
    owner, leaf = owner_of(root, path)
    store = next((d for d in (owner._modules, owner._parameters, owner._buffers) if leaf in d), None)
    if store is not None and (store is not owner._parameters or isinstance(value, nn.Parameter)):
        store[leaf] = value
    else:
        setattr(owner, leaf, value)


__all__ = ["owner_of", "set_by_path", "tied_groups"]
