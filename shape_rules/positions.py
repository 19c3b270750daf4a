"""Ops that move positions: pad, roll, flip.

* ``F.pad`` with zeros (or any constant): input position i is output position i + before
  along a padded dim (an offset; the pad positions are constants no channel owns), so a
  channel dim padded with zeros — CIFAR ResNet's "option A" shortcut — still prunes, and
  the pad amounts need no patching. Reflect / replicate / circular padding copies edge
  positions: those dims are fixed.
* ``torch.roll`` along a dim wraps positions around its size: fixed.
* ``torch.flip`` reverses a dim: position i is n-1-i, and the kept positions stay reversed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from slimc.shape_rules import Coupling, Link, OpView, Unsupported, aten, arange, shape_rule

CONSTANT_PADS = (*aten("constant_pad_nd.default"),)
COPYING_PADS = tuple(aten("reflection_pad1d.default", "reflection_pad2d.default", "reflection_pad3d.default",
                          "replication_pad1d.default", "replication_pad2d.default", "replication_pad3d.default",
                          "_pad_circular.default"))


def _pad_args(op: OpView) -> tuple[list[int] | None, str, object]:
    """(pad amounts, mode, value) of any pad form."""
    t = op.node.target
    if t is F.pad or t in aten("pad.default"):
        return op.arg(1, "pad"), op.arg(2, "mode", "constant"), op.arg(3, "value", None)
    if t in CONSTANT_PADS:
        return op.arg(1, "pad"), "constant", op.arg(2, "value", 0)
    return op.arg(1, "padding"), "copy", None


@shape_rule(F.pad, *aten("pad.default"), *CONSTANT_PADS, *COPYING_PADS)
def pad(op: OpView) -> Coupling | Unsupported:
    """Constant padding: position i → i + before along a padded dim (an offset; channel dims
    padded with zeros still prune); reflect / replicate / circular padding fixes its dims."""
    x = op.arg(0, "input")
    amounts, mode, value = _pad_args(op)
    xs, out = op.shape(x), op.out_shape
    if xs is None or not isinstance(out, tuple) or not isinstance(amounts, (list, tuple)) or \
            not all(isinstance(a, int) for a in amounts):
        return Unsupported("pad with computed amounts")
    nd = len(xs)
    c = Coupling()
    for d in range(nd):
        k = nd - 1 - d  # pads are given from the last dim backwards
        before, after = (amounts[2 * k], amounts[2 * k + 1]) if 2 * k + 1 < len(amounts) else (0, 0)
        if before == after == 0:
            c.flow(op.slot(x, d), op.out(d))
        elif mode == "constant" and before >= 0 and after >= 0:
            c.flow(op.slot(x, d), op.out(d), None, arange(xs[d]) + before, zero_ok=value in (None, 0, 0.0))
            # the pad positions: always there (a fixed count), so tied to a fixed virtual slot
            pads = ("v", f"{op.node.name}#pad{d}", 0)
            c.virtual[pads] = before + after
            c.barrier(pads, "padding positions (a fixed count)")
            where = np.concatenate([arange(before), arange(after) + before + xs[d]])
            c.links.append(Link("tie", pads, op.out(d), arange(before + after), where, term=None))
        else:
            why = f"{mode} padding copies edge positions" if mode != "constant" else "negative padding crops"
            c.barrier(op.slot(x, d), why).barrier(op.out(d), why)
    return c


@shape_rule(torch.roll, "roll", *aten("roll.default"))
def roll(op: OpView) -> Coupling | Unsupported:
    """roll: a rolled dim wraps positions around its size (fixed); the other dims pass."""
    x, dims = op.arg(0, "input"), op.arg(2, "dims")
    xs = op.shape(x)
    if xs is None:
        return Unsupported("roll of a non-tensor")
    if dims is None or dims == []:
        rolled = set(range(len(xs)))  # rolled as one flattened dim
    elif isinstance(dims, int):
        rolled = {dims % len(xs)}
    elif all(isinstance(d, int) for d in dims):
        rolled = {d % len(xs) for d in dims}
    else:
        return Unsupported("roll along computed dims")
    c = Coupling()
    for d in range(len(xs)):
        if d in rolled:
            c.barrier(op.slot(x, d), "rolled (positions wrap around)").barrier(op.out(d), "rolled (positions wrap around)")
        else:
            c.flow(op.slot(x, d), op.out(d))
    return c


@shape_rule(torch.flip, "flip", *aten("flip.default"))
def flip(op: OpView) -> Coupling | Unsupported:
    """flip: position i of a flipped dim is n-1-i (the kept positions stay reversed)."""
    x = op.arg(0, "input")
    xs = op.shape(x)
    given = op.node.args[1:] if op.node.op == "call_method" else (op.arg(1, "dims"),)  # x.flip(2, 3) or dims=[2, 3]
    dims = [d for a in given for d in (a if isinstance(a, (list, tuple)) else [a])]
    if xs is None or not dims or not all(isinstance(d, int) for d in dims):
        return Unsupported("flip along computed dims")
    flipped = {d % len(xs) for d in dims}
    c = Coupling()
    for d in range(len(xs)):
        idx = arange(xs[d])
        c.flow(op.slot(x, d), op.out(d), idx, idx[::-1].copy() if d in flipped else idx)
    return c

