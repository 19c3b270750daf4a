"""Model specs → (nn.Module, example inputs).

A spec is a path to a ``model.py`` or ``pkg.module:attr``. A model file defines
``model`` (an nn.Module) or ``build_model()``, and ``example_inputs`` (a tensor, a
tuple, or a dict of forward() keyword arguments; ``dummy_input`` is accepted as an alias). ``zoo:NAME`` builds a zoo model.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from slimc.errors import LoadError, with_cause
from slimc.inputs import bind


def _import_file(path: Path) -> ModuleType:
    name = f"_slimc_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import '{path}': give a Python file that defines `model` and `example_inputs`")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # so that pickling the slim graph finds the user's functions it calls
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        sys.modules.pop(name, None)
        raise LoadError(f"importing '{path}' failed: {with_cause(e)}") from e
    finally:
        sys.path.pop(0)
    return mod


def load_model(spec: str) -> tuple[nn.Module, tuple]:
    """Load a model spec; returns the module and its example inputs as a tuple."""
    model, inputs, _ = load_spec(spec)
    return model, inputs


def load_spec(spec: str) -> tuple[nn.Module, tuple, ModuleType | None]:
    """Like :func:`load_model`, plus the namespace the spec was loaded from (the model file or
    module, for the optional hooks it defines: ``calibration_batches``, ``loss_fn``,
    ``evaluate``); None for ``zoo:`` specs."""
    if spec.startswith("zoo:"):
        from slimc import zoo

        name = spec[4:]
        if name not in zoo.ZOO:
            raise LoadError(f"no zoo model '{name}': choose one of {', '.join(zoo.names())}")
        return zoo.build(name), zoo.example_inputs(name), None
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise LoadError(f"model file '{spec}' does not exist: pass a model.py or pkg.module:attr")
        mod = _import_file(path)
        where = f"'{spec}'"
    else:
        modname, _, attr = spec.partition(":")
        try:
            mod = importlib.import_module(modname)
        except Exception as e:
            raise LoadError(f"cannot import '{modname}' ({with_cause(e)}): check the spec or PYTHONPATH") from e
        where = f"module '{modname}'"
        if attr:
            obj = getattr(mod, attr, None)
            if obj is None:
                raise LoadError(f"{where} has no attribute '{attr}'")
            if callable(obj) and not isinstance(obj, nn.Module):
                obj = obj()
            if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module):
                return obj[0], bind(obj[0], obj[1]), mod
            if not isinstance(obj, nn.Module):
                raise LoadError(f"'{spec}' is a {type(obj).__name__}, not an nn.Module")
            return obj, bind(obj, _example_inputs(mod, where)), mod
    model = getattr(mod, "model", None)
    if model is None and callable(getattr(mod, "build_model", None)):
        try:
            model = mod.build_model()
        except Exception as e:
            raise LoadError(f"build_model() in {where} failed: {with_cause(e)}") from e
    if not isinstance(model, nn.Module):
        raise LoadError(
            f"{where} defines no `model` (nn.Module) or `build_model()`: add e.g. `model = MyNet()`"
        )
    return model, bind(model, _example_inputs(mod, where)), mod


def _example_inputs(mod: ModuleType, where: str) -> Any:
    for name in ("example_inputs", "dummy_input"):
        if hasattr(mod, name):
            val = getattr(mod, name)
            if callable(val) and not isinstance(val, torch.Tensor):
                val = val()
            return val
    raise LoadError(
        f"{where} defines no `example_inputs`: add e.g. `example_inputs = torch.randn(1, 3, 32, 32)`"
    )


def namespace_of(spec: str) -> ModuleType | None:
    """The namespace a spec's hooks live in (``calibration_batches``, ``evaluate``, ``finetune``):
    the model file, imported once per process (a file ``load_spec`` read is not run again), or
    the module of ``pkg.module:attr``; None for ``zoo:`` specs."""
    if spec.startswith("zoo:"):
        return None
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise LoadError(f"model file '{spec}' does not exist: pass a model.py or pkg.module:attr")
        loaded = sys.modules.get(f"_slimc_user_{path.stem}_{abs(hash(str(path.resolve())))}")
        return loaded if loaded is not None else _import_file(path)
    modname = spec.partition(":")[0]
    try:
        return importlib.import_module(modname)
    except Exception as e:
        raise LoadError(f"cannot import '{modname}' ({with_cause(e)}): check the spec or PYTHONPATH") from e
