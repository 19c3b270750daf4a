"""Leaf classes for what a standard layer cannot compute over the kept channels alone.

``ExactLayerNorm`` is an ``nn.LayerNorm`` over the kept channels of a pruned dim whose
mean and variance are taken as if the removed channels were there as zeros — what the
masked model computes:  μ = Σx / C,  σ² = (Σ(x−μ)² + k·μ²) / C,  with C the original
width and k = C − kept.  A subclass of a user's own layer-norm class (``nn.LayerNorm``'s
forward, or any forward measured as a layer norm: channels-first, without weight, computed
in float32) is made on demand and stays picklable: its name encodes its base. What the
measured form is — the dim it normalizes, the tensors it scales and shifts by — the
instance holds (``slimc_dim``, ``slimc_affine``), so the class keeps its own attributes.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn


class _ExactLayerNormForward:
    """A layer norm over dim ``slimc_dim`` (default the last) with the module's tensors named
    in ``slimc_affine`` (scale, shift; "" for none; default ``weight`` and ``bias``) and ``eps``
    (``slimc_eps`` where the class keeps its eps elsewhere). Half-precision inputs are
    normalized in float32 and cast back, as the libraries' norms compute them."""

    full_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = getattr(self, "slimc_dim", -1)
        moved = dim not in (-1, x.dim() - 1)
        if moved:
            x = x.movedim(dim, -1)
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        c_full, c = self.full_features, x.shape[-1]
        eps = getattr(self, "slimc_eps", None)
        eps = self.eps if eps is None else eps
        mean = x.sum(-1, keepdim=True) / c_full
        d = x - mean
        var = ((d * d).sum(-1, keepdim=True) + (c_full - c) * mean * mean) / c_full
        y = d * torch.rsqrt(var + eps)
        w_name, b_name = getattr(self, "slimc_affine", ("weight", "bias"))
        weight, bias = getattr(self, w_name, None) if w_name else None, getattr(self, b_name, None) if b_name else None
        if weight is not None:
            y = y * weight.to(y.dtype)
        if bias is not None:
            y = y + bias.to(y.dtype)
        y = y.to(dtype)
        return y.movedim(-1, dim) if moved else y

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, full_features={self.full_features}" if base else f"full_features={self.full_features}"


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
    """The exact subclass of a class whose forward is a layer norm (of the measured form)."""
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
