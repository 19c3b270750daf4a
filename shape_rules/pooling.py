"""Pooling, resampling and reductions: channels pass, pooled/reduced dims are fixed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import Coupling, NeedsZero, OpView, Reshape, Unsupported, aten, identity_all, shape_rule

POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.LPPool1d: 1, nn.LPPool2d: 2,
}
POOL_FUNCTIONS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
}

for _name, _k in [("max_pool1d.default", 1), ("max_pool2d.default", 2), ("max_pool3d.default", 3),
                  ("avg_pool1d.default", 1), ("avg_pool2d.default", 2), ("avg_pool3d.default", 3),
                  ("adaptive_avg_pool1d.default", 1), ("adaptive_avg_pool2d.default", 2),
                  ("adaptive_avg_pool3d.default", 3), ("_adaptive_avg_pool2d.default", 2)]:
    for _op in aten(_name):
        POOL_FUNCTIONS[_op] = _k


def _spatial_count(op: OpView) -> int | None:
    if op.module is not None:
        return POOL_MODULES.get(type(op.module))
    return POOL_FUNCTIONS.get(op.node.target)


@shape_rule(*POOL_MODULES, *POOL_FUNCTIONS)
def pool(op: OpView) -> Coupling | Unsupported:
    """Pooling: leading (batch, channel) dims pass one-to-one; pooled dims are fixed."""
    k = _spatial_count(op)
    x = op.arg(0, "input")
    xs, out = op.shape(x), op.out_shape
    if not isinstance(out, tuple):
        return Unsupported("pooling that also returns indices")
    return _channels_pass(op, x, len(xs) - k, "spatial dim pooled")


def _channels_pass(op: OpView, x, n_lead: int, why: str, *, zero_ok: bool = True) -> Coupling:
    xs = op.shape(x)
    c = Coupling()
    for d in range(n_lead):
        c.flow(op.slot(x, d), op.out(d), zero_ok=zero_ok)
    for d in range(n_lead, len(xs)):
        c.barrier(op.slot(x, d), why)
        c.barrier(op.out(d), why)
    return c


@shape_rule(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, F.interpolate, F.upsample,
            *aten("upsample_bilinear2d.vec", "upsample_nearest2d.vec", "upsample_bilinear2d.default",
                  "upsample_nearest2d.default", "upsample_bicubic2d.vec", "upsample_bicubic2d.default",
                  "upsample_nearest1d.vec", "upsample_nearest1d.default", "upsample_nearest3d.vec",
                  "upsample_nearest3d.default", "upsample_linear1d.vec", "upsample_linear1d.default",
                  "upsample_trilinear3d.vec", "upsample_trilinear3d.default", "_upsample_nearest_exact1d.vec",
                  "_upsample_nearest_exact2d.vec", "_upsample_nearest_exact3d.vec", "_upsample_bilinear2d_aa.vec",
                  "_upsample_bicubic2d_aa.vec"))
def resample(op: OpView) -> Coupling | Unsupported:
    """Upsample / interpolate: batch and channel dims pass; spatial dims are resampled (fixed)."""
    x = op.arg(0, "input")
    return _channels_pass(op, x, 2, "spatial dim resampled")


SHUFFLES = (nn.PixelShuffle, F.pixel_shuffle, *aten("pixel_shuffle.default"))


@shape_rule(*SHUFFLES, nn.PixelUnshuffle, F.pixel_unshuffle, *aten("pixel_unshuffle.default"))
def pixel_shuffle(op: OpView) -> Coupling | Unsupported:
    """Pixel shuffle: input channel c·r² + i·r + j is sub-pixel (i, j) of output channel c —
    the channel dim reshaped to (C, r, r) with the r axes moved into space (fixed), so an
    output channel goes with all r² of its input channels. Unshuffle is the inverse."""
    x = op.arg(0, "input")
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(out, tuple) or len(xs) < 3:
        return Unsupported("pixel (un)shuffle of a non-image tensor")
    shuffle = isinstance(op.module, nn.PixelShuffle) or op.node.target in SHUFFLES
    if op.module is not None:
        r = op.module.upscale_factor if shuffle else op.module.downscale_factor
    else:
        r = op.arg(1)
    if not isinstance(r, int):
        return Unsupported("pixel (un)shuffle with a computed factor")
    ch = len(xs) - 3
    c = Coupling()
    for d in range(ch):
        c.flow(op.slot(x, d), op.out(d))
    sub = [("v", f"{op.node.name}#r{k}", 0) for k in (0, 1)]
    for v in sub:
        c.virtual[v] = r
        c.barrier(v, "pixel (un)shuffle: sub-pixel position")
    for d in (ch + 1, ch + 2):
        c.barrier(op.slot(x, d), "spatial dim (pixel shuffle)")
        c.barrier(op.out(d), "spatial dim (pixel shuffle)")
    if shuffle:
        c.reshapes.append(Reshape(op.slot(x, ch), [op.out(ch), *sub], [out[ch], r, r], True, op.node.name))
    else:
        c.reshapes.append(Reshape(op.out(ch), [op.slot(x, ch), *sub], [xs[ch], r, r], False, op.node.name))
    return c


def _dims(op: OpView, nd: int) -> list[int] | None:
    dim = op.arg(1, "dim")
    if dim is None and "axis" in op.node.kwargs:
        dim = op.node.kwargs["axis"]
    if dim is None:
        return list(range(nd))
    if isinstance(dim, int):
        return [dim % nd]
    if isinstance(dim, (list, tuple)) and all(isinstance(d, int) for d in dim):
        return sorted(d % nd for d in dim)
    return None


MEANS = (torch.mean, "mean", *aten("mean.dim"))
ADDITIVE = (*MEANS, torch.sum, "sum", *aten("sum.dim_IntList"))


@shape_rule(torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin",
            *aten("mean.dim", "sum.dim_IntList", "amax.default", "amin.default"))
def reduce(op: OpView) -> Coupling | Unsupported:
    """Reduction: kept dims pass one-to-one. A sum or mean reads every channel of a reduced
    dim: removed channels must be zero there (a mean is then rewritten to divide by the
    original count: RMSNorm, a channels-first LayerNorm); max/min dims are fixed."""
    x = op.arg(0, "input")
    if not isinstance(x, fx.Node):
        return Unsupported("reduction of a non-tensor")
    dims = _dims(op, len(op.shape(x)))
    if dims is None:
        return Unsupported("reduction over computed dims")
    keep = op.arg(2, "keepdim", False) or op.node.kwargs.get("keepdim", False)
    return _reduced(op, x, dims, keep, op.node.target in ADDITIVE)


def _reduced(op: OpView, x: fx.Node, dims: list[int], keep: bool, additive: bool) -> Coupling:
    """Kept dims pass; a reduced dim is read whole: an additive reduction (sum, mean, a
    p-norm) needs removed channels zero there, a max/min fixes it."""
    xs = op.shape(x)
    c = Coupling()
    od = 0
    out_dims = len(op.out_shape) if isinstance(op.out_shape, tuple) else 0
    for d in range(len(xs)):
        if d in dims:
            if additive:
                c.cover(op.slot(x, d))
                c.constraints.append(NeedsZero(op.slot(x, d), f"'{op.node.name}' sums over dim {d}"))
                if out_dims:  # every position of a summed dim is read wherever the result is
                    c.use(op.slot(x, d), op.out(0))
            else:
                c.barrier(op.slot(x, d), f"reduced by {op.node.target}")
            if keep:
                c.cover(op.out(od))
                od += 1
        else:
            c.flow(op.slot(x, d), op.out(od))
            od += 1
    return c


NORMS = ("norm", torch.norm, torch.linalg.vector_norm, *aten("linalg_vector_norm.default", "norm.ScalarOpt_dim"))


@shape_rule(*NORMS)
def vector_norm(op: OpView) -> Coupling | Unsupported:
    """Vector p-norm over dims (ConvNeXt-V2's GRN): kept dims pass; a removed channel must
    be zero in a reduced dim, where it then adds nothing to the norm."""
    x = op.arg(0, "input")
    xs = op.shape(x)
    if xs is None or not isinstance(op.out_shape, tuple):
        return Unsupported("norm of a non-tensor")
    dim = op.arg(2, "dim")
    if dim is None:
        dims = list(range(len(xs)))
    elif isinstance(dim, int):
        dims = [dim % len(xs)]
    elif isinstance(dim, (list, tuple)) and all(isinstance(d, int) for d in dim):
        dims = sorted(d % len(xs) for d in dim)
    else:
        return Unsupported("norm over computed dims")
    return _reduced(op, x, dims, bool(op.arg(3, "keepdim", False)), True)


@shape_rule(F.normalize)
def normalize(op: OpView) -> Coupling | Unsupported:
    """F.normalize(x, p, dim): x / ‖x‖ along ``dim``: every dim passes (zeros stay zeros);
    a removed channel must be zero along ``dim``, where it adds nothing to the norm."""
    x, dim = op.arg(0, "input"), op.arg(2, "dim", 1)
    xs = op.shape(x)
    if xs is None or not isinstance(dim, int):
        return Unsupported("normalize along a computed dim")
    c = identity_all(Coupling(), op, x)
    c.constraints.append(NeedsZero(op.slot(x, dim), f"'{op.node.name}' normalizes over dim {dim % len(xs)}"))
    return c
