"""The analysis of a model, kept for its next compile: what does not depend on the masks.

A sweep compiles one model under many masks — every pruning ratio, every candidate of an
automatic pruner. The trace, the recorded shapes, the dependency graph, the channel
groups and the dense FLOPs do not depend on the masks, so they are kept (weakly, per
model object) and reused while the model's :func:`fingerprint` is unchanged. The
fingerprint holds every module's name, identity, class, training flag, ``forward`` (its
own and its class's) and plain attributes (one level into containers and objects such as
an HF config), every parameter's and buffer's identity, shape, dtype, device and version
(an in-place update — an optimizer step, a BatchNorm's running statistics — changes it),
the example inputs' shapes and dtypes, the front end, and the rule registry's size:
anything that can change the trace starts a fresh analysis. Each compile rewrites a
:func:`fork` of the traced module (graph and modules copied, parameters shared), never
the kept one.

``slimc.compile(..., cache=False)`` analyses afresh and keeps nothing;
:func:`clear` drops what is kept.
"""
from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from slimc.copying import HOOK_DICTS
from slimc.module_copy import copy_module

_ATOMS = (int, float, bool, str, bytes, type(None))
_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules", "training", "_non_persistent_buffers_set",
                           "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                           "_load_state_dict_post_hooks", "_is_full_backward_hook", *HOOK_DICTS})
#: models whose analyses are kept (the least recently compiled goes first)
KEEP_MODELS = 4


@dataclass
class Analysis:
    """One model's masks-independent analysis (see the module docstring)."""

    traced: Any  # slimc.trace.Traced: the traced module is never rewritten
    dg: Any  # slimc.graph.DependencyGraph over traced.gm
    flops: int | None  # dense FLOPs at the example inputs
    used_params: int  # params the traced graph reads
    fingerprint: tuple = field(default=(), repr=False)


def fork(gm: fx.GraphModule) -> fx.GraphModule:
    """A module to rewrite: ``gm``'s graph copied (node names kept: the plan refers to them),
    its modules copied with the parameters shared and the buffers cloned; its ``forward`` is
    run by the rewrite
    (``run_pipeline``: ``gm``'s generated code where the graph stays as it is, else compiled anew)."""
    memo: dict[int, Any] = {id(p): p for _, p in gm.named_parameters(remove_duplicate=False)}
    new = fx.GraphModule(nn.Module(), fx.Graph(), type(gm).__name__)
    for k, v in gm.__dict__.items():
        if isinstance(v, torch.Tensor):  # a traced constant
            new.__dict__[k] = v.clone()
    new._parameters = dict(gm._parameters)
    new._buffers = {k: None if b is None else b.clone() for k, b in gm._buffers.items()}
    new._modules = {k: None if c is None else copy_module(c, memo) for k, c in gm._modules.items()}
    new.training = gm.training
    # the graph is set without compiling its code: the rewrite compiles the code once, at its end
    with warnings.catch_warnings():  # torch copies the pytree spec of the graph's codegen with a
        warnings.simplefilter("ignore", FutureWarning)  # deprecated check (LeafSpec): not the user's to see
        new._graph = copy.deepcopy(gm.graph)
    new._graph.owning_module = new
    return new


def _shallow(v: Any) -> Any:
    """A plain value as it is; a container as its plain items (others by identity)."""
    if isinstance(v, _ATOMS):
        return v
    if isinstance(v, (tuple, list)):
        return tuple(x if isinstance(x, _ATOMS) else id(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, x if isinstance(x, _ATOMS) else id(x)) for k, x in v.items())
    inner = getattr(v, "__dict__", None)  # an object (a config): identity and plain attributes
    return (id(v), tuple((a, b) for a, b in inner.items() if isinstance(b, _ATOMS)) if isinstance(inner, dict) else ())


def _attrs(obj: Any) -> tuple:
    """``obj``'s attributes other than modules, one level deep (:func:`_shallow`); a plain
    tensor attribute (not a buffer: the traced copy holds a copy of it) like a buffer."""
    return tuple((k, _tensors({k: v})) if isinstance(v, torch.Tensor) else (k, _shallow(v))
                 for k, v in vars(obj).items() if k not in _MODULE_STATE and not isinstance(v, nn.Module))


def _tensors(store: dict) -> tuple:
    return tuple((k, None) if t is None else (k, id(t), t._version, tuple(t.shape), t.dtype, t.device, t.requires_grad)
                 for k, t in store.items())


def fingerprint(model: nn.Module, inputs: tuple, *key: Any) -> tuple:
    """What the analysis of ``model`` at ``inputs`` depends on (see the module docstring)."""
    from slimc.shape_rules import RULES

    mods = tuple((name, id(m), type(m), getattr(type(m), "forward", None), m.__dict__.get("forward"), m.training,
                  _attrs(m), _tensors(m._parameters), _tensors(m._buffers))
                 for name, m in model.named_modules(remove_duplicate=False))
    ins = tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else (type(x), x)
                for x in inputs)
    return (*key, len(RULES), ins, mods)


_kept: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, Analysis]]" = weakref.WeakKeyDictionary()
_order: list[weakref.ref] = []


def lookup(model: nn.Module, inputs: tuple, *key: Any) -> tuple[Analysis | None, tuple]:
    """The kept analysis of ``model`` for ``key`` if its fingerprint still holds; and the
    fingerprint (to :func:`keep` a fresh analysis under)."""
    fp = fingerprint(model, inputs, *key)
    try:
        an = _kept.get(model, {}).get(key)
    except TypeError:  # a model that cannot be weakly referenced
        return None, fp
    return (an if an is not None and an.fingerprint == fp else None), fp


def keep(model: nn.Module, key: tuple, an: Analysis) -> None:
    try:
        _kept.setdefault(model, {})[key] = an
    except TypeError:
        return
    _order[:] = [r for r in _order if r() is not None and r() is not model] + [weakref.ref(model)]
    while len(_order) > KEEP_MODELS:
        old = _order.pop(0)()
        if old is not None:
            _kept.pop(old, None)


def clear() -> None:
    """Drop every kept analysis."""
    _kept.clear()
    _order.clear()


__all__ = ["Analysis", "KEEP_MODELS", "clear", "fingerprint", "fork", "keep", "lookup"]
