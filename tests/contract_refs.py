"""The references of ``helpers.assert_contract`` that do not come from the compiler:

- the original masked with the *user's* masks (read by ``helpers.flat_user_masks``, applied by
  ``helpers.masked_reference``: the test's own code, never ``slimc.verify``): the slim model
  must match it wherever the user's masks are complete (the final masks zero nothing more);
- a second input shape, found by asking the masked original which dims may vary: another
  batch, and every other dim (dims of one size change together: the height and width of a
  square image, a length shared by ids and attention mask) the original accepts at another
  size; else the batch alone.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn


def dense_zeros(mask: torch.Tensor, shape) -> torch.Tensor:
    return (mask == 0).expand(tuple(shape))


def masks_equal(final: Mapping[str, torch.Tensor], user: Mapping[str, torch.Tensor],
                params: Mapping[str, torch.Tensor]) -> tuple[int, list[str]]:
    """(entries the final masks zero beyond the user's, the params where they do)."""
    extra, where = 0, []
    for fqn, fm in final.items():
        fz = dense_zeros(fm, params[fqn].shape)
        uz = dense_zeros(user[fqn], params[fqn].shape) if fqn in user else torch.zeros_like(fz)
        n = int((fz & ~uz).sum())
        if n:
            extra += n
            where.append(fqn)
    return extra, where


# --------------------------------------------------------------------------- a second shape
def _mask_like(t: torch.Tensor) -> bool:
    return t.dtype == torch.bool or (t.numel() > 0 and bool(((t == 0) | (t == 1)).all()) and not t.is_floating_point())


def inputs_at(inputs: tuple, shapes: list, seed: int) -> tuple:
    """Inputs of the given shapes, drawn like ``inputs``: floats normal, token ids in the
    range of the example's, masks all ones; non-tensors kept."""
    g = torch.Generator().manual_seed(20_000 + seed)
    out = []
    for t, shape in zip(inputs, shapes):
        if not isinstance(t, torch.Tensor) or shape is None:
            out.append(t)
        elif t.is_floating_point():
            out.append(torch.randn(shape, generator=g, dtype=t.dtype))
        elif _mask_like(t):
            out.append(torch.ones(shape, dtype=t.dtype))
        else:
            out.append(torch.randint(int(t.min()), int(t.max()) + 1, shape, generator=g, dtype=t.dtype))
    return tuple(out)


def _shapes(inputs: tuple, batch: int | None, sizes: Mapping[int, int]) -> list:
    b0 = next((t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim()), None)
    out = []
    for t in inputs:
        if not isinstance(t, torch.Tensor) or not t.dim():
            out.append(None)
            continue
        shape = list(t.shape)
        if batch is not None and shape[0] == b0:
            shape[0] = batch
        out.append(tuple([shape[0], *[sizes.get(s, s) for s in shape[1:]]]))
    return out


def runs(model: nn.Module, x: tuple) -> bool:
    try:
        with torch.no_grad():
            model(*x)
        return True
    except Exception:  # the original refuses that shape
        return False


def second_shape(ref: nn.Module, inputs: tuple, seed: int = 7, sizes: bool = True) -> tuple[tuple | None, str]:
    """Inputs at another shape ``ref`` (the masked original, in eval mode) accepts, and what
    changed: another batch and (``sizes``) every other size ``ref`` lets vary (each to about
    ¾), else the batch alone; (None, why) where no tensor input has a batch."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.dim()]
    if not tensors:
        return None, "no tensor input"
    b = tensors[0].shape[0]
    batch = b + 1
    free = {}
    for s in sorted({s for t in tensors for s in t.shape[1:] if s >= 3}) if sizes else []:
        new = s - max(1, s // 4)
        if runs(ref, inputs_at(inputs, _shapes(inputs, batch, {s: new}), seed)):
            free[s] = new
    tries = ([(free, f"batch {b} → {batch}, sizes {free}")] if free else []) + [({}, f"batch {b} → {batch} only")]
    for changed, why in tries:
        x = inputs_at(inputs, _shapes(inputs, batch, changed), seed)
        if runs(ref, x):
            return x, why
    return None, "the original accepts no other batch"
