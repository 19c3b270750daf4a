"""Leaf classes for what a standard layer cannot compute over the kept channels alone.

``ExactLayerNorm`` is an ``nn.LayerNorm`` over the kept channels of a pruned dim whose
mean and variance are taken as if the removed channels were there as zeros — what the
masked model computes:  μ = Σx / C,  σ² = (Σ(x−μ)² + k·μ²) / C,  with C the original
width and k = C − kept.  A subclass of a user's own LayerNorm class (whose forward is
``nn.LayerNorm``'s) is made on demand and stays picklable: its name encodes its base.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn


class _ExactLayerNormForward:
    """A layer norm over the last dim with the module's ``weight``/``bias`` (either may be
    None) and ``eps`` (``slimc_eps`` where the class keeps its eps elsewhere)."""

    full_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_full, c = self.full_features, x.shape[-1]
        eps = getattr(self, "slimc_eps", None)
        eps = self.eps if eps is None else eps
        mean = x.sum(-1, keepdim=True) / c_full
        d = x - mean
        var = ((d * d).sum(-1, keepdim=True) + (c_full - c) * mean * mean) / c_full
        y = d * torch.rsqrt(var + eps)
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", full_features={self.full_features}"  # type: ignore[misc]


class ExactLayerNorm(_ExactLayerNormForward, nn.LayerNorm):
    """nn.LayerNorm over kept channels, statistics as if the removed ones were zeros."""


_PREFIX = "ExactLayerNorm_"


def _encode(cls: type) -> str:
    return _PREFIX + f"{cls.__module__}.{cls.__qualname__}".replace("_", "_u").replace(".", "_d")


def _decode(name: str) -> type:
    path = name[len(_PREFIX):].replace("_d", ".").replace("_u", "_")
    mod, _, qual = path.rpartition(".")
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def exact_layernorm_class(base: type) -> type:
    """The exact subclass of a class whose forward is a layer norm over the last dim."""
    if base is nn.LayerNorm:
        return ExactLayerNorm
    name = _encode(base)
    if name not in globals():
        cls = type(name, (_ExactLayerNormForward, base), {"__module__": __name__, "__qualname__": name,
                                                         "__doc__": ExactLayerNorm.__doc__})
        globals()[name] = cls
    return globals()[name]


def __getattr__(name: str):  # unpickling an exact subclass of a user's class in a fresh process
    if name.startswith(_PREFIX):
        return exact_layernorm_class(_decode(name))
    raise AttributeError(name)


__all__ = ["ExactLayerNorm", "exact_layernorm_class"]
