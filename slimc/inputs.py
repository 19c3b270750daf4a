"""Example inputs: binding them to ``forward``, random inputs like them, other shapes.

Example inputs are a tensor, a tuple of positional arguments, or a dict of keyword
arguments (``{"input_ids": ..., "attention_mask": ...}``, as HF models take them); a
dict is bound to ``forward``'s signature once, into the positional tuple every stage
uses (``None`` where a parameter in between is not given).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import nn

from slimc.errors import LoadError


def as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise LoadError(
        f"example_inputs is a {type(example_inputs).__name__}: give a tensor, a tuple of tensors "
        "or a dict of forward() keyword arguments"
    )


def forward_params(model: nn.Module) -> list[inspect.Parameter]:
    """``forward``'s named parameters (no ``*args``/``**kwargs``), in order."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def bind(model: nn.Module, example_inputs: Any) -> tuple:
    """Positional inputs for ``model``: a dict of keyword arguments is placed by ``forward``'s
    signature, with the defaults of the parameters it skips."""
    if not isinstance(example_inputs, Mapping):
        return as_tuple(example_inputs)
    params = forward_params(model)
    names = [p.name for p in params]
    unknown = [k for k in example_inputs if k not in names]
    if unknown:
        raise LoadError(f"example input '{unknown[0]}' is not a parameter of {type(model).__name__}.forward "
                        f"({', '.join(names) or 'no named parameters'}): rename it or pass a tuple")
    last = max(names.index(k) for k in example_inputs) if example_inputs else -1
    out = []
    for p in params[: last + 1]:
        if p.name in example_inputs:
            out.append(example_inputs[p.name])
        elif p.default is not inspect.Parameter.empty:
            out.append(p.default)
        else:
            raise LoadError(f"example inputs give no '{p.name}', a required parameter of "
                            f"{type(model).__name__}.forward: add it")
    return tuple(out)


def untaken_defaults(model: nn.Module, n_given: int) -> dict[str, Any]:
    """forward parameters after the ``n_given`` positional inputs, with their defaults: traced
    as absent (``attn_mask=None``), never as graph inputs."""
    return {p.name: p.default for p in forward_params(model)[n_given:] if p.default is not inspect.Parameter.empty}


def random_tensor_like(t: torch.Tensor, shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """One random tensor of ``shape`` like the example ``t`` — the one policy for every check:
    floats are drawn from a normal distribution (half precision drawn in fp32 and cast),
    integer inputs (token ids) uniformly from ``[min(min, 0), max + 1)``; bool tensors and
    0/1 masks are kept, or filled with ones at a new shape; complex values are kept."""
    shape = tuple(shape)
    if t.is_meta:
        return torch.empty(shape, dtype=t.dtype, device=t.device)
    if t.is_floating_point():
        draw = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.randn(shape, generator=generator, dtype=draw).to(device=t.device, dtype=t.dtype)
    if t.dtype == torch.bool or _is_mask_like(t):
        return t if shape == tuple(t.shape) else torch.ones(shape, dtype=t.dtype, device=t.device)
    if t.is_complex():
        return t
    hi = int(t.max()) + 1 if t.numel() else 1
    lo = min(int(t.min()), 0) if t.numel() else 0
    return torch.randint(lo, max(hi, lo + 1), shape, generator=generator, dtype=t.dtype).to(t.device)


def random_like(inputs: tuple, seed: int, shapes: Mapping[int, tuple] | None = None) -> tuple:
    """Inputs like ``inputs`` (``shapes``: input index → another shape), each tensor drawn by
    :func:`random_tensor_like`; values that are not tensors are kept."""
    g = torch.Generator().manual_seed(seed)
    return tuple(random_tensor_like(t, (shapes or {}).get(i, t.shape), g) if isinstance(t, torch.Tensor) else t
                 for i, t in enumerate(inputs))


def _is_mask_like(t: torch.Tensor) -> bool:
    """An integer 0/1 tensor with a 1 in every row (an attention mask), not token ids."""
    if t.dim() == 0 or not t.numel() or not bool(((t == 0) | (t == 1)).all()):
        return False
    return bool((t.reshape(-1, t.shape[-1]).amax(dim=-1) == 1).all())


def other_size(n: int, batch: bool = False, keep: int = 2) -> int:
    """Another size for a dim that may vary, as small as is safe (the check runs the full
    model at it): a batch of 1 → 2, else one less; other sizes step by their lowest set bit
    (divisibility by powers of two is kept) down to the smallest that keeps at least
    1/``keep`` of the size (keep=2: 224 → 128, 12 → 8, 7 → 4; keep=4: 224 → 64), else —
    a power of two — up one step (32 → 64)."""
    if batch:
        return 2 if n <= 1 else n - 1
    step = n & -n if n > 0 else 1
    down = n - ((n - -(-n // keep)) // step) * step  # the most steps down that keep ≥ n/keep
    if down < 2 < n:  # never down to a size-1 dim (broadcast rules differ there)
        return other_size(n, keep=2) if keep > 2 else n + step
    return down if down < n else n + step


def batch_of_two(inputs: tuple) -> tuple | None:
    """The inputs with a batch of 1 made 2 (each batched tensor's row repeated), or None
    where the batch is not 1: what a tracer that specializes sizes 0 and 1 (``torch.export``)
    is given, so the batch stays a symbol whatever the example's batch. Every tensor with a
    dim 0 is taken as batched; where they do not all have a dim 0 of 1, the batch is not 1."""
    batched = [t for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0]
    if not batched or any(t.shape[0] != 1 for t in batched):
        return None
    return tuple(t.expand(2, *t.shape[1:]).clone() if isinstance(t, torch.Tensor) and t.dim() > 0 else t
                 for t in inputs)


def other_shapes(inputs: tuple, free: Mapping[int, list[int]], keep: int = 2,
                 names: Mapping[int, Mapping[int, str]] | None = None) -> dict[int, tuple]:
    """New shapes for the inputs: every free dim changed (see :func:`other_size`); ``free``:
    input index → dims that may vary (dim 0 is the batch). ``names``: input index → {dim: the
    name of its size} (the export front end's symbols): dims of one name take one new size,
    and dims of different names that the example gives the same size take different new
    sizes where they can — an encoder's and a decoder's lengths are checked apart."""
    out = {}
    by_name: dict[str, int] = {}  # a size's name → its new size
    taken: dict[tuple[int, int], str] = {}  # (old size, new size) → the name that took it
    for i, dims in free.items():
        t = inputs[i]
        shape = list(t.shape)
        for d in dims:
            n, name = shape[d], (names or {}).get(i, {}).get(d)
            if name in by_name:
                shape[d] = by_name[name]
                continue
            new = other_size(n, batch=d == 0, keep=keep)
            if name is not None:
                if d != 0:
                    new = next((m for m in (new, other_size(n, keep=2), other_size(n, keep=8), n - 1, n + 1)
                                if m >= 2 and m != n and taken.get((n, m), name) == name), new)
                    taken[(n, new)] = name
                by_name[name] = new
            shape[d] = new
        if shape != list(t.shape):
            out[i] = tuple(shape)
    return out


__all__ = ["as_tuple", "bind", "forward_params", "untaken_defaults", "random_like", "random_tensor_like", "other_shapes", "other_size",
           "batch_of_two"]
