"""Normalizations over a pruned dim, in the user's own modules.

The graph rewrite makes them exact with extra nodes; a module keeps its code, so:

* an ``nn.LayerNorm`` (or a subclass that keeps its forward) becomes the exact subclass
  (:mod:`slimc.surgery.modules`);
* an RMS norm (``x * rsqrt(mean(x²) + eps) * w``: HF ``LlamaRMSNorm``, ``nn.RMSNorm``,
  timm ``RmsNorm``…) stays what it is, with its weight scaled by √(C/C′) and eps by C/C′
  — the same function over the kept channels. Which of the known forms a module computes
  is *measured*: each candidate is tried on random inputs against the original module;
* anything else over a pruned dim blocks the user's class (``--renorm``, or keeping those
  channels, are the ways out), naming the line.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimc.surgery.modules import exact_layernorm_class

EPS_NAMES = ("variance_epsilon", "eps", "epsilon")


def _is_plain_layernorm(m0: nn.Module, eps: float, c_old: int) -> bool:
    """Does ``m0`` compute ``F.layer_norm`` over the last dim with its weight and bias?"""
    w, b = getattr(m0, "weight", None), getattr(m0, "bias", None)
    if not isinstance(w, torch.Tensor) or w.shape != (c_old,):
        return False
    x = torch.randn(2, 3, c_old, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            got, want = m0(x), F.layer_norm(x, (c_old,), w, b if isinstance(b, torch.Tensor) else None, eps)
    except Exception:
        return False
    return isinstance(got, torch.Tensor) and got.shape == want.shape and bool(torch.allclose(got, want, atol=1e-5))


def _layernorm(m0: nn.Module | None, m: nn.Module, ev) -> str | None:
    """nn.LayerNorm (with its own forward) or any module that measures as a plain layer norm
    (nanoGPT's, timm's fast-norm LayerNorm) → its exact subclass."""
    eps = ev.detail.get("eps", 1e-5)
    if isinstance(m, nn.LayerNorm) and type(m).forward is nn.LayerNorm.forward:
        pass
    elif m0 is None or not _is_plain_layernorm(m0, eps, ev.old):
        return f"{type(m).__name__} normalizes over pruned channels and is not a plain layer norm"
    else:
        m.slimc_eps = eps
    m.__class__ = exact_layernorm_class(type(m))
    m.full_features = ev.old
    return None


def _eps_name(m: nn.Module) -> str | None:
    return next((a for a in EPS_NAMES if isinstance(getattr(m, a, None), float)), None)


def _rescale(m: nn.Module, eps: str, ratio: float, offset: float) -> None:
    """An RMS norm over C′ = C/ratio channels that equals the original over C with zeros:
    (offset + γ′) = (offset + γ)·√ratio, ε′ = ε·ratio (``offset`` 1 for the (1 + γ) form)."""
    s = math.sqrt(ratio)
    if not m.weight.is_meta:
        with torch.no_grad():
            m.weight.copy_((m.weight + offset) * s - offset)
    setattr(m, eps, getattr(m, eps) * ratio)


def _rms(m0: nn.Module | None, m1: nn.Module, ev, path: str, transforms: list[dict]) -> str | None:
    """Which RMS form the module computes is measured on random inputs against the original
    (γ, or 1 + γ as in Gemma); on the meta device (no values to measure) its class name says."""
    dims = ev.position
    eps = _eps_name(m1)
    w = getattr(m1, "weight", None)
    if len(dims) != 1 or eps is None or not isinstance(w, torch.Tensor) or w.dim() != 1:
        return f"{type(m1).__name__} averages over pruned channels and is not an RMS norm slimc can rescale"
    d, ratio = dims[0], ev.old / ev.new
    if w.is_meta:
        name = type(m1).__name__.lower()
        if "rms" not in name:
            return f"{type(m1).__name__} averages over pruned channels; on the meta device slimc cannot measure it"
        offsets = [1.0 if "gemma" in name else 0.0]
    else:
        offsets = [0.0, 1.0]
    kept = torch.as_tensor(ev.detail["kept"][d], dtype=torch.long)
    for off in offsets:
        w0, e0 = m1.weight.detach().clone(), getattr(m1, eps)
        _rescale(m1, eps, ratio, off)
        if w.is_meta or _matches(m0, m1, d, kept, ev.old, ev.detail["shape"]):
            transforms.append({"param": f"{path}.weight" if path else "weight", "scale": math.sqrt(ratio),
                               "offset": off})
            return None
        with torch.no_grad():
            m1.weight.copy_(w0)
        setattr(m1, eps, e0)
    return f"{type(m1).__name__} averages over pruned channels and is not an RMS norm slimc can rescale"


def _matches(m0: nn.Module, m1: nn.Module, dim: int, kept: torch.Tensor, c_old: int, shape: tuple) -> bool:
    """Does the slim module on the kept channels give the original's output there, for random
    inputs whose removed channels are zero?"""
    g = torch.Generator().manual_seed(0)
    full = [min(n, 3) for n in shape]
    full[dim] = c_old
    x = torch.randn(full, generator=g)
    removed = torch.ones(c_old, dtype=torch.bool)
    removed[kept] = False
    x.index_fill_(dim, torch.nonzero(removed).flatten(), 0.0)
    try:
        with torch.no_grad():
            want = m0(x).index_select(dim, kept)
            got = m1(x.index_select(dim, kept))
    except Exception:
        return False
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(want.abs().max()))))


def _masked_module(original: nn.Module, path: str, final_masks: dict) -> nn.Module:
    import copy

    m = copy.deepcopy(original.get_submodule(path) if path else original)
    prefix = f"{path}." if path else ""
    with torch.no_grad():
        for name, p in m.named_parameters():
            mask = final_masks.get(prefix + name)
            if mask is not None:
                p.mul_(mask.to(p.dtype))
    return m.eval()


def fix_norms(slim: nn.Module, original: nn.Module, final_masks: dict, events: list,
              renorm: bool) -> tuple[list[str], list[str], list[dict]]:
    """Returns (notes, blockers, weight transforms made: {"param", "scale", "offset"})."""
    notes, blockers, done, transforms = [], [], set(), []
    for ev in events:
        if ev.kind not in ("mean", "layernorm") or ev.module in done:
            continue
        done.add(ev.module)
        try:
            m1 = slim.get_submodule(ev.module) if ev.module else slim
            m0 = None if any(t.is_meta for t in m1.parameters()) else _masked_module(original, ev.module, final_masks)
        except AttributeError:
            blockers.append(f"{ev.source or ev.node}: a normalization over pruned channels outside any module")
            continue
        if renorm:
            continue  # plain norms over the kept channels, reported approximate
        why = _layernorm(m0, m1, ev) if ev.kind == "layernorm" else _rms(m0, m1, ev, ev.module, transforms)
        if why is None:
            notes.append(f"{ev.module}: {type(m1).__mro__[1].__name__ if ev.kind == 'layernorm' else type(m1).__name__} over {ev.new} of {ev.old} channels, made exact")
        else:
            blockers.append(f"{ev.source or ev.node}: {why} ({ev.module}); use --renorm (approximate) "
                            "or keep these channels")
    return notes, blockers, transforms


__all__ = ["fix_norms"]
