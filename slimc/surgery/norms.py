"""Normalizations over a pruned dim, in the user's own modules.

The graph rewrite makes them exact with extra nodes; a module keeps its code, so:

* an ``nn.LayerNorm`` (or a subclass that keeps its forward) becomes the exact subclass
  (:mod:`slimc.surgery.modules`); so does any module that *measures* as a layer norm — over
  which dim of its input (the last, or the channels of NCHW: ConvNeXt's ``LayerNorm2d``),
  scaled and shifted by which of its tensors (OLMo's has none), computed in float32 and
  cast back or not — its class kept (``isinstance`` holds) and checked on the kept channels;
* an RMS norm (``x * rsqrt(mean(x²) + eps) * w``: HF ``LlamaRMSNorm``, ``nn.RMSNorm``,
  timm ``RmsNorm``…) stays what it is, with its weight scaled by √(C/C′) and eps by C/C′
  — the same function over the kept channels. Which of the known forms a module computes
  is *measured*: each candidate is tried on random inputs against the original module;
* anything else over a pruned dim blocks the user's class (``--renorm``, or keeping those
  channels, are the ways out), naming the line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimc.surgery.modules import exact_layernorm_class

EPS_NAMES = ("variance_epsilon", "eps", "epsilon")


@dataclass(frozen=True)
class LayerNormForm:
    """What a module measured as a layer norm computes: over which dim of its input (-1: the
    last), scaled and shifted by which of its own tensors ("": none)."""

    dim: int
    weight: str
    bias: str


def _trial_shapes(shape: tuple, dim: int, c_old: int) -> list[list[int]]:
    """Input shapes to measure a norm over ``dim`` at: the other dims cut to 3 (small, and no
    other dim of the channels' size), then the recorded shape (a module that needs it)."""
    small = [min(n, 3) for n in shape]
    small[dim] = c_old
    return [small] if small == list(shape) else [small, list(shape)]


def _affine_forms(m: nn.Module, c_old: int) -> list[tuple[str, str]]:
    """(scale, shift) pairs of the module's own per-channel tensors, the most specific first."""
    vecs = [n for n, t in [*m._parameters.items(), *m._buffers.items()]
            if isinstance(t, torch.Tensor) and tuple(t.shape) == (c_old,)]
    return [(w, b) for w in [*vecs, ""] for b in [*vecs, ""] if w != b or not w]


def measure_layernorm(m0: nn.Module, shape: tuple, c_old: int, eps: float) -> LayerNormForm | None:
    """Which layer norm ``m0`` computes, measured on random inputs (and random values in its
    per-channel tensors, so that γ = 1, β = 0 at init cannot hide one) against
    ``F.layer_norm`` over each dim of the channels' size; None where none matches."""
    import copy

    m = copy.deepcopy(m0).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [*m.parameters(), *m.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
    nd = len(shape)
    dims = [d for d in [nd - 1, *range(nd - 1)] if shape[d] == c_old]
    for d in dims:
        for trial in _trial_shapes(shape, d, c_old):
            x = torch.randn(trial, generator=g)
            try:
                with torch.no_grad():
                    got = m(x)
            except Exception:
                continue
            if not isinstance(got, torch.Tensor) or got.shape != x.shape:
                break
            for w, b in _affine_forms(m, c_old):
                want = F.layer_norm(x.movedim(d, -1), (c_old,), getattr(m, w) if w else None,
                                    getattr(m, b) if b else None, eps).movedim(-1, d)
                if torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                    return LayerNormForm(-1 if d == nd - 1 else d, w, b)
            break
    return None


def _plain_layernorm(m: nn.Module) -> bool:
    """An nn.LayerNorm with nn.LayerNorm's forward: its form is known."""
    return isinstance(m, nn.LayerNorm) and type(m).forward is nn.LayerNorm.forward


def _layernorm(m0: nn.Module | None, m: nn.Module, ev, shape: tuple | None) -> str | None:
    """nn.LayerNorm (with its own forward) or any module that measures as a layer norm —
    over the last dim or the channels of NCHW (ConvNeXt's LayerNorm2d), with or without
    weight and bias (OLMo's), computed in float32 and cast back — → its exact subclass."""
    eps, kind = ev.detail.get("eps", 1e-5), type(m).__name__
    if _plain_layernorm(m):
        form = None
    elif m0 is None:
        return f"{kind} normalizes over pruned channels; on the meta device slimc cannot measure its form"
    else:
        shape = shape or ev.detail.get("shape")
        form = measure_layernorm(m0, tuple(shape), ev.old, eps) if shape else None
        if form is None:
            return f"{kind} normalizes over pruned channels and does not measure as a layer norm"
    base = type(m)
    m.__class__ = exact_layernorm_class(base)
    m.full_features = ev.old
    if form is not None:
        m.slimc_eps, m.slimc_dim, m.slimc_affine = eps, form.dim, (form.weight, form.bias)
        if tuple(getattr(m, "normalized_shape", ())) == (ev.old,):  # a size the class keeps (OLMo's)
            m.normalized_shape = (ev.new,)
        kept = torch.as_tensor(ev.detail["kept"], dtype=torch.long)
        if not _matches(m0, m, form.dim, kept, ev.old, shape):
            m.__class__ = base
            return f"{kind} measures as a layer norm, but its exact form over the kept channels differs"
    return None


def _eps_name(m: nn.Module) -> str | None:
    if isinstance(m, nn.RMSNorm) and m.eps is None:  # F.rms_norm's default: the float32 (input dtype) ε
        m.eps = torch.finfo(m.weight.dtype).eps
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
    removed = torch.ones(c_old, dtype=torch.bool)
    removed[kept] = False
    for full in _trial_shapes(shape, dim, c_old):
        x = torch.randn(full, generator=g)
        x.index_fill_(dim, torch.nonzero(removed).flatten(), 0.0)
        try:
            with torch.no_grad():
                want = m0(x).index_select(dim, kept)
                got = m1(x.index_select(dim, kept))
        except Exception:
            continue
        return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-4,
                                                               atol=1e-5 * max(1.0, float(want.abs().max()))))
    return False


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


def fix_norms(slim: nn.Module, original: nn.Module, final_masks: dict, events: list, renorm: bool,
              input_shapes: dict[str, tuple] | None = None) -> tuple[list[str], list[str], list[dict]]:
    """Returns (notes, blockers, weight transforms made: {"param", "scale", "offset"}).
    ``input_shapes``: module path → the (original) shape of its input, to measure it at."""
    notes, blockers, done, transforms = [], [], set(), []
    for ev in events:
        if ev.kind not in ("mean", "layernorm") or ev.module in done:
            continue
        done.add(ev.module)
        try:
            m1 = slim.get_submodule(ev.module) if ev.module else slim
            plain = ev.kind == "layernorm" and _plain_layernorm(m1)  # nothing to measure
            m0 = None if plain or any(t.is_meta for t in m1.parameters()) else \
                _masked_module(original, ev.module, final_masks)
        except AttributeError:
            blockers.append(f"{ev.source or ev.node}: a normalization over pruned channels outside any module")
            continue
        if renorm:
            continue  # plain norms over the kept channels, reported approximate
        kind = type(m1).__name__
        why = _layernorm(m0, m1, ev, (input_shapes or {}).get(ev.module)) if ev.kind == "layernorm" else \
            _rms(m0, m1, ev, ev.module, transforms)
        if why is None:
            notes.append(f"{ev.module}: {kind} over {ev.new} of {ev.old} channels, made exact")
        else:
            blockers.append(f"{ev.source or ev.node}: {why} ({ev.module}); use --renorm (approximate) "
                            "or keep these channels")
    return notes, blockers, transforms


__all__ = ["fix_norms"]
