"""Leaf modules of the slim copy, resized: the same class, its size attributes set from its
new parameter shapes (``in_features``, ``num_features``, ``hidden_size`` of an LSTM …).

The resizers are the ones the graph rewrite uses (``RESIZERS``, keyed by class or name);
classes of other libraries are keyed by their qualified name (no import needed), and any
other class gets its size-named attributes that equal an old size set to the new one,
where that is unambiguous (the built-in check is the proof).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from slimc.shape_rules import find_resizer


def _hf_conv1d(m: nn.Module, new: dict) -> None:
    """transformers' Conv1D: weight (nx, nf), ``y = x @ W + b``."""
    m.nx, m.nf = new["weight"]


NAMED_RESIZERS: dict[str, Callable[[nn.Module, dict], None]] = {
    "transformers.pytorch_utils.Conv1D": _hf_conv1d,
}

# attribute names that hold a size in the libraries users bring, read word by word
# (snake_case): ``attention_ratio`` is no ``n_…`` count, ``hidden_dim`` holds no ``id``
SIZE_WORDS = ("features", "channels", "size", "dim", "hidden", "embed", "width", "nf", "nx", "shape", "heads",
              "groups", "planes")
SIZE_PREFIXES = ("num_", "n_")
NOT_SIZE_WORDS = ("idx", "index", "layer", "layers", "eps", "drop", "dropout", "seed", "vocab", "max", "position",
                  "positions", "id", "ids", "image", "img", "patch", "resolution", "seq", "window", "kernel", "stride",
                  "ratio")  # counts of other things, input and spatial sizes


def size_named(name: str) -> bool:
    if name.startswith("_"):
        return False
    low = name.lower()
    words = low.split("_")
    sized = low.startswith(SIZE_PREFIXES) or any(w in SIZE_WORDS or w.endswith(("features", "channels", "size", "dim"))
                                                  for w in words)
    return sized and not any(w in NOT_SIZE_WORDS for w in words)


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def resizer_for(cls: type) -> Callable[[nn.Module, dict], None] | None:
    found = find_resizer(cls)
    if found is not None:
        return found
    return next((NAMED_RESIZERS[qualname(base)] for base in cls.__mro__ if qualname(base) in NAMED_RESIZERS), None)


def _generic_resize(m: nn.Module, old: dict[str, tuple], new: dict[str, tuple]) -> None:
    """Size-named int (or 1-tuple) attributes equal to exactly one changed old size → new."""
    changes: dict[int, set[int]] = {}
    for name, shape in new.items():
        for o, n in zip(old.get(name, shape), shape):
            if o != n:
                changes.setdefault(o, set()).add(n)
    for attr, v in list(vars(m).items()):
        if not size_named(attr) or isinstance(v, bool):
            continue
        if isinstance(v, int) and len(changes.get(v, ())) == 1:
            setattr(m, attr, next(iter(changes[v])))
        elif isinstance(v, (tuple, list)) and len(v) == 1 and isinstance(v[0], int) and len(changes.get(v[0], ())) == 1:
            setattr(m, attr, type(v)([next(iter(changes[v[0]]))]))


def module_pairs(original: nn.Module, slim: nn.Module):
    """(path, original module, slim module) for every module path of the slim copy."""
    orig_modules = dict(original.named_modules(remove_duplicate=False))
    for path, m in slim.named_modules(remove_duplicate=False):
        m0 = orig_modules.get(path)
        if m0 is not None:
            yield path, m0, m


def resize_leaves(slim: nn.Module, original: nn.Module, new_inputs: dict[str, tuple]) -> list[str]:
    """Set the size attributes of every module of ``slim`` whose own tensors changed shape
    (or, for a module with a resizer, whose input did: LayerNorm without affine params).
    ``new_inputs``: module path → its input's new shape. Returns the paths resized."""
    done = []
    for path, m0, m in module_pairs(original, slim):
        old = {n: tuple(t.shape) for n, t in [*m0._parameters.items(), *m0._buffers.items()] if t is not None}
        new = {n: tuple(t.shape) for n, t in [*m._parameters.items(), *m._buffers.items()] if t is not None}
        resize = resizer_for(type(m))
        changed = any(old.get(n) != s for n, s in new.items())
        if not changed and not (resize is not None and path in new_inputs):
            continue
        if resize is not None:
            sizes = dict(new)
            if path in new_inputs:
                sizes["__input__"] = new_inputs[path]
            try:
                resize(m, sizes)
            except KeyError:  # a resizer that needs a size this module does not show
                _generic_resize(m, old, new)
        else:
            _generic_resize(m, old, new)
        if hasattr(m, "_init_flat_weights"):  # RNNs keep a list of their weights
            m._init_flat_weights()
        done.append(path)
    return done


__all__ = ["module_pairs", "resize_leaves", "resizer_for", "size_named", "qualname", "NAMED_RESIZERS"]
