"""Convolutions: Conv1d/2d/3d (plain, grouped, depthwise), ConvTranspose1d/2d/3d."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from slimc.shape_rules import Coupling, HeadAxis, OpView, Reshape, Unsupported, aten, arange, resizer, shape_rule, tie

SPATIAL = "spatial dim mixed by the convolution kernel"
FUNCTIONAL_CONVS = (F.conv1d, F.conv2d, F.conv3d, *aten("conv1d.default", "conv2d.default", "conv3d.default"))
FUNCTIONAL_CONV_TRANSPOSES = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                              *aten("conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input"))


def _conv_slots(op: OpView):
    """(x, weight slot fn, bias slot fn or None, groups) for module or functional form."""
    wb = op.weight_bias()
    groups = op.module.groups if op.module is not None else op.arg(6, "groups", 1)
    if wb is None or not isinstance(groups, int):
        return None
    return (op.arg(0, "input"), *wb, groups)


def _spatial(c: Coupling, op: OpView, x) -> None:
    for d in range(2, len(op.shape(x))):
        c.barrier(op.slot(x, d), SPATIAL)
        c.barrier(op.out(d), SPATIAL)


def _conv_start(op: OpView, what: str):
    """What every convolution starts from: the batch passes, spatial dims are barriers, the
    bias follows the output channel. ``(coupling, x, weight slot fn, groups, in, out)``, or
    Unsupported (a computed functional weight, bias or groups; an unbatched input)."""
    parts = _conv_slots(op)
    if parts is None:
        return Unsupported(f"functional {what} whose weight/bias/groups are not plain params and ints")
    x, w, b, groups = parts
    xs, os_ = op.shape(x), op.out_shape
    if len(xs) < 3 or len(os_) != len(xs):
        return Unsupported("unbatched convolution input")
    c = Coupling().flow(op.slot(x, 0), op.out(0))
    _spatial(c, op, x)
    if b is not None:
        c.param("follower", b(0), op.out(1), term=1)
    return c, x, w, groups, xs[1], os_[1]


@shape_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, *FUNCTIONAL_CONVS)
def conv(op: OpView) -> Coupling | Unsupported:
    """out channels ← weight rows (source); in channels → weight cols (sink); bias follows. Grouped: whole groups go (the group width stays) or the same positions in every group."""
    start = _conv_start(op, "conv")
    if isinstance(start, Unsupported):
        return start
    c, x, w, groups, cin, cout = start
    if groups == 1:
        c.param("sink", w(1), op.slot(x, 1))
        c.param("source", w(0), op.out(1))
    elif groups == cin:  # depthwise, channel multiplier m: out o = c*m + k
        m = cout // cin
        o = arange(cout)
        c.flow(op.slot(x, 1), op.out(1), o // m, o)  # product of input and weight row
        c.param("source", w(0), op.out(1))
        c.cover(w(1))
    else:
        _grouped(c, op, x, w, groups, cin, cout)
    return c


def group_slot(node_name: str) -> tuple:
    """The virtual slot of a grouped conv's groups (its kept size is the slim ``groups``)."""
    return ("v", f"{node_name}#groups", 0)


def _grouped(c: Coupling, op: OpView, x, w, groups: int, cin: int, cout: int) -> None:
    """Grouped conv: in and out channels are (group, position) products sharing one group
    axis, so the kept set is kept groups × kept positions: whole groups go (the group width
    stays, what the kernels like) and positions go in every group (groups stay aligned)."""
    name = op.node.name
    ci, co = cin // groups, cout // groups
    g, pin, pout = group_slot(name), ("v", f"{name}#in", 0), ("v", f"{name}#out", 0)
    c.virtual.update({g: groups, pin: ci, pout: co})
    c.reshapes.append(Reshape(op.slot(x, 1), [g, pin], [groups, ci], True, name))
    c.reshapes.append(Reshape(op.out(1), [g, pout], [groups, co], False, name))
    c.param("sink", w(1), pin)
    c.param("source", w(0), op.out(1))
    c.constraints.append(HeadAxis(g, unit="conv groups"))


@shape_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, *FUNCTIONAL_CONV_TRANSPOSES)
def conv_transpose(op: OpView) -> Coupling | Unsupported:
    """Transposed conv: weight is (in, out/groups, *k): rows sink the input, cols source the
    output. Grouped: the same in/out positions go in every group (groups stay aligned);
    depthwise (groups = in): input channel i makes outputs i·m … i·m+m-1."""
    start = _conv_start(op, "transposed conv")
    if isinstance(start, Unsupported):
        return start
    c, x, w, groups, cin, cout = start
    o = arange(cout)
    if groups == 1:
        c.param("sink", w(0), op.slot(x, 1))
        c.param("source", w(1), op.out(1))
    elif groups == cin:  # depthwise, multiplier m: output o = i·m + k is made by weight row i alone
        m = cout // cin
        c.flow(op.slot(x, 1), op.out(1), o // m, o)
        c.param("source", w(0), op.out(1), o // m, o)
        c.cover(w(1))
    else:  # grouped: input i is row i; output o is column o % (out/groups) of its group
        ci, co = cin // groups, cout // groups
        c.param("sink", w(0), op.slot(x, 1))
        c.param("source", w(1), op.out(1), o % co, o)
        i = arange(cin)
        c.links.append(tie(op.slot(x, 1), op.slot(x, 1), i, i % ci))
    return c


@resizer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _resize_conv(m: nn.Module, new: dict) -> None:
    w = new["weight"]
    if m.groups > 1 and m.groups == m.in_channels:
        mult = m.out_channels // m.in_channels
        m.in_channels = w[0] // mult
        m.groups = m.in_channels
    else:
        if m.groups > 1 and "__input__" in new:  # whole groups went: as many groups as kept
            m.groups = new["__input__"][1] // w[1]
        m.in_channels = w[1] * m.groups
    m.out_channels = w[0]


@resizer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _resize_convt(m: nn.Module, new: dict) -> None:
    w = new["weight"]
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise: one group per input channel
        m.groups = w[0]
    m.in_channels, m.out_channels = w[0], w[1] * m.groups

