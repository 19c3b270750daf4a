"""Pooling, resampling and reductions: channels pass, pooled/reduced dims are fixed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import Coupling, NeedsZero, OpView, Unsupported, aten, shape_rule

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
                  "upsample_nearest2d.default", "upsample_bicubic2d.vec"))
def resample(op: OpView) -> Coupling | Unsupported:
    """Upsample / interpolate: batch and channel dims pass; spatial dims are resampled (fixed)."""
    x = op.arg(0, "input")
    return _channels_pass(op, x, 2, "spatial dim resampled")


@shape_rule(nn.PixelShuffle, nn.PixelUnshuffle, F.pixel_shuffle, F.pixel_unshuffle)
def pixel_shuffle(op: OpView) -> Unsupported:
    """Pixel shuffle folds channels into space: not supported yet."""
    return Unsupported("pixel (un)shuffle folds channels into spatial dims")


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
    xs = op.shape(x)
    dims = _dims(op, len(xs))
    if dims is None:
        return Unsupported("reduction over computed dims")
    keep = op.arg(2, "keepdim", False) or op.node.kwargs.get("keepdim", False)
    c = Coupling()
    od = 0
    for d in range(len(xs)):
        if d in dims:
            if op.node.target in ADDITIVE:
                c.cover(op.slot(x, d))
                c.constraints.append(NeedsZero(op.slot(x, d), f"'{op.node.name}' sums over dim {d}"))
            else:
                c.barrier(op.slot(x, d), f"reduced by {op.node.target}")
            if keep:
                c.cover(op.out(od))
                od += 1
        else:
            c.flow(op.slot(x, d), op.out(od))
            od += 1
    return c
