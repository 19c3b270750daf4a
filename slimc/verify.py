"""The contract: slim(x) ≈ apply(original, final_masks)(x); final masks ⊇ user masks;
the slim model holds exactly the parameters its kept indices imply."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from slimc.copying import safe_copy
from slimc.errors import VerifyError
from slimc.masks import MaskSet

TOLERANCE = 1e-5  # max abs diff ≤ TOLERANCE × output scale (fp32)


@dataclass
class Check:
    max_abs_diff: float
    output_scale: float
    tolerance: float
    ok: bool
    vs_user_masked: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def flat_outputs(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in flat_outputs(v)]
    if hasattr(y, "to_tuple"):
        return flat_outputs(y.to_tuple())
    return []


def random_like(inputs: tuple, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            out.append(torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device))
        else:
            out.append(t)
    return tuple(out)


def masked_copy(model: nn.Module, masks: MaskSet | dict) -> nn.Module:
    ms = masks if isinstance(masks, MaskSet) else MaskSet(dict(masks))
    return ms.apply(safe_copy(model)).eval()


def _run(m: nn.Module, x: tuple) -> list[torch.Tensor]:
    mods = list(m.modules())
    modes = [mod.training for mod in mods]
    m.eval()
    try:
        with torch.no_grad():
            return flat_outputs(m(*x))
    finally:
        for mod, t in zip(mods, modes):
            mod.training = t


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    if len(a) != len(b):
        raise VerifyError(f"the slim model returns {len(a)} outputs, the reference {len(b)}")
    diff, scale = 0.0, 0.0
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise VerifyError(f"output {i} has shape {tuple(x.shape)} in the slim model but {tuple(y.shape)} in the reference")
        if x.is_floating_point():
            diff = max(diff, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
            scale = max(scale, float(y.float().abs().max()) if y.numel() else 0.0)
        elif not torch.equal(x, y):
            diff = float("inf")
    return diff, scale


class _Masked(nn.Module):
    """``original`` run with masked params, without copying the model."""

    def __init__(self, original: nn.Module, masks: dict):
        super().__init__()
        self.original = original
        params = dict(original.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            self.params = {k: params[k] * m.to(params[k].dtype) for k, m in masks.items() if k in params}

    def forward(self, *x):
        return torch.func.functional_call(self.original, self.params, x, tie_weights=False, strict=False)


def check(slim: nn.Module, original: nn.Module, final_masks: dict, example_inputs: tuple,
          user_masks: MaskSet | None = None, seeds: Iterable[int] = (0,)) -> Check:
    ref = _Masked(original, final_masks)
    user = _Masked(original, user_masks.masks) if user_masks is not None else None
    diff, scale, vs_user = 0.0, 0.0, 0.0
    for x in [example_inputs, *(random_like(example_inputs, s) for s in seeds)]:
        ys = _run(slim, x)
        d, s = max_diff(ys, _run(ref, x))
        diff, scale = max(diff, d), max(scale, s)
        if user is not None and x is example_inputs:
            vs_user = max_diff(ys, _run(user, x))[0]
    tol = TOLERANCE * max(scale, 1.0)
    return Check(diff, scale, tol, diff <= tol, vs_user if user is not None else None)


def masks_cover(final: dict, user: MaskSet) -> list[str]:
    """Names of params where the final masks would un-zero a user-masked entry."""
    bad = []
    for fqn, m in user.masks.items():
        f = final.get(fqn)
        if f is None or bool((m == 0).logical_and(f != 0).any()):
            bad.append(fqn)
    return bad
