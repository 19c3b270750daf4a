"""The slim model's structure, pickled: the user's own objects as they are (classes, size
attributes, configs, submodules), every parameter and persistent buffer on the meta
device — the weights are ``model.safetensors`` beside it.

Rebuilding a class from its name needs its constructor's arguments, which slimc does not
know for a model built in code (``timm.create_model("resnet50", drop_rate=0.1)``, a
torchvision builder, a class from an installed package called with the user's arguments).
A pickle of the objects needs none: it loads wherever the classes and functions it names
import by name. That holds for a library's classes, not for those of a ``model.py``
(imported under a private name) or of a script (``__main__``): :func:`save` records what
the pickle imports and writes nothing where a name would not import in a fresh process
(the model file, named in the report, rebuilds those).
"""
from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path

import torch
from torch import nn

from slimc.atomic import atomic_path
from slimc.errors import describe
from slimc.module_copy import copy_module

FILE = "structure.pt"


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and persistent buffers are on the meta device
    (tied ones stay tied); non-persistent buffers, which no checkpoint holds, are kept."""
    memo: dict[int, object] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for k, b in m._buffers.items():
            if b is not None and id(b) not in memo and k not in m._non_persistent_buffers_set:
                memo[id(b)] = torch.empty_like(b, device="meta")
    return copy_module(model, memo)


def importable(module: str) -> bool:
    """Would ``import module`` find it in a fresh process with this ``sys.path``? Not for
    ``__main__`` or a model file imported under a private name (found here only in
    ``sys.modules``)."""
    if module == "__main__":
        return False
    top = module.partition(".")[0]
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return True
    for finder in sys.meta_path:  # as import would search, less sys.modules (the model files' private names)
        try:  # (an editable install's finder is one of them, not a sys.path entry)
            if getattr(finder, "find_spec", None) and finder.find_spec(top, None) is not None:
                return True
        except (ImportError, ValueError, AttributeError, TypeError):
            continue
    return False


def _recording_pickle(names: set[str]) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.save`` whose pickler records the module of every class
    and function it saves by reference."""

    class Recorder(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
                names.add(f"{getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', obj)}")
            return NotImplemented

    return types.SimpleNamespace(__name__="pickle", Pickler=Recorder, dump=pickle.dump, load=pickle.load,
                                 Unpickler=pickle.Unpickler)


def save(model: nn.Module, path: Path) -> str:
    """Write ``model``'s :func:`skeleton` to ``path``; returns "" or why it was not written
    (something in it does not pickle, or names a class a fresh process cannot import)."""
    names: set[str] = set()
    buf = io.BytesIO()
    try:
        torch.save(skeleton(model), buf, pickle_module=_recording_pickle(names))
    except Exception as e:  # a lambda, a local class, an open file in the model's attributes
        return f"it does not pickle ({describe(e, 160)})"
    bad = sorted(n for n in names if not importable(n.partition(":")[0]))
    if bad:
        mod, _, qual = bad[0].partition(":")
        where = ("a script (__main__)" if mod == "__main__" else
                 "a model file (imported under a private name)" if mod.startswith("_slimc_user_") else
                 f"'{mod}', which a fresh process would not find")
        return f"{qual} is defined in {where}: no {FILE}"
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    return ""


def load(path: Path) -> nn.Module:
    """The skeleton saved at ``path`` (raises what unpickling raises: a class that does not import)."""
    return torch.load(path, weights_only=False, map_location="cpu")


__all__ = ["FILE", "skeleton", "importable", "save", "load"]
