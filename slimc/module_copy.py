"""A deep copy of a module tree, fast: ``copy.deepcopy(model, memo)`` without its generic
machinery where a module's state is plain.

slimc copies the user's model twice per compile (the traced copy, and the slim model of
the user's class), each time with a memo that already says what every tensor becomes, so
no weight is copied. What is left is Python: ``deepcopy`` reduces every module, then
copies each of its ~20 dict entries (hook dicts, config values) one by one. Here a
module's ``__dict__`` is rebuilt directly: empty containers new, immutable values shared,
child modules recursed, tensors from the memo, anything else through ``deepcopy`` with the
same memo (so an object shared between modules, such as an HF config, stays shared).
A class with its own copy protocol (``__deepcopy__``, ``__reduce_ex__``, ``__getstate__``,
``__slots__``) is copied by ``deepcopy`` itself.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

_IMMUTABLE = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_PROTOCOL = ("__deepcopy__", "__reduce_ex__", "__reduce__", "__getstate__", "__setstate__", "__slots__")
_EMPTY_NEW = (dict, OrderedDict, set, list)
_ATOMS = frozenset({int, float, bool, str, bytes, type(None)})
_plain_classes: dict[type, bool] = {}


def _plain(cls: type) -> bool:
    """Does ``cls`` copy like a plain nn.Module (no copy protocol of its own)? torch.nn's own
    ``__setstate__`` (defaults for old pickles, e.g. Conv's ``padding_mode``) does not count."""
    if cls not in _plain_classes:
        own = [k for c in cls.__mro__ if c not in (nn.Module, object) for k in _PROTOCOL if k in c.__dict__
               and not (k == "__setstate__" and c.__module__.startswith("torch.nn."))]
        _plain_classes[cls] = not own
    return _plain_classes[cls]


def _immutable(v: object) -> bool:
    if type(v) in _ATOMS or isinstance(v, _IMMUTABLE):
        return True
    return type(v) is tuple and all(_immutable(x) for x in v)


def _value(v: object, memo: dict) -> object:
    t = type(v)
    if t in _ATOMS:
        return v
    if t in _EMPTY_NEW and not v:  # hook dicts, mostly
        return t()
    if _immutable(v):
        return v
    if isinstance(v, nn.Module):
        return copy_module(v, memo)
    return copy.deepcopy(v, memo)


def _tensor(t: torch.Tensor | None, memo: dict) -> torch.Tensor | None:
    """A parameter or buffer through the memo; a plain buffer not in it is cloned directly
    (``Tensor.__deepcopy__`` costs ~20× a clone)."""
    if t is None:
        return None
    if id(t) in memo:
        return memo[id(t)]
    if type(t) is not torch.Tensor or t.requires_grad or t.__dict__:
        return copy.deepcopy(t, memo)
    memo[id(t)] = c = t.clone()
    return c


def copy_module(m: nn.Module, memo: dict | None = None) -> nn.Module:
    """``copy.deepcopy(m, memo)``, faster for plain modules (see the module docstring)."""
    memo = {} if memo is None else memo
    if id(m) in memo:
        return memo[id(m)]
    cls = type(m)
    if not _plain(cls):
        return copy.deepcopy(m, memo)
    new = cls.__new__(cls)
    memo[id(m)] = new
    state = {}
    for k, v in m.__dict__.items():
        if type(v) in _ATOMS:  # most of a module's entries: shared as they are
            state[k] = v
        elif k in ("_parameters", "_buffers"):
            state[k] = type(v)((n, _tensor(t, memo)) for n, t in v.items())
        elif k == "_modules":
            state[k] = type(v)((n, None if c is None else copy_module(c, memo)) for n, c in v.items())
        else:
            state[k] = _value(v, memo)
    new.__dict__.update(state)
    return new


__all__ = ["copy_module"]
