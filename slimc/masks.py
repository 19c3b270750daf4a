"""Masks: load the three accepted formats and normalize them to structured masks.

A :class:`MaskSet` maps parameter FQNs to 0/1 tensors of the parameter's shape. It
knows, for every parameter and dim, which slices are entirely zero (``zero_slices``):
that is what the propagation consumes. Zeros that do not fill a whole slice are
unstructured sparsity — kept and counted in the report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from slimc.errors import LoadError, MaskError

PRUNE_SUFFIXES = ("_mask", "_orig")


@dataclass
class MaskSet:
    """Binary masks keyed by parameter FQN, each with the parameter's shape."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    def __contains__(self, fqn: str) -> bool:
        return fqn in self.masks

    def get(self, fqn: str) -> torch.Tensor | None:
        return self.masks.get(fqn)

    def zero_slices(self, fqn: str, dim: int) -> torch.Tensor:
        """Bool tensor over ``dim``: True where the whole slice of the mask is zero."""
        m = self.masks.get(fqn)
        if m is None:
            raise KeyError(fqn)
        other = [d for d in range(m.dim()) if d != dim]
        if not other:
            return m == 0
        return (m != 0).sum(dim=other) == 0

    def unstructured_zeros(self) -> dict[str, int]:
        """Per parameter: zeros that lie outside fully-zero slices along dim 0 and dim 1."""
        out: dict[str, int] = {}
        for fqn, m in self.masks.items():
            z = m == 0
            covered = torch.zeros_like(z)
            for d in range(min(2, m.dim())):
                zs = self.zero_slices(fqn, d)
                shape = [1] * m.dim()
                shape[d] = -1
                covered |= zs.view(shape).expand_as(z)
            n = int((z & ~covered).sum())
            if n:
                out[fqn] = n
        return out

    def apply(self, model: nn.Module) -> nn.Module:
        """Multiply every masked parameter of ``model`` in place (call on a copy)."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for fqn, m in self.masks.items():
                if fqn in params:  # a traced graph drops modules forward() never uses
                    params[fqn].mul_(m.to(params[fqn].dtype))
        return model

    def to_state(self) -> dict[str, torch.Tensor]:
        return {k: v.to(torch.uint8) for k, v in self.masks.items()}


def _as_binary(name: str, t: object, shape: torch.Size) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise MaskError(f"mask '{name}' is a {type(t).__name__}, not a tensor: store 0/1 tensors of the parameter's shape")
    if tuple(t.shape) != tuple(shape):
        raise MaskError(
            f"mask '{name}' has shape {tuple(t.shape)} but the parameter has shape {tuple(shape)}: "
            "masks must have the parameter's own shape"
        )
    if t.is_floating_point() or t.is_complex():
        bad = ~((t == 0) | (t == 1))
    elif t.dtype == torch.bool:
        bad = torch.zeros_like(t)
    else:
        bad = ~((t == 0) | (t == 1))
    if bool(bad.any()):
        v = t[bad].flatten()[0].item()
        raise MaskError(f"mask '{name}' is not binary (found value {v!r}): use 0 for pruned and 1 for kept entries")
    return (t != 0).to(torch.bool).cpu()


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
        raise MaskError(f"masks must be a dict, got {type(raw).__name__}: see the mask formats in the README")
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
        out[name] = _as_binary(name, m, params[name].shape)
    # tied weights (lm_head = embedding): a mask on one name masks the shared tensor, whatever
    # name the traced graph reads it under
    by_id: dict[int, list[str]] = {}
    for name, p in params.items():
        by_id.setdefault(id(p), []).append(name)
    for names in by_id.values():
        given = [out[n] for n in names if n in out]
        if len(names) > 1 and given:
            joint = given[0].clone()
            for m in given[1:]:
                joint = joint * m
            for n in names:
                out[n] = joint.clone()
    return MaskSet(out)


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(
            f"cannot read masks file '{p}' ({first[:160]}): save masks with torch.save(dict_of_tensors) or safetensors"
        ) from e
    if isinstance(obj, Mapping) and "masks" in obj and isinstance(obj["masks"], Mapping):
        obj = obj["masks"]
    if not isinstance(obj, Mapping):
        raise LoadError(f"masks file '{p}' holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def save_masks(masks: Mapping[str, object], path: str | os.PathLike) -> None:
    """Write masks as uint8, flat ``{param: m}`` or NNI ``{module: {"weight": m}}``, atomically."""
    from slimc.atomic import atomic_path

    def uint8(v: object) -> object:
        return {k: uint8(x) for k, x in v.items()} if isinstance(v, Mapping) else v.to(torch.uint8)  # type: ignore[attr-defined]

    with atomic_path(path) as tmp:
        torch.save({k: uint8(v) for k, v in masks.items()}, tmp)
