"""The size attributes of torch's layers in the user's slim class, read against the tensors
they describe. A layer whose ``out_channels`` says 8 while its weight holds 5 rows computes
what its weight says — the output check cannot see it — but code that reads the attribute
(a head built on ``fc.in_features``, a reload, the next pruning) is wrong. The resizers
(``shape_rules.RESIZERS``) set these attributes; this is the check of what they set.

    size_mismatches(model) -> ["conv1.out_channels is 8, its weight has 5 rows", ...]
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd


def _conv(m: _ConvNd) -> dict[str, tuple[int, str]]:
    w, g = m.weight, m.groups
    if m.transposed:  # (in, out / groups, *k)
        return {"in_channels": (w.shape[0], "rows"), "out_channels": (w.shape[1] * g, "columns × groups")}
    return {"in_channels": (w.shape[1] * g, "columns × groups"), "out_channels": (w.shape[0], "rows")}


def _first(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    return next((t for t in tensors if t is not None), None)


def _norm(m: _NormBase) -> dict[str, tuple[int, str]]:
    t = _first(m.weight, m.running_mean)
    return {"num_features": (t.shape[0], "entries")} if t is not None else {}


#: layer class → {attribute: (the size its tensors imply, what of the weight holds it)}
SIZES: dict[type, Callable[[nn.Module], dict[str, tuple[int, str]]]] = {
    nn.Linear: lambda m: {"in_features": (m.weight.shape[1], "columns"), "out_features": (m.weight.shape[0], "rows")},
    _ConvNd: _conv,
    _NormBase: _norm,
    nn.GroupNorm: lambda m: {"num_channels": (m.weight.shape[0], "entries")} if m.weight is not None else {},
    nn.LayerNorm: lambda m: {"normalized_shape": (tuple(m.weight.shape), "shape")} if m.weight is not None else {},
    nn.Embedding: lambda m: {"num_embeddings": (m.weight.shape[0], "rows"),
                             "embedding_dim": (m.weight.shape[1], "columns")},
}


def _sizes(m: nn.Module) -> dict[str, tuple[int, str]]:
    rule = next((f for cls, f in SIZES.items() if isinstance(m, cls)), None)
    if rule is None or isinstance(getattr(m, "weight", None), nn.parameter.UninitializedParameter):
        return {}
    return rule(m)


def size_mismatches(model: nn.Module) -> list[str]:
    """Every size attribute of a torch layer of ``model`` that its own tensors contradict."""
    out = []
    for path, m in model.named_modules():
        for attr, (want, where) in _sizes(m).items():
            got = getattr(m, attr, None)
            if isinstance(got, list):
                got = tuple(got)
            if got is not None and got != want:
                out.append(f"{path or type(m).__name__}.{attr} is {got}, its weight has {want} {where}")
    return out


__all__ = ["SIZES", "size_mismatches"]
