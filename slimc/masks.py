"""Masks: load the three accepted formats and normalize them to structured masks.

A :class:`MaskSet` maps parameter FQNs to 0/1 bool tensors that *broadcast* to the
parameter: compact where the mask is structured (``(out, 1, 1, 1)`` for conv filters,
``(out, 1)`` / ``(1, in)`` for Linear rows / columns, see :mod:`slimc.compact`), full-size
where it is not. It knows, for every parameter and dim, which slices are entirely zero
(``zero_slices``): that is what the propagation consumes. Zeros that do not fill a whole
slice are unstructured sparsity — kept and counted in the report.

Pruners write compact masks with :func:`structured_mask` (``(shape, dim, keep)`` → the
compact mask) or shrink a full-size one with :func:`compact`.
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from slimc.compact import Dim, FinalMasks, broadcasts, compact, factors_of, is_part, part_of, shrink, structured_mask
from slimc.errors import LoadError, MaskError, describe
from slimc.tensors import tied_groups

PRUNE_SUFFIXES = ("_mask", "_orig")


@dataclass
class MaskSet:
    """Binary masks keyed by parameter FQN, each a bool tensor that broadcasts to the
    parameter (``shapes``: the parameters' own shapes, as masks may be compact)."""

    masks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _zero: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.masks)

    def __contains__(self, fqn: str) -> bool:
        return fqn in self.masks

    def get(self, fqn: str) -> torch.Tensor | None:
        return self.masks.get(fqn)

    def shape(self, fqn: str) -> tuple[int, ...]:
        """The parameter's shape (the mask's own where the parameter's is not known)."""
        return self.shapes.get(fqn) or tuple(self.masks[fqn].shape)

    def zero_slices(self, fqn: str, dim: Dim) -> torch.Tensor:
        """Bool tensor over ``dim``: True where the whole slice of the mask is zero (of its
        part, for a part dim ``(dim, at, index)``: see :mod:`slimc.compact`)."""
        key = (fqn, dim)
        if key not in self._zero:
            # bool, on the CPU (normalize): numpy costs less per call
            m, dim = part_of(self.masks[fqn].numpy(), dim)
            n = self.shape(fqn)[key[1][0] if is_part(key[1]) else dim]
            other = tuple(d for d in range(m.ndim) if d != dim)
            if m.shape[dim] == 1:  # broadcast along dim: every slice is the whole mask
                z = np.full(n, not m.any())
            else:
                z = ~m.any(axis=other) if other else ~m
            self._zero[key] = torch.from_numpy(np.ascontiguousarray(z))
        return self._zero[key]

    def unstructured_zeros(self, parts: Mapping[str, list[tuple[int, int]]] | None = None) -> dict[str, int]:
        """Per parameter: zeros that lie outside fully-zero slices along dim 0 and dim 1 (a
        parameter cut in ``parts`` — ``(dim, at)`` pairs of stacked experts — outside zero
        slices along any dim and zero rows of its parts).

        Counted, not marked: a zero slice is all zeros, so the zeros it covers are its size."""
        out: dict[str, int] = {}
        for fqn, m in self.masks.items():
            shape = self.shape(fqn)
            numel = math.prod(shape)
            zeros = numel - int(np.count_nonzero(m.numpy())) * (numel // max(m.numel(), 1))
            if not zeros or not shape:
                continue
            if parts and parts.get(fqn):
                if (left := _outside_slices(m.numpy(), parts[fqn]) * (numel // max(m.numel(), 1))):
                    out[fqn] = left
                continue
            rows = int(self.zero_slices(fqn, 0).sum())
            cols = int(self.zero_slices(fqn, 1).sum()) if len(shape) > 1 else 0
            n0, n1 = shape[0], shape[1] if len(shape) > 1 else 1
            covered = (rows * n1 + n0 * cols - rows * cols) * (numel // max(n0 * n1, 1))
            if zeros > covered:
                out[fqn] = zeros - covered
        return out

    def apply(self, model: nn.Module) -> nn.Module:
        """Multiply every masked parameter of ``model`` in place (call on a copy)."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for fqn in self.masks:
                if fqn in params:  # a traced graph drops modules forward() never uses
                    for f in factors_of(self.masks, fqn):
                        params[fqn].mul_(f.to(params[fqn].device))
        return model

    def to_state(self) -> dict[str, torch.Tensor]:
        return {k: v.to(torch.uint8) for k, v in self.masks.items()}


def _outside_slices(m: np.ndarray, pairs: list[tuple[int, int]]) -> int:
    """Zeros of the (compact, bool) mask ``m`` outside its zero slices along every dim and
    outside the zero rows (along ``d``) of each part (along ``at``) for ``(d, at)`` in ``pairs``."""
    covered = np.zeros(m.shape, bool)
    for keep in [(k,) for k in range(m.ndim)] + [tuple(p) for p in pairs]:
        other = tuple(i for i in range(m.ndim) if i not in keep)
        covered |= ~m.any(axis=other, keepdims=True) if other else ~m
    return int((~m & ~covered).sum())


_NUMPY_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                 torch.float32, torch.float64}


#: masks read before, by ``id``: (weak ref to the tensor, what it was read as, its compact form)
_READ: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}
_READ_MAX = 4096
_READ_SMALL = 1 << 16  # a full-size (unstructured) compact form is kept only up to this size


def _as_binary_seen(name: str, t: object, shape: torch.Size) -> torch.Tensor:
    """:func:`_as_binary`, without reading a mask tensor again that was read before and is
    unchanged since (same object, same ``_version``: an in-place write bumps it; same storage,
    shape, dtype, device and parameter shape). Compiling one set of masks again (with and without
    the check, in another mode) then costs no pass over full-size masks. A copy of the kept
    form is returned: callers own what they get."""
    if not isinstance(t, torch.Tensor) or t.is_meta:
        return _as_binary(name, t, shape)
    key = (t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device, tuple(shape))
    hit = _READ.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == key:
        return hit[2].clone()
    out = _as_binary(name, t, shape)
    if out.numel() < t.numel() or out.numel() <= _READ_SMALL:
        if len(_READ) >= _READ_MAX:
            _READ.pop(next(iter(_READ)))
        i = id(t)

        def forget(ref: weakref.ref, i: int = i) -> None:
            if _READ.get(i, (None,))[0] is ref:
                del _READ[i]

        _READ[i] = (weakref.ref(t, forget), key, out.clone())
    return out


def _as_binary(name: str, t: object, shape: torch.Size) -> torch.Tensor:
    """``t`` validated against the parameter's ``shape``, as its smallest bool form."""
    if not isinstance(t, torch.Tensor):
        raise MaskError(f"mask '{name}' is a {type(t).__name__}, not a tensor: store 0/1 tensors of the parameter's shape")
    if not broadcasts(t.shape, shape):
        raise MaskError(
            f"mask '{name}' has shape {tuple(t.shape)}, which does not broadcast to the parameter's shape "
            f"{tuple(shape)}: give the parameter's own shape, or 1 on every dim the mask does not vary "
            "along (e.g. (out, 1) for rows, (1, in) for columns, (out, 1, 1, 1) for conv filters)"
        )
    t = shrink(t.detach())  # repeats dropped first: the checks below then touch O(channels)
    t = t.cpu()
    # small now; numpy costs less per call than torch (bfloat16 and the like: as float)
    a = t.numpy() if t.dtype in _NUMPY_DTYPES else t.float().numpy()
    if a.dtype != np.bool_:
        bad = (a != 0) & (a != 1)
        if bad.any():
            v = a[bad].flat[0].item()
            raise MaskError(f"mask '{name}' is not binary (found value {v!r}): use 0 for pruned and 1 for kept entries")
        a = a != 0
    return torch.from_numpy(np.array(a, dtype=bool, copy=True))


def _flatten(raw: Mapping[str, object]) -> dict[str, object]:
    """NNI style {module: {"weight": m, "bias": m}} or prune buffers → flat {param_fqn: m}."""
    flat: dict[str, object] = {}
    for key, val in raw.items():
        if not isinstance(key, str):
            raise MaskError(f"mask key {key!r} is not a string: key masks by parameter or module name")
        if isinstance(val, Mapping):
            for sub, m in val.items():
                flat[f"{key}.{sub}" if key else str(sub)] = m
        else:
            flat[key] = val
    if any(k.endswith("_mask") for k in flat):
        # torch.nn.utils.prune state dict: keep the *_mask buffers, drop *_orig and the rest
        flat = {k[: -len("_mask")]: v for k, v in flat.items() if k.endswith("_mask")}
    return flat


def normalize(raw: Mapping[str, object] | MaskSet | None, model: nn.Module) -> MaskSet:
    """Validate masks against ``model`` and return a MaskSet. Never skips a name silently."""
    if raw is None:
        return MaskSet()
    if isinstance(raw, MaskSet):
        raw = raw.masks
    if not isinstance(raw, Mapping):
        raise MaskError(f"masks must be a dict, got {type(raw).__name__}: see the mask formats in docs/how-to/masks.md")
    params = dict(model.named_parameters(remove_duplicate=False))
    # parameters reparametrized by torch.nn.utils.prune live as <name>_orig
    for name in list(params):
        if name.endswith("_orig"):
            params[name[: -len("_orig")]] = params.pop(name)
    out: dict[str, torch.Tensor] = {}
    for name, m in _flatten(raw).items():
        if name not in params:
            hint = _closest(name, params)
            raise MaskError(
                f"mask '{name}' matches no parameter of the model"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + ": key masks by parameter FQN, e.g. 'features.0.weight', or NNI style {'features.0': {'weight': ...}}"
            )
        out[name] = _as_binary_seen(name, m, params[name].shape)
    # tied weights (lm_head = embedding): a mask on one name masks the shared tensor, whatever
    # name the traced graph reads it under
    for names in tied_groups(params.items()):
        given = [out[n] for n in names if n in out]
        if given:
            joint = given[0].clone()
            for m in given[1:]:
                joint = joint & m
            for n in names:
                out[n] = joint.clone()
    return MaskSet(out, {n: tuple(params[n].shape) for n in out})


def _closest(name: str, params: Mapping[str, object]) -> str | None:
    import difflib

    hits = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
    return hits[0] if hits else None


def load_masks(path: str | os.PathLike) -> dict[str, object]:
    """Read a masks file (.pth/.pt with weights_only=True, or .safetensors)."""
    p = Path(path)
    if p.is_dir():
        raise LoadError(f"masks path '{p}' is a folder: pass the path of a .pth or .safetensors file")
    if not p.is_file():
        raise LoadError(f"masks file '{p}' does not exist: pass the path of a .pth or .safetensors file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(p)))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, wrong format, pickled classes
        why = describe(e, 160)
        if "WeightsUnpickler error:" in str(e):  # not torch's advice on weights_only=False: masks need no code
            why = "not a torch.save file of tensors: " + str(e).split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        raise LoadError(
            f"cannot read masks file '{p}' ({why}): save masks with torch.save(dict_of_tensors) or safetensors"
        ) from e
    if isinstance(obj, Mapping) and "masks" in obj and isinstance(obj["masks"], Mapping):
        obj = obj["masks"]
    if not isinstance(obj, Mapping):
        raise LoadError(f"masks file '{p}' holds a {type(obj).__name__}, not a dict of tensors: save masks with "
                        "torch.save({param_name: 0/1 tensor}) or safetensors")
    return dict(obj)


def save_masks(masks: Mapping[str, object], path: str | os.PathLike) -> None:
    """Write masks as uint8, flat ``{param: m}`` or NNI ``{module: {"weight": m}}``, atomically;
    compact masks stay compact (final masks are saved at their smallest broadcast shape)."""
    from slimc.atomic import atomic_path

    def uint8(v: object) -> object:
        return {k: uint8(x) for k, x in v.items()} if isinstance(v, Mapping) else v.to(torch.uint8)  # type: ignore[attr-defined]

    with atomic_path(path) as tmp:
        torch.save({k: uint8(v) for k, v in masks.items()}, tmp)


__all__ = ["FinalMasks", "MaskSet", "compact", "load_masks", "normalize", "save_masks", "structured_mask"]
