"""Copying a user's model safely, whatever state earlier runs left in it.

``copy.deepcopy`` fails on a model that holds tensors computed with grad enabled (timm's
LeViT and EfficientFormer cache their attention biases after one eval run; the old
``weight_norm``/``spectral_norm`` hooks keep the last computed ``weight``; a forward hook
may keep the last activations). :func:`safe_copy` copies without them:

* computed (non-leaf) tensors are copied detached, and a cache (a dict attribute named
  ``*cache``) is left out, so the copy computes what a fresh model computes;
* forward hooks and pre-hooks are left out: tracing does not run them, so the slim model
  has none, and the checks compare against the model without them (the report says so);
* reparametrizations are made plain parameters: ``torch.nn.utils.prune`` (``weight =
  weight_orig * weight_mask``), the old ``weight_norm``/``spectral_norm`` hooks, and
  ``torch.nn.utils.parametrize`` parametrizations (``weight_norm``, ``spectral_norm`` from
  ``torch.nn.utils.parametrizations``), computed in eval mode.

The model passed in is never changed.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from slimc.modes import eval_mode

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _reparametrization(hook: Any) -> bool:
    """Hooks that compute a parameter (kept in the copy, then made permanent)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return isinstance(hook, (prune.BasePruningMethod, WeightNorm, SpectralNorm))


def _computed(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) and t.grad_fn is not None


def is_cache(name: str, value: Any) -> bool:
    """A dict attribute named ``*cache`` (timm's ``attention_bias_cache``): made again, never copied."""
    return isinstance(value, dict) and name.lower().endswith("cache")


def dropped_hooks(model: nn.Module) -> int:
    """How many forward hooks and pre-hooks (other than reparametrizations) ``model`` has."""
    return sum(1 for m in model.modules() for attr in HOOK_DICTS
               for h in getattr(m, attr, {}).values() if not _reparametrization(h))


def _memo(model: nn.Module) -> dict[int, Any]:
    """deepcopy's memo, pre-filled with what the copy must not hold."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for attr in HOOK_DICTS:
            hooks = getattr(m, attr, None)
            if isinstance(hooks, dict) and hooks:
                kept = {k: h for k, h in hooks.items() if _reparametrization(h) and attr == "_forward_pre_hooks"}
                memo[id(hooks)] = OrderedDict((k, copy.deepcopy(h, memo)) for k, h in kept.items())
        for name, value in vars(m).items():
            if is_cache(name, value):
                memo[id(value)] = type(value)()
            elif _computed(value):
                memo[id(value)] = value.detach().clone()
            elif isinstance(value, (list, tuple, dict)):
                for v in value.values() if isinstance(value, dict) else value:
                    if _computed(v):
                        memo[id(v)] = v.detach().clone()
    return memo


def _make_permanent(model: nn.Module) -> None:
    """Reparametrized tensors → plain parameters holding what they compute in eval mode."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    with eval_mode(model), torch.no_grad():
        for m in list(model.modules()):
            for hook in list(m._forward_pre_hooks.values()):
                if isinstance(hook, prune.BasePruningMethod):
                    prune.remove(m, hook._tensor_name)
                elif isinstance(hook, WeightNorm):
                    torch.nn.utils.remove_weight_norm(m, hook.name)
                elif isinstance(hook, SpectralNorm):
                    torch.nn.utils.remove_spectral_norm(m, hook.name)
            if parametrize.is_parametrized(m):
                # the injected Parametrized* class is shared with the original: removing a
                # parametrization deletes its property from the class, so give the copy its own
                cls = type(m)
                m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
                for name in list(m.parametrizations.keys()):
                    with torch.enable_grad():  # so that the value stays a Parameter
                        parametrize.remove_parametrizations(m, name, leave_parametrized=True)
                    if name in m._buffers:  # computed without grad: a parameter again
                        m._parameters[name] = nn.Parameter(m._buffers.pop(name).detach())


def needs_copy(model: nn.Module) -> bool:
    """Does ``model`` carry anything :func:`safe_copy` drops or makes permanent? (Read from
    each module's ``__dict__``: this runs on every compile, so it stays cheap.)"""
    for m in model.modules():
        d = m.__dict__
        if "parametrizations" in d.get("_modules", ()) or any(d.get(a) for a in HOOK_DICTS):
            return True
        for name, value in d.items():
            if isinstance(value, torch.Tensor):
                if _computed(value):
                    return True
            elif isinstance(value, dict) and value and name.lower().endswith("cache"):
                return True
    return False


def safe_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without computed tensors, caches and hooks, with its
    reparametrizations made plain parameters (see the module docstring)."""
    memo = _memo(model)
    # the computed `weight` of the old weight_norm/spectral_norm and prune hooks may be a leaf
    # (computed under no_grad): copied as it is, then recomputed by _make_permanent
    clean = copy.deepcopy(model, memo)
    _make_permanent(clean)
    return clean


def copy_hooks(src: nn.Module, dst: nn.Module) -> int:
    """Give ``dst`` the forward/backward hooks of the same-named modules of ``src`` (the
    user's slim model keeps the hooks the user registered; reparametrizations excluded, they
    are plain parameters there). Returns how many were copied."""
    n = 0
    dst_mods = dict(dst.named_modules())
    for name, m in src.named_modules():
        target = dst_mods.get(name)
        if target is None:
            continue
        for attr in HOOK_DICTS:
            for k, h in getattr(m, attr, {}).items():
                if not _reparametrization(h) and isinstance(getattr(target, attr, None), dict):
                    getattr(target, attr)[k] = h
                    n += 1
    return n


def clean(model: nn.Module) -> nn.Module:
    """``model`` itself if nothing needs dropping or making permanent, else :func:`safe_copy`."""
    return safe_copy(model) if needs_copy(model) else model
