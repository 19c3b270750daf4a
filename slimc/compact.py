"""Compact masks: 0/1 tensors that broadcast to their parameter.

A structured mask says, along one dim, which slices are kept: it needs a keep vector, not
a tensor of the parameter's size. ``(out, 1)`` keeps rows of a Linear weight, ``(1, in)``
its columns, ``(out, 1, 1, 1)`` conv filters. Every mask slimc reads or writes may take
this form (full-size masks work too); pruners make one with :func:`structured_mask`, or
shrink a full-size mask with :func:`compact`.

A *part dim* ``(dim, at, index)`` is dim ``dim`` of the part ``t.select(at, index)`` of a
parameter: stacked experts (E, 2I, H) lose rows of each expert's own, ``(1, 0, e)`` for
expert e. Its keep vector zeroes those rows of part ``index`` alone; the parts of one
``(dim, at)`` together make one keep array over both dims (``(E, 2I, 1)``), and the
parameter is cut by gathering each part's kept rows (:func:`slice_masked`): every part
keeps as many.

Final masks zero slices along several dims of one parameter (a conv loses filters *and*
input channels), which no single compact tensor says. :class:`FinalMasks` keeps each as
*factors* — the user's mask and one keep vector per dim — whose product is the mask:
:func:`apply_mask` and :func:`slice_masked` use the factors one by one, and the product is
made only when a value is asked for (``res.masks[fqn]``), at its smallest broadcast shape.
"""
from __future__ import annotations

import math
from functools import reduce
from typing import Iterator, Mapping, Sequence, Union

import numpy as np
import torch

Factors = tuple[torch.Tensor, ...]
#: the largest joint bool mask :func:`apply_mask` makes (16 MB); beyond, factors multiply one by one
JOINT_BOOL_MAX = 1 << 24


Dim = Union[int, tuple]  # a dim; a part dim (dim, at, index); the parts of a dim together (dim, at)


def is_part(dim: Dim) -> bool:
    return isinstance(dim, tuple)


def part_of(t, dim: Dim):
    """``(t.select(at, index), dim within it)`` for a part dim; ``(t, dim)`` for a plain one
    (``t``: a tensor or an array; a size-1 ``at`` dim — a broadcast mask — is every part)."""
    if not is_part(dim):
        return t, dim
    d, at, index = dim
    i = index if t.shape[at] > 1 else 0
    part = t.select(at, i) if isinstance(t, torch.Tensor) else np.take(t, i, axis=at)
    return part, d - (at < d)


def _joint_array(shape: Sequence[int], dim: tuple, keep: np.ndarray) -> np.ndarray:
    """A keep array over two dims — ``keep[i, j]``: index j of ``dim[0]`` in part i of ``dim[1]``
    — shaped to broadcast to ``shape`` (1 on the other dims)."""
    d, at = dim[0] % len(shape), dim[1] % len(shape)
    k = np.asarray(keep, dtype=bool).reshape(shape[at], shape[d])
    view = [1] * len(shape)
    view[d], view[at] = shape[d], shape[at]
    return (k if at < d else k.T).reshape(view)


def structured_mask(shape: Sequence[int], dim: Dim, keep) -> torch.Tensor:
    """The compact mask of a parameter of ``shape`` that keeps ``keep`` along ``dim``.

    ``keep``: a bool vector of length ``shape[dim]`` (True = kept), or the kept indices.
    Returns a bool tensor with ``shape[dim]`` on ``dim`` and 1 elsewhere: ``(out, 1, 1, 1)``
    for conv filters, ``(1, in)`` for Linear columns. A part dim ``(dim, at, index)`` keeps
    ``keep`` along ``dim`` in part ``index`` of ``at`` only (``(E, 2I, 1)`` for one expert's
    rows); a pair ``(dim, at)`` takes a 2-D ``keep`` (parts × dim), every part's at once."""
    shape = tuple(int(s) for s in shape)
    if is_part(dim):
        joint = np.asarray(keep, dtype=bool)
        if len(dim) == 3:
            joint = np.ones((shape[dim[1]], shape[dim[0]]), bool)
            joint[dim[2]] = structured_mask((shape[dim[0]],), 0, keep).numpy()
        return torch.from_numpy(np.ascontiguousarray(_joint_array(shape, dim, joint)))
    dim = dim % len(shape)
    n = shape[dim]
    view = _keep_view(shape, dim)
    device = keep.device if isinstance(keep, torch.Tensor) else torch.device("cpu")
    if isinstance(keep, torch.Tensor):  # built in numpy: one torch call (a network has hundreds)
        keep = keep.detach().cpu()
        keep = (keep if keep.dtype == torch.bool else keep.long()).numpy()
    k = np.asarray(keep)
    if k.dtype == np.bool_:
        if k.size != n:
            raise ValueError(f"keep has {k.size} flags for a dim of size {n}")
        vec = k.reshape(view).copy()
    else:
        idx = k.reshape(-1).astype(np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"kept index out of range for a dim of size {n}")
        vec = np.zeros(n, dtype=bool)
        vec[idx] = True
        vec = vec.reshape(view)
    return torch.from_numpy(vec).to(device)


def _keep_view(shape: Sequence[int], dim: int) -> list[int]:
    """The shape of a keep vector along ``dim`` that broadcasts to ``shape``: 1 elsewhere."""
    view = [1] * len(shape)
    view[dim % len(shape)] = shape[dim]
    return view


def shrink(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (any dtype, values unchanged) without the repeats: every dim along which it
    is constant becomes size 1. A view where possible; clone it to free the full storage.
    The common forms (whole filters or rows: constant along every dim but the first) are
    tried first, in one pass over the mask."""
    m = mask
    if m.dim() > 1:
        rows = m[(slice(None),) + (slice(0, 1),) * (m.dim() - 1)]
        if torch.equal(m, rows.expand_as(m)):
            m = rows
    for d in reversed(range(m.dim())):
        if m.shape[d] > 1:
            first = m.narrow(d, 0, 1)
            if torch.equal(m, first.expand_as(m)):
                m = first
    return m


def compact(mask: torch.Tensor) -> torch.Tensor:
    """The smallest bool tensor that broadcasts to ``mask``'s shape and says the same
    (True = kept): a full-size mask whose zeros are whole filters → ``(out, 1, 1, 1)``."""
    m = shrink(mask)
    return (m if m.dtype == torch.bool else m != 0).clone()


def broadcasts(shape: Sequence[int], to: Sequence[int]) -> bool:
    """Does a mask of ``shape`` broadcast to a parameter of shape ``to`` (same rank, each
    dim 1 or the parameter's)?"""
    return len(shape) == len(to) and all(s in (1, t) for s, t in zip(shape, to))


def product(factors: Factors) -> torch.Tensor:
    """The mask the factors make, at its smallest broadcast shape (bool)."""
    return reduce(torch.logical_and, factors[1:], factors[0].bool())


def apply_mask(t: torch.Tensor, factors: Factors | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
    """``t`` times its mask, out of place; ``t`` itself where the mask keeps everything.
    Compact bool factors on the CPU (the masks slimc makes; numpy arrays from
    :meth:`FinalMasks.arrays`) are checked and combined in numpy — their joint mask is a
    bool array, a quarter of a float32 ``t`` at most — and ``t`` is multiplied once by it;
    a joint mask over :data:`JOINT_BOOL_MAX` elements (VGG's classifier) is not made, the
    factors multiply one by one. Other factors are converted to ``t``'s dtype and multiplied
    together first where their product is much smaller than ``t``, else one by one."""
    factors = (factors,) if isinstance(factors, (torch.Tensor, np.ndarray)) else tuple(factors)
    small = [f if isinstance(f, np.ndarray) else f.numpy() for f in factors
             if isinstance(f, np.ndarray) or (f.device.type == "cpu" and f.dtype == torch.bool)]
    if len(small) == len(factors):  # the usual case: compact bool factors
        small = [f for f in small if not f.all()]
        if not small:
            return t
        if len(small) > 1 and math.prod(max(sizes) for sizes in zip(*[f.shape for f in small])) <= JOINT_BOOL_MAX:
            small = [reduce(np.logical_and, small)]
        out = t * _as_factor(small[0], t)
        for f in small[1:]:
            out.mul_(_as_factor(f, t))
        return out
    fs = [f.to(device=t.device, dtype=t.dtype) for f in factors if not bool(f.all())]
    if not fs:
        return t
    if len(fs) > 1 and 4 * math.prod(max(sizes) for sizes in zip(*[f.shape for f in fs])) <= t.numel():
        return t * reduce(torch.mul, fs)
    out = t * fs[0]
    for f in fs[1:]:
        out.mul_(f)
    return out


def _as_factor(f: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    """A bool numpy factor as a tensor to multiply ``t`` by (bool: ``t``'s dtype is kept)."""
    f = torch.from_numpy(np.ascontiguousarray(f))
    return f if t.device.type == "cpu" else f.to(t.device)


def _along(k, shape_len: int, dim: tuple):
    """A (parts × kept) index of a pair of dims ``(dim, at)``, shaped to gather along ``dim``."""
    d, at = dim
    view = [1] * shape_len
    view[d], view[at] = k.shape[1], k.shape[0]
    return (k if at < d else k.T).reshape(view)


def slice_masked(t: torch.Tensor, kept: Mapping[Dim, torch.Tensor], rest: torch.Tensor | None) -> torch.Tensor:
    """``t`` cut to the kept indices (``kept``: dim → index tensor; a pair of dims ``(dim,
    at)`` → a (parts × kept) index: each part of ``at`` keeps its own indices along ``dim``,
    gathered before the plain dims are cut), then masked by ``rest`` cut the same way: the
    part of its mask the cut does not remove (a structured keep vector cut at its own kept
    indices is all ones, and costs nothing)."""
    order = sorted(kept, key=lambda d: not is_part(d))  # parts first: their indices are the original's
    for d in order:
        k = kept[d].to(t.device)
        t = torch.take_along_dim(t, _along(k, t.dim(), d), d[0]) if is_part(d) else t.index_select(d, k)
    if rest is None:
        return t
    if rest.device.type == "cpu" and rest.dtype == torch.bool:  # a compact mask: cut and checked in numpy
        r = rest.numpy()
        for d in order:
            k = kept[d].numpy()
            if is_part(d) and r.shape[d[0]] > 1:
                r = np.broadcast_to(r, [k.shape[0] if i == d[1] else n for i, n in enumerate(r.shape)])
                r = np.take_along_axis(r, _along(k, r.ndim, d), d[0])
            elif not is_part(d) and r.shape[d] > 1:
                r = r.take(k, axis=d)
        return apply_mask(t, r)
    for d in order:
        k = kept[d].to(rest.device)
        if is_part(d) and rest.shape[d[0]] > 1:
            rest = rest.expand([k.shape[0] if i == d[1] else n for i, n in enumerate(rest.shape)])
            rest = torch.take_along_dim(rest, _along(k, rest.dim(), d), d[0])
        elif not is_part(d) and rest.shape[d] > 1:
            rest = rest.index_select(d, k)
    return apply_mask(t, rest)


KeepSpec = tuple[tuple[int, ...], Dim, np.ndarray]  # (param shape, dim, keep flags): a keep vector to make
# (a pair of dims (dim, at): keep flags per part of ``at``, parts × dim)


class FinalMasks(Mapping[str, torch.Tensor]):
    """``{param_fqn: bool tensor that broadcasts to the param}`` (True = kept), each held as
    factors — the user's mask as given and one compact keep vector per dim that loses
    slices; ``masks[fqn]`` multiplies them (the smallest broadcast shape, made on access).
    ``keep``: per param, its keep vectors as tensors or as :data:`KeepSpec` s, made into
    tensors the first time a param's factors are asked for (a compile that only slices
    never needs them)."""

    def __init__(self, user: Mapping[str, torch.Tensor], keep: Mapping[str, Sequence[torch.Tensor | KeepSpec]]):
        self._user = dict(user)
        self._keep: dict[str, tuple] = {k: tuple(v) for k, v in keep.items()}
        self._names = list(dict.fromkeys([*self._user, *self._keep]))

    def factors(self, fqn: str) -> Factors:
        u = self._user.get(fqn)
        return ((u,) if u is not None else ()) + self._keep_factors(fqn)

    def arrays(self, fqn: str) -> tuple[np.ndarray, ...] | None:
        """The factors as numpy bool arrays (what :func:`apply_mask` multiplies by), without
        making tensors of the keep vectors; None where the user's mask is not a CPU bool tensor."""
        u = self._user.get(fqn)
        if u is not None and (u.device.type != "cpu" or u.dtype != torch.bool):
            return None
        out = [] if u is None else [u.numpy()]
        for f in self._keep.get(fqn, ()):
            if isinstance(f, torch.Tensor):
                out.append(f.numpy())
            else:
                shape, dim, keep = f
                out.append(_joint_array(shape, dim, keep) if is_part(dim) else keep.reshape(_keep_view(shape, dim)))
        return tuple(out)

    def _keep_factors(self, fqn: str) -> Factors:
        fs = self._keep.get(fqn, ())
        if any(not isinstance(f, torch.Tensor) for f in fs):  # made once, then kept as tensors
            fs = self._keep[fqn] = tuple(f if isinstance(f, torch.Tensor) else structured_mask(*f) for f in fs)
        return fs

    def user_mask(self, fqn: str) -> torch.Tensor | None:
        """The user's mask of ``fqn``: what is left of the final mask once the removed
        slices are cut away."""
        return self._user.get(fqn)

    def __getitem__(self, fqn: str) -> torch.Tensor:
        if fqn not in self:
            raise KeyError(fqn)
        return product(self.factors(fqn))

    def __contains__(self, fqn: object) -> bool:  # without making the product
        return fqn in self._user or fqn in self._keep

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"FinalMasks({len(self)} params)"


def factors_of(masks: Mapping[str, torch.Tensor], fqn: str) -> Factors | None:
    """The factors of ``fqn``'s mask in any mask mapping (one factor for a plain tensor)."""
    if isinstance(masks, FinalMasks):
        return masks.factors(fqn) if fqn in masks else None
    m = masks.get(fqn)
    return None if m is None else (m,)


__all__ = ["Dim", "FinalMasks", "Factors", "KeepSpec", "apply_mask", "broadcasts", "compact", "factors_of", "is_part",
           "part_of", "product", "shrink", "slice_masked", "structured_mask"]
