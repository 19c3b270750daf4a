"""Part dims: dim d of each part ``t.select(at, i)`` of a stacked parameter (each expert's own
FFN rows of (E, 2I, H) experts), as masks, final-mask factors and cuts see them. The
expectations are written with plain indexing, apart from slimc.compact."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slimc.compact import FinalMasks, apply_mask, part_of, slice_masked, structured_mask
from slimc.masks import MaskSet


def test_a_part_dim_mask_zeroes_one_parts_rows():
    m = structured_mask((3, 4, 5), (1, 0, 2), [0, 3])  # part 2 keeps rows 0 and 3 of dim 1
    assert tuple(m.shape) == (3, 4, 1)
    want = torch.ones(3, 4, 1, dtype=torch.bool)
    want[2, [1, 2]] = False
    assert torch.equal(m, want)
    m = structured_mask((3, 5, 4), (2, 0, 1), np.array([True, False, True, True]))  # columns: (E, 1, I)
    assert tuple(m.shape) == (3, 1, 4) and not m[1, 0, 1] and m.sum() == 11


def test_the_parts_of_a_dim_together_make_one_keep_array():
    keep = np.array([[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]], bool)  # parts × rows
    m = structured_mask((3, 4, 5), (1, 0), keep)
    assert torch.equal(m[:, :, 0], torch.from_numpy(keep))
    m = structured_mask((3, 5, 4), (2, 0), keep)  # the part dim before the rows: (E, 1, I)
    assert tuple(m.shape) == (3, 1, 4) and torch.equal(m[:, 0], torch.from_numpy(keep))
    fm = FinalMasks({}, {"w": [((3, 4, 5), (1, 0), keep)]})
    t = torch.randn(3, 4, 5)
    assert torch.equal(apply_mask(t, fm.arrays("w")), t * torch.from_numpy(keep)[:, :, None])
    assert torch.equal(fm["w"], m.new_tensor(keep)[:, :, None])


def test_a_cut_gathers_each_parts_own_rows_then_the_plain_dims():
    t = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5)
    rows = torch.tensor([[0, 3], [1, 2], [2, 3]])
    cols = torch.tensor([0, 2, 4])
    user = torch.ones(3, 4, 1, dtype=torch.bool)
    user[1, 2] = False  # part 1's row 2 is masked and kept: zero in the cut
    out = slice_masked(t, {(1, 0): rows, 2: cols}, user)
    want = torch.stack([t[e, rows[e]][:, cols] for e in range(3)])
    want[1, 1] = 0
    assert torch.equal(out, want)
    # the parts dim after the rows, the user's mask broadcast along the parts
    t2 = t.permute(1, 0, 2).contiguous()  # (4, 3, 5): rows of dim 0 per part of dim 1
    out = slice_masked(t2, {(0, 1): rows}, torch.ones(4, 1, 1, dtype=torch.bool))
    assert torch.equal(out, torch.stack([t2[rows[e], e] for e in range(3)], 1))


def test_zero_slices_of_a_part():
    mask = torch.ones(3, 4, 5, dtype=torch.bool)
    mask[1, 2] = False
    mask[0, :, 3] = False
    ms = MaskSet({"w": mask}, {"w": (3, 4, 5)})
    assert ms.zero_slices("w", (1, 0, 1)).tolist() == [False, False, True, False]
    assert ms.zero_slices("w", (1, 0, 0)).tolist() == [False] * 4
    assert ms.zero_slices("w", (2, 0, 0)).tolist() == [False, False, False, True, False]
    ms = MaskSet({"w": torch.ones(1, 4, 1, dtype=torch.bool)}, {"w": (3, 4, 5)})  # broadcast over the parts
    assert ms.zero_slices("w", (1, 0, 2)).tolist() == [False] * 4
    w, d = part_of(torch.randn(3, 4, 5), (2, 0, 1))
    assert tuple(w.shape) == (4, 5) and d == 1


@pytest.mark.parametrize("shape,dim", [((3, 4, 5), (1, 0, 3)), ((3, 4, 5), (5, 0, 1))])
def test_part_dims_out_of_range_are_refused(shape, dim):
    with pytest.raises((IndexError, ValueError)):
        structured_mask(shape, dim, [0])


def test_zeros_of_part_rows_are_not_unstructured():
    """A part's zero row and a zero column are whole slices (the compile removes them); one
    stray zero is unstructured sparsity, kept."""
    mask = torch.ones(3, 4, 5, dtype=torch.bool)
    mask[1, 2] = False
    mask[:, :, 3] = False
    mask[0, 0, 0] = False
    ms = MaskSet({"w": mask}, {"w": (3, 4, 5)})
    assert ms.unstructured_zeros({"w": [(1, 0)]}) == {"w": 1}
    assert ms.unstructured_zeros()["w"] == 17  # read by dims 0 and 1 alone, every zero looks scattered
