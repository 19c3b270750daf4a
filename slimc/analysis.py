"""The analysis of a model, kept for its next compile: what does not depend on the masks.

A sweep compiles one model under many masks — every pruning ratio, every candidate of an
automatic pruner — and often a fresh copy of the model at each point (pruners work in
place, so users prune ``copy.deepcopy(model)``). The trace, the recorded shapes, the
dependency graph, the channel groups and the dense FLOPs depend on none of that: only on
the model's structure. They are kept and reused in two ways.

* **By structure** (:func:`structure`): every module's name, class, ``forward`` (its own
  and its class's), training flag and plain attributes (by value, containers and objects
  such as an HF config two levels deep), every parameter's and buffer's name, shape,
  dtype, device and which of them are tied, the example inputs' shapes and dtypes, the
  front end and the rule registry's size. Any model with the same structure reuses the
  analysis — the same object after an optimizer step, or a deep copy, or a new instance
  of the class — and each compile takes every parameter and buffer from *that* model, by
  name (:func:`fork`): nothing of the analysed model's values is used. This holds where
  the analysis read no values: no op was probed (:mod:`slimc.probe` runs the model), each
  traced parameter is the model's own and each traced buffer equals the model's at the
  same name, and the model has no plain tensor attributes (a traced constant could be
  one). Such an analysis outlives its model; when that model is freed, the traced module's
  tensors become meta tensors, so a kept analysis holds no weights.
* **By identity** (:func:`fingerprint`), for the others: the same model object, with
  every tensor's identity and version (an in-place update starts a fresh analysis), kept
  weakly while the model lives.

Each compile rewrites a :func:`fork` of the traced module (graph and modules copied),
never the kept one. ``slimc.compile(..., cache=False)`` analyses afresh and keeps nothing;
:func:`clear` drops what is kept.
"""
from __future__ import annotations

import copy
import functools
import types
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from slimc.copying import HOOK_DICTS
from slimc.module_copy import copy_module

_ATOMS = (int, float, bool, str, bytes, type(None))
_ATOMS_SET = frozenset(_ATOMS)
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
    bound: bool = False  # its tensors are the model's, by name: a fork takes them from the model compiled


def fork(gm: fx.GraphModule, model: nn.Module | None = None) -> fx.GraphModule:
    """A module to rewrite: ``gm``'s graph copied (node names kept: the plan refers to them),
    its modules copied with the parameters shared and the buffers cloned — ``model``'s
    parameters and buffers of the same names where ``model`` is given (an analysis reused by
    structure), else ``gm``'s own. Its ``forward`` is run by the rewrite (``run_pipeline``:
    ``gm``'s generated code where the graph stays as it is, else compiled anew)."""
    if model is None:
        memo: dict[int, Any] = {id(p): p for _, p in gm.named_parameters(remove_duplicate=False)}
    else:
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers(remove_duplicate=False))
        memo = {id(p): params[k] for k, p in gm.named_parameters(remove_duplicate=False)}
        for k, b in gm.named_buffers(remove_duplicate=False):
            if id(b) not in memo:
                memo[id(b)] = buffers[k].clone()
    new = fx.GraphModule(nn.Module(), fx.Graph(), type(gm).__name__)
    for k, v in gm.__dict__.items():
        if isinstance(v, torch.Tensor):  # a traced constant
            new.__dict__[k] = v.clone()
    new._parameters = {k: None if p is None else memo[id(p)] for k, p in gm._parameters.items()}
    new._buffers = {k: None if b is None else memo[id(b)] if id(b) in memo else b.clone() for k, b in gm._buffers.items()}
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


class _Unstructured(Exception):
    """A value that only its identity tells apart (a tensor outside the parameters and
    buffers, an object without plain attributes)."""


_SAME_IN_COPIES = (types.FunctionType, types.BuiltinFunctionType, types.BuiltinMethodType, type,
                   torch.dtype, torch.device, torch.layout, torch.memory_format)


def _value_key(v: Any, seen: dict[int, Any], depth: int = 2) -> Any:
    """``v`` without identities: atoms as they are, containers item by item, an object as its
    class and attributes, ``depth`` levels deep (deeper: containers by class and length,
    objects by class); functions and classes as they are (a deep copy keeps them)."""
    t = type(v)
    if t in _ATOMS_SET or isinstance(v, _SAME_IN_COPIES):
        return v
    if isinstance(v, torch.Tensor):
        raise _Unstructured
    if id(v) in seen:  # an object shared between modules (an HF config): keyed once
        return seen[id(v)]
    if isinstance(v, (tuple, list, set, frozenset)):
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        key = (t, tuple(_value_key(x, seen, depth - 1) for x in items)) if depth > 0 else (t, len(v))
    elif isinstance(v, dict):
        key = (t, tuple((_value_key(k, seen, 0), _value_key(x, seen, depth - 1)) for k, x in v.items())) \
            if depth > 0 else (t, len(v))
    elif isinstance(v, types.MethodType):  # e.g. a forward set on the instance
        key = (t, v.__func__, type(v.__self__))
    elif isinstance(v, functools.partial):  # an activation with its arguments: all of them count
        key = (t, _value_key(v.func, seen, depth), _value_key(v.args, seen, depth), _value_key(v.keywords, seen, depth))
    elif isinstance(getattr(v, "__dict__", None), dict):
        key = (t, tuple((a, _value_key(b, seen, depth - 1)) for a, b in vars(v).items())) if depth > 0 else t
    else:
        raise _Unstructured
    seen[id(v)] = key
    return key


def structure(model: nn.Module, inputs: tuple, *key: Any) -> tuple | None:
    """What the analysis of ``model`` at ``inputs`` depends on, without identities (see the
    module docstring); None where ``model`` holds something only its identity tells apart."""
    from slimc.shape_rules import RULES

    seen: dict[int, Any] = {}
    ties: dict[int, int] = {}

    def tensors(store: dict) -> tuple:
        return tuple((k, None) if t is None else (k, tuple(t.shape), t.dtype, t.device, t.requires_grad,
                                                  ties.setdefault(id(t), len(ties)))
                     for k, t in store.items())

    try:
        mods = tuple((name, type(m), getattr(type(m), "forward", None), _value_key(m.__dict__.get("forward"), seen),
                      m.training, ties.setdefault(id(m), len(ties)),
                      tuple((k, _value_key(v, seen)) for k, v in vars(m).items() if k not in _MODULE_STATE),
                      tensors(m._parameters), tensors(m._buffers))
                     for name, m in model.named_modules(remove_duplicate=False))
        ins = tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else _value_key(x, seen)
                    for x in inputs)
    except _Unstructured:
        return None
    return (*key, len(RULES), ins, mods)


def bindable(gm: fx.GraphModule, model: nn.Module) -> bool:
    """Are ``gm``'s parameters ``model``'s own and its buffers equal to ``model``'s, name
    for name (so that another model of the same structure can stand in)?"""
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    if any(params.get(k) is not p for k, p in gm.named_parameters(remove_duplicate=False)):
        return False
    for k, b in gm.named_buffers(remove_duplicate=False):
        mb = buffers.get(k)
        if mb is None or mb.shape != b.shape or mb.dtype != b.dtype or mb.device != b.device or not torch.equal(mb, b):
            return False
    return True


def _to_meta(an_ref: "weakref.ref[Analysis]") -> None:
    """The analysed model was freed: its kept traced module lets go of the weights (their
    shapes, dtypes and ties stay)."""
    an = an_ref()
    if an is None:
        return
    memo: dict[int, torch.Tensor] = {}
    for m in an.traced.gm.modules():
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is None or t.is_meta:
                    continue
                if id(t) not in memo:
                    meta = torch.empty_like(t, device="meta")
                    memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
                store[k] = memo[id(t)]


_kept: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, Analysis]]" = weakref.WeakKeyDictionary()
_order: list[weakref.ref] = []
#: analyses any model of the same structure reuses (the least recently used goes first)
_by_structure: "OrderedDict[tuple, Analysis]" = OrderedDict()


def lookup(model: nn.Module, inputs: tuple, *key: Any) -> tuple[Analysis | None, tuple | None]:
    """A kept analysis that holds for ``model`` — one of any model of the same structure, or
    one of this model object whose fingerprint still holds — and ``model``'s structure (to
    :func:`keep` a fresh analysis under)."""
    st = structure(model, inputs, *key)
    an = _by_structure.get(st) if st is not None else None
    if an is not None:
        _by_structure.move_to_end(st)
        return an, st
    try:
        an = _kept.get(model, {}).get(key)
    except TypeError:  # a model that cannot be weakly referenced
        return None, st
    if an is not None and an.fingerprint != fingerprint(model, inputs, *key):
        an = None
    return an, st


def keep(model: nn.Module, key: tuple, an: Analysis, inputs: tuple, st: tuple | None) -> None:
    """Keep ``an`` for the next compile: by structure where it read no values of ``model``
    (see the module docstring), else by identity."""
    from slimc.graph import probed_table

    if st is not None and not probed_table(an.dg) and bindable(an.traced.gm, model):
        an.bound = True
        _by_structure[st] = an
        while len(_by_structure) > KEEP_MODELS:
            _by_structure.popitem(last=False)
        weakref.finalize(model, _to_meta, weakref.ref(an))
        return
    an.fingerprint = fingerprint(model, inputs, *key)
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
    _by_structure.clear()


__all__ = ["Analysis", "KEEP_MODELS", "bindable", "clear", "fingerprint", "fork", "keep", "lookup", "structure"]
