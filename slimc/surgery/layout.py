"""The layout of a slim model relative to its original architecture, and back.

What surgery changed, recorded so that a fresh process can rebuild the slim model from
the original class without running slimc's analysis: every tensor's new shape, the size
attributes that changed (per module), the modules whose class changed (an exact
LayerNorm). ``apply`` builds the same structure on a model made from the original
architecture (with its parameters on the meta device), ready for the saved weights.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from slimc.surgery.leaves import qualname
from slimc.tensors import owner_of, tied_groups

FORMAT = "slimc-layout/1"


def simple_value(v: Any) -> bool:
    """A value an attribute diff records: a number, string, None, or a flat tuple/list of those."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return True
    return isinstance(v, (tuple, list)) and all(isinstance(x, (bool, int, float, str)) for x in v)


def _tensors(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*m.named_parameters(remove_duplicate=False), *m.named_buffers(remove_duplicate=False)]


def diff(original: nn.Module, slim: nn.Module) -> dict[str, Any]:
    shapes0 = {n: tuple(t.shape) for n, t in _tensors(original)}
    shapes = {n: list(t.shape) for n, t in _tensors(slim) if shapes0.get(n) != tuple(t.shape)}
    attrs: dict[str, dict] = {}
    classes: dict[str, str] = {}
    orig = dict(original.named_modules(remove_duplicate=False))
    for path, m in slim.named_modules(remove_duplicate=False):
        m0 = orig.get(path)
        if m0 is None:
            continue
        if type(m) is not type(m0):
            classes[path] = qualname(type(m))
        v0 = vars(m0)
        changed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(m).items()
                   if not k.startswith("_") and k != "training" and simple_value(v) and v0.get(k, object()) != v}
        if changed:
            attrs[path] = changed
    non_persistent = {f"{path}.{b}" if path else b for path, m in slim.named_modules(remove_duplicate=False)
                      for b in m._non_persistent_buffers_set}
    return {"format": FORMAT, "class": qualname(type(slim)), "shapes": shapes, "attrs": attrs, "classes": classes,
            "non_persistent": sorted(n for n in shapes if n in non_persistent)}


def resolve(name: str) -> type:
    mod, _, qual = name.rpartition(".")
    # nested classes: import the longest importable module prefix
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(f"cannot import {name}")


def apply(model: nn.Module, layout: dict[str, Any]) -> nn.Module:
    """Give ``model`` (the original architecture) the slim structure: classes, attributes,
    tensor shapes (new tensors on the meta device, to be loaded)."""
    tied = tied_groups(_tensors(model))
    for path, cls in layout.get("classes", {}).items():
        model.get_submodule(path).__class__ = resolve(cls)
    for path, values in layout.get("attrs", {}).items():
        m = model.get_submodule(path) if path else model
        for k, v in values.items():
            old = getattr(m, k, None)
            setattr(m, k, tuple(v) if isinstance(old, tuple) and isinstance(v, list) else v)
    new_of: dict[int, torch.Tensor] = {}
    for name, shape in layout.get("shapes", {}).items():
        m, leaf = owner_of(model, name)
        old = m._parameters.get(leaf) if leaf in m._parameters else m._buffers.get(leaf)
        if old is None:
            continue
        if id(old) not in new_of:
            t = torch.empty(shape, dtype=old.dtype, device="meta")
            new_of[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t
        if leaf in m._parameters:
            m._parameters[leaf] = new_of[id(old)]
        else:
            m._buffers[leaf] = new_of[id(old)]
    for m in model.modules():
        if hasattr(m, "_init_flat_weights"):
            m._init_flat_weights()
    model._slimc_tied = tied  # re-tied after loading
    return model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` into ``model`` (tensors assigned, not copied), tie tied weights again
    (a checkpoint stores them once), and check nothing is left on the meta device."""
    from slimc.errors import LoadError

    tied = getattr(model, "_slimc_tied", None) or tied_groups(_tensors(model))
    shapes = dict(_tensors(model))
    wrong = [n for n, t in state.items() if n in shapes and tuple(t.shape) != tuple(shapes[n].shape)]
    if wrong:
        n = wrong[0]
        raise LoadError(f"the saved weight '{n}' has shape {tuple(state[n].shape)}, the slim structure "
                        f"{tuple(shapes[n].shape)}: the `slimc compile` output was edited or mixed with another "
                        f"compile's files; compile again")
    model.load_state_dict(state, strict=False, assign=True)
    for names in tied:
        src = next((n for n in names if n in state), None)
        if src is None:
            continue
        owner, leaf = owner_of(model, src)
        t = owner._parameters.get(leaf)
        for n in names:
            mod, lf = owner_of(model, n)
            if t is not None and lf in mod._parameters:
                mod._parameters[lf] = t
    if hasattr(model, "_slimc_tied"):
        del model._slimc_tied
    for m in model.modules():
        if hasattr(m, "_init_flat_weights"):
            m._init_flat_weights()
    left = [n for n, t in _tensors(model) if t.is_meta]
    if left:
        raise LoadError(f"the saved weights have no '{left[0]}' (and {len(left) - 1} more): the folder is incomplete")
    return model


__all__ = ["diff", "apply", "load_weights", "resolve", "FORMAT"]
