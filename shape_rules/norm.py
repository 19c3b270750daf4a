"""Normalizations: BatchNorm, InstanceNorm (per channel), GroupNorm (whole groups),
LayerNorm and RMSNorm over the last dim (exact when removed channels are zero at its input)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import Blocks, Coupling, NeedsZero, OpView, Unsupported, aten, identity_all, resizer, shape_rule
from slimc.shape_rules.structural import size_query

BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
      nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _affine(c: Coupling, op: OpView, ch_slot) -> None:
    """γ·x̂ + β: γ is a factor of term 0, β term 1; running stats only follow."""
    if op.has_param("weight"):
        c.param("follower", op.p("weight", 0), ch_slot, term=0)
    if op.has_param("bias"):
        c.param("follower", op.p("bias", 0), ch_slot, term=1)
    for buf in ("running_mean", "running_var"):
        if op.has_param(buf):
            c.param("follower", op.p(buf, 0), ch_slot, term=None)


def _normalized(op: OpView, x) -> Coupling:
    """Every dim passes; a normalized value is not zero where its input is."""
    c = Coupling()
    for d in range(len(op.shape(x))):
        c.flow(op.slot(x, d), op.out(d), zero_ok=False)
    return c


# casts that keep a tensor's values: a norm reading ``self.weight.float()`` reads its weight
CASTS = ("float", "half", "bfloat16", "double", "to", "type_as", *aten("_to_copy.default", "to.dtype", "to.dtype_layout"))


def param_behind_cast(op: OpView, p):
    """The graph attribute a norm reads as γ or β: ``p`` itself, or the attribute that ``p``
    casts (timm's ``LayerNormFp32``: ``self.weight.float()``); None for a computed tensor."""
    if op.is_param(p):
        return p
    if (isinstance(p, fx.Node) and p.op in ("call_method", "call_function") and p.target in CASTS and p.args
            and op.is_param(p.args[0]) and op.shape(p.args[0]) == op.shape(p)):
        return p.args[0]
    return None


def _functional_params(c: Coupling, op: OpView, params, ch_dim: int, what: str) -> Unsupported | None:
    """γ, β (and running statistics) passed as graph attributes (or casts of them) follow the
    channel; ``params`` is ((position, keyword, term), …)."""
    for pos, name, term in params:
        p = op.arg(pos, name)
        if p is None:
            continue
        attr = param_behind_cast(op, p)
        if attr is None:
            return Unsupported(f"{what} whose weight/bias/statistics are computed tensors")
        c.param("follower", op.slot(attr, 0), op.out(ch_dim), term=term)
        if attr is not p:
            c.cover(op.slot(p, 0))  # the cast: its values are the attribute's
    return None


@shape_rule(*BN)
def batchnorm(op: OpView) -> Coupling | Unsupported:
    """Per-channel statistics: γ, β, running stats follow the channel (always exact)."""
    x = op.arg(0, "input")
    xs = op.shape(x)
    if len(xs) < 2:
        return Unsupported("unbatched normalization input")
    c = _normalized(op, x)
    _affine(c, op, op.out(1))
    return c


@shape_rule(nn.GroupNorm)
def groupnorm(op: OpView) -> Coupling | Unsupported:
    """Statistics per group of channels: only whole groups can go (num_groups shrinks)."""
    x = op.arg(0, "input")
    xs = op.shape(x)
    c = _normalized(op, x)
    _affine(c, op, op.out(1))
    per = op.module.num_channels // op.module.num_groups
    c.constraints.append(Blocks(op.slot(x, 1), per, f"GroupNorm '{op.node.target}' removes whole groups of {per}"))
    return c


@shape_rule(nn.LayerNorm)
def layernorm(op: OpView) -> Coupling | Unsupported:
    """LayerNorm over the last dim: mixes channels through its mean/var; removed channels
    must be exactly zero at its input (then the exact form or --renorm is emitted)."""
    m = op.module
    if len(m.normalized_shape) != 1:
        return Unsupported("LayerNorm over several dims (only the last dim is supported)")
    x = op.arg(0, "input")
    xs = op.shape(x)
    c = _normalized(op, x)
    _affine(c, op, op.out(-1))
    c.constraints.append(NeedsZero(op.slot(x, -1), f"LayerNorm '{op.node.target}' averages over its channels"))
    return c


LAYER_NORMS = (F.layer_norm, *aten("layer_norm.default"))


@shape_rule(*LAYER_NORMS)
def layernorm_functional(op: OpView) -> Coupling | Unsupported:
    """Functional / ATen LayerNorm: the module's coupling, γ and β as graph attributes."""
    x, shape = op.arg(0, "input"), op.arg(1, "normalized_shape")
    xs = op.shape(x)
    if isinstance(shape, fx.Node) and size_query(shape) is not None:  # F.layer_norm(x, self.weight.shape, …)
        shape = op.shape(size_query(shape)[0])
    if xs is None or not isinstance(shape, (list, tuple)) or len(shape) != 1:
        return Unsupported("LayerNorm over several dims (only the last dim is supported)")
    c = _normalized(op, x)
    bad = _functional_params(c, op, ((2, "weight", 0), (3, "bias", 1)), -1, "LayerNorm")
    if bad:
        return bad
    c.constraints.append(NeedsZero(op.slot(x, -1), f"LayerNorm '{op.node.name}' averages over its channels"))
    return c


RMS_NORMS = (F.rms_norm, *aten("rms_norm.default"))


@shape_rule(*RMS_NORMS)
def rmsnorm_functional(op: OpView) -> Coupling | Unsupported:
    """F.rms_norm (``nn.RMSNorm``'s forward) over the last dim: x·γ / rms(x), so every dim
    passes (a zero channel stays zero) and γ follows; the mean of squares reads every
    channel, so removed channels must be zero at its input (then it is made exact)."""
    x, shape = op.arg(0, "input"), op.arg(1, "normalized_shape")
    xs = op.shape(x)
    if isinstance(shape, fx.Node) and size_query(shape) is not None:
        shape = op.shape(size_query(shape)[0])
    if xs is None or not isinstance(shape, (list, tuple)) or len(shape) != 1:
        return Unsupported("RMSNorm over several dims (only the last dim is supported)")
    c = identity_all(Coupling(), op, x)
    bad = _functional_params(c, op, ((2, "weight", 0),), -1, "RMSNorm")
    if bad:
        return bad
    c.constraints.append(NeedsZero(op.slot(x, -1), f"RMSNorm '{op.node.name}' averages squares over its channels"))
    return c


# functional forms: (position, keyword, term) of weight, bias, running_mean, running_var
_FUNCTIONAL_BN = {F.batch_norm: ((3, "weight", 0), (4, "bias", 1), (1, "running_mean", None), (2, "running_var", None))}
for _op in aten("batch_norm.default", "_native_batch_norm_legit_no_training.default"):
    _FUNCTIONAL_BN[_op] = ((1, "weight", 0), (2, "bias", 1), (3, "running_mean", None), (4, "running_var", None))


@shape_rule(*_FUNCTIONAL_BN)
def batchnorm_functional(op: OpView) -> Coupling | Unsupported:
    """Functional / ATen batch norm: the same per-channel coupling, params as graph attributes."""
    x = op.arg(0, "input")
    xs = op.shape(x)
    if not isinstance(op.out_shape, tuple) or xs is None or len(xs) < 2:
        return Unsupported("batch norm with several results or an unbatched input")
    c = _normalized(op, x)
    return _functional_params(c, op, _FUNCTIONAL_BN[op.node.target], 1, "batch norm") or c


FUNCTIONAL_GROUP_NORMS = (F.group_norm, *aten("group_norm.default"))


@shape_rule(*FUNCTIONAL_GROUP_NORMS)
def groupnorm_functional(op: OpView) -> Coupling | Unsupported:
    """Functional GroupNorm (timm's GroupNorm1 subclass): the module's coupling, γ and β
    as graph attributes; whole groups only."""
    x, groups = op.arg(0, "input"), op.arg(1, "num_groups")
    xs = op.shape(x)
    if xs is None or not isinstance(groups, int) or len(xs) < 2:
        return Unsupported("group norm with computed groups or an unbatched input")
    c = _normalized(op, x)
    bad = _functional_params(c, op, ((2, "weight", 0), (3, "bias", 1)), 1, "group norm")
    if bad:
        return bad
    per = xs[1] // groups
    c.constraints.append(Blocks(op.slot(x, 1), per, f"GroupNorm '{op.node.name}' removes whole groups of {per}"))
    return c


@resizer(*BN)
def _resize_bn(m: nn.Module, new: dict) -> None:
    for k in ("weight", "running_mean"):
        if k in new:
            m.num_features = new[k][0]
            return
    if "__input__" in new:
        m.num_features = new["__input__"][1]


@resizer(nn.GroupNorm)
def _resize_gn(m: nn.Module, new: dict) -> None:
    per = m.num_channels // m.num_groups
    m.num_channels = new["weight"][0] if "weight" in new else new["__input__"][1]
    m.num_groups = m.num_channels // per


@resizer(nn.LayerNorm)
def _resize_ln(m: nn.Module, new: dict) -> None:
    m.normalized_shape = (new["weight"][0] if "weight" in new else new["__input__"][-1],)
