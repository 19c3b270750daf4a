"""Transposes and permutations: output dim i is input dim ``perm[i]``, one-to-one.

Every spelling the front ends produce is one entry of :data:`PERMUTATIONS` (op → its dim
order): ``transpose``/``swapaxes``/``swapdims``, ``permute``, ``movedim``/``moveaxis``,
``t``, and the ones torch.export writes for attributes — ``x.T`` is ``aten.numpy_T``,
``x.mT`` ``aten.mT``, ``x.H``/``x.mH``/``adjoint()`` their conjugates (fx writes them as
``getattr(x, "T")``). A permuted parameter stays a parameter to the rules that read it
(:meth:`OpView.param_view`): ``input @ self.weight.T`` (Falcon's ``FalconLinear``) is a
linear layer to ``matmul``, with the weight's rows as sources and its columns as sinks.
"""
from __future__ import annotations

import torch

from slimc.shape_rules import PERMUTATIONS, Coupling, OpView, Unsupported, aten, shape_rule


def _reversed(op: OpView, nd: int) -> list[int]:
    """``t()``, ``.T``, ``.H``: every dim in reverse order (a matrix transposed)."""
    return list(range(nd))[::-1]


def _last_two(op: OpView, nd: int) -> list[int]:
    """``.mT``, ``.mH``, ``adjoint()``: the last two dims swapped."""
    p = list(range(nd))
    if nd >= 2:
        p[-2], p[-1] = p[-1], p[-2]
    return p


def _swapped(op: OpView, nd: int) -> list[int] | None:
    """``transpose(d0, d1)``, ``swapaxes``, ``swapdims``."""
    d0, d1 = op.arg(1, "dim0", op.arg(1, "axis0")), op.arg(2, "dim1", op.arg(2, "axis1"))
    if not (isinstance(d0, int) and isinstance(d1, int)) or nd == 0:
        return None
    p = list(range(nd))
    p[d0 % nd], p[d1 % nd] = p[d1 % nd], p[d0 % nd]
    return p


def _permuted(op: OpView, nd: int) -> list[int] | None:
    """``permute(*dims)`` / ``permute(dims)``."""
    dims = op.node.args[1:] if op.node.target == "permute" else op.arg(1, "dims")
    if op.node.target == "permute" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    if not isinstance(dims, (list, tuple)) or len(dims) != nd or not all(isinstance(d, int) for d in dims):
        return None
    return [d % nd for d in dims]


def _moved(op: OpView, nd: int) -> list[int] | None:
    """``movedim(source, destination)``: those dims moved, the others in their order."""
    src, dst = op.arg(1, "source"), op.arg(2, "destination")
    src, dst = ([src] if isinstance(src, int) else src), ([dst] if isinstance(dst, int) else dst)
    if not isinstance(src, (list, tuple)) or not isinstance(dst, (list, tuple)) or len(src) != len(dst) or \
            not all(isinstance(d, int) for d in (*src, *dst)):
        return None
    perm: list[int | None] = [None] * nd
    for s, d in zip(src, dst):
        perm[d % nd] = s % nd
    rest = iter(i for i in range(nd) if i not in {s % nd for s in src})
    return [p if p is not None else next(rest) for p in perm]


ATTRIBUTES = {"T": _reversed, "H": _reversed, "mT": _last_two, "mH": _last_two}


def _attribute(op: OpView, nd: int) -> list[int] | None:
    """``getattr(x, "T")`` (fx's spelling of ``x.T``) and the other transposing attributes."""
    name = op.node.args[1] if len(op.node.args) > 1 else None
    order = ATTRIBUTES.get(name) if isinstance(name, str) else None
    return order(op, nd) if order is not None else None


for _ops, _order in [
    (("t", torch.t, *aten("t.default", "t_copy.default", "numpy_T.default", "matrix_H.default")), _reversed),
    (("mT", "mH", "adjoint", torch.adjoint, *aten("mT.default", "mH.default", "adjoint.default")), _last_two),
    (("transpose", torch.transpose, "swapaxes", torch.swapaxes, "swapdims", torch.swapdims,
      *aten("transpose.int", "transpose_copy.int", "swapaxes.default", "swapdims.default")), _swapped),
    (("permute", torch.permute, *aten("permute.default", "permute_copy.default")), _permuted),
    (("movedim", torch.movedim, "moveaxis", torch.moveaxis,
      *aten("movedim.int", "movedim.intlist", "moveaxis.int", "moveaxis.intlist")), _moved),
    ((getattr,), _attribute),
]:
    for _op in _ops:
        PERMUTATIONS[_op] = _order


def permutation(op: OpView) -> list[int] | None:
    """Output dim i is input dim ``perm[i]`` (None: not a permutation, or computed dims)."""
    order = PERMUTATIONS.get(op.node.target)
    xs = op.shape(op.arg(0, "input"))
    return order(op, len(xs)) if order is not None and xs is not None else None


@shape_rule(*(op for op in PERMUTATIONS if op is not getattr))
def permute(op: OpView) -> Coupling | Unsupported:
    """transpose / permute / movedim / ``.T``: output dim i is input dim perm[i], one-to-one
    (a permuted parameter: its dims follow into the permuted value)."""
    x = op.arg(0, "input")
    p = permutation(op)
    if p is None:
        return Unsupported("permutation with computed dims")
    c = Coupling()
    for i, d in enumerate(p):
        if op.is_param(x):
            c.param("follower", op.slot(x, d), op.out(i), term=0)
        else:
            c.flow(op.slot(x, d), op.out(i))
    return c
