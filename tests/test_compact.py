"""Compact masks: 0/1 tensors that broadcast to the parameter, in every accepted format,
the helpers pruners call, and final masks that stay O(channels)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import slimc
from helpers import assert_contract, dense, masked_reference, n_params, random_filter_masks, to_nni
from slimc.compact import FinalMasks, apply_mask, compact, structured_mask
from slimc.errors import MaskError
from slimc.masks import MaskSet, load_masks, normalize, save_masks
from slimc.shards import sliced
from slimc.verify import masked_copy


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Net().eval()


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))

# filters 1, 5 of conv1; rows 2, 7 of fc1; columns 0, 3 of fc2 (so fc1's outputs 0 and 3 go too)
KEEP = {"conv1.weight": (0, [0, 2, 3, 4, 6, 7]), "fc1.weight": (0, [0, 1, 3, 4, 5, 6, 8, 9]),
        "fc2.weight": (1, [1, 2, 4, 5, 6, 7, 8, 9])}


def compact_masks(model) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {k: structured_mask(params[k].shape, d, keep) for k, (d, keep) in KEEP.items()}


def full_masks(model) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {k: dense(m, params[k].shape).float().clone() for k, m in compact_masks(model).items()}


# --------------------------------------------------------------------------- helpers
def test_structured_mask_shapes_and_forms():
    rows = structured_mask((6, 4), 0, [0, 2])
    assert rows.shape == (6, 1) and rows.dtype == torch.bool
    assert rows.flatten().tolist() == [True, False, True, False, False, False]
    cols = structured_mask((6, 4), -1, torch.tensor([True, False, True, True]))
    assert cols.shape == (1, 4)
    filters = structured_mask((8, 3, 3, 3), 0, range(4))
    assert filters.shape == (8, 1, 1, 1) and int(filters.sum()) == 4
    with pytest.raises(ValueError):
        structured_mask((6, 4), 0, [6])
    with pytest.raises(ValueError):
        structured_mask((6, 4), 0, torch.ones(5, dtype=torch.bool))


def test_compact_shrinks_what_repeats_and_keeps_the_rest():
    m = torch.ones(8, 3, 3, 3)
    m[[1, 5]] = 0
    c = compact(m)
    assert c.shape == (8, 1, 1, 1) and torch.equal(dense(c, m.shape), m != 0)
    u = m.clone()
    u[0, 0, 0, 0] = 0  # unstructured: nothing repeats along dims 1..3 any more
    assert torch.equal(dense(compact(u), u.shape), u != 0)
    assert compact(torch.ones(4, 5)).shape == (1, 1)
    both = torch.ones(4, 5)
    both[1] = 0
    both[:, 2] = 0
    assert compact(both).shape == (4, 5)  # rows and columns: no single dim says it


def test_apply_mask_multiplies_the_factors_once():
    t = torch.randn(4, 5)
    rows, cols = structured_mask((4, 5), 0, [0, 2, 3]), structured_mask((4, 5), 1, [1, 4])
    assert torch.equal(apply_mask(t, (rows, cols)), t * rows * cols)
    assert apply_mask(t, (torch.ones(4, 1, dtype=torch.bool),)) is t


# --------------------------------------------------------------------------- formats
def test_compact_and_full_size_masks_give_the_same_plan(model):
    a = assert_contract(model, compact_masks(model), X)
    b = assert_contract(model, full_masks(model), X)
    assert n_params(a.module) == n_params(b.module) < n_params(model)
    assert a.report["unstructured_zeros"] == b.report["unstructured_zeros"] == {}
    for k in b.masks:
        shape = dict(model.named_parameters())[k].shape
        assert torch.equal(dense(a.masks[k], shape), dense(b.masks[k], shape)), k


@pytest.mark.parametrize("fmt", ["flat", "nni", "prune_buffers", "safetensors", "pth"])
def test_compact_masks_in_every_format(model, fmt, tmp_path):
    flat = compact_masks(model)
    if fmt == "flat":
        raw = flat
    elif fmt == "nni":
        raw = to_nni(flat)
    elif fmt == "prune_buffers":
        raw = {**{f"{k}_mask": v.float() for k, v in flat.items()}, "conv1.weight_orig": model.conv1.weight.detach()}
    elif fmt == "safetensors":
        save_file({k: v.to(torch.uint8).contiguous() for k, v in flat.items()}, str(tmp_path / "m.safetensors"))
        raw = load_masks(tmp_path / "m.safetensors")
    else:
        save_masks(flat, tmp_path / "m.pth")
        raw = load_masks(tmp_path / "m.pth")
    ms = normalize(raw, model)
    assert ms.masks["conv1.weight"].shape == (8, 1, 1, 1) and ms.masks["fc2.weight"].shape == (1, 10)
    assert ms.zero_slices("conv1.weight", 0).nonzero().flatten().tolist() == [1, 5]
    assert ms.zero_slices("conv1.weight", 1).tolist() == [False] * 3  # broadcast along dim 1
    res = assert_contract(model, raw, X)
    assert res.module.get_submodule("conv1").out_channels == 6
    assert res.module.get_submodule("fc1").out_features == 6  # rows 2, 7 by source, 0, 3 by sink


@pytest.mark.parametrize("shape", [(8,), (8, 3), (1, 8, 1, 1), (2, 1, 1, 1), (8, 3, 3, 3, 1)])
def test_a_mask_that_does_not_broadcast_is_named_in_one_line(model, shape):
    with pytest.raises(MaskError) as e:
        normalize({"conv1.weight": torch.ones(shape)}, model)
    msg = str(e.value)
    assert "conv1.weight" in msg and str(tuple(shape)) in msg and "broadcast" in msg and "\n" not in msg


def test_a_compact_mask_is_checked_for_binary_values(model):
    m = torch.ones(8, 1, 1, 1)
    m[3] = 0.5
    with pytest.raises(MaskError, match="binary"):
        normalize({"conv1.weight": m}, model)


def test_unstructured_zeros_counted_on_compact_and_full_masks(model):
    m = torch.ones(8, 3, 3, 3)
    m[1] = 0
    m[4, 0, 1, 1] = 0
    full = normalize({"conv1.weight": m}, model)
    assert full.unstructured_zeros() == {"conv1.weight": 1}
    cols = torch.ones(1, 3, 3, 3)
    cols[0, 0, 1, 1] = 0  # a kernel position in every filter: zeros in no whole slice
    assert normalize({"conv1.weight": cols}, model).unstructured_zeros() == {"conv1.weight": 8}


# --------------------------------------------------------------------------- final masks
def test_final_masks_stay_compact_and_work_everywhere(model, tmp_path):
    res = slimc.compile(model, compact_masks(model), X)
    assert isinstance(res.masks, FinalMasks)
    params = dict(model.named_parameters())
    for k in res.masks:
        assert all(f.numel() < params[k].numel() or params[k].dim() == 1 for f in res.masks.factors(k)), k
    # conv2 loses input channels (conv1's filters): a keep vector over its dim 1, not a tensor of its size
    assert [tuple(f.shape) for f in res.masks.factors("conv2.weight")] == [(1, 8, 1, 1)]
    # the test's own masking takes them; so do MaskSet.apply / masked_copy (the same model as the
    # test's), shards.sliced, save_masks
    ref = masked_reference(model, res.masks)
    assert torch.allclose(res.module(X), ref(X), atol=1e-6)
    assert torch.equal(masked_copy(model, res.masks)(X), ref(X))
    w = sliced(res.plan, "conv2.weight", model.conv2.weight.detach())
    assert torch.equal(w, res.module.get_submodule("conv2").weight.detach())
    save_masks(res.masks, tmp_path / "final.pth")
    again = assert_contract(model, load_masks(tmp_path / "final.pth"), X)
    assert n_params(again.module) == n_params(res.module)
    assert MaskSet(res.masks).apply(Net().eval()) is not None
    # the numpy form the check multiplies by (before any keep vector is made a tensor) says the same
    fresh = slimc.compile(model, compact_masks(model), X, verify=False).masks
    for k in fresh:
        arrays = fresh.arrays(k)
        assert arrays is not None and torch.equal(apply_mask(params[k].detach(), arrays),
                                                  apply_mask(params[k].detach(), fresh.factors(k))), k


def test_tied_weights_with_a_compact_mask():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.mid = nn.Linear(6, 6)
            self.head = nn.Linear(6, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.mid(self.emb(ids))))

    torch.manual_seed(0)
    m = Tied().eval()
    ids = torch.randint(0, 10, (2, 5))
    keep = structured_mask((10, 6), 1, [0, 1, 3, 5])  # hidden columns of the shared table
    res = assert_contract(m, {"head.weight": keep, **random_filter_masks(m, 0.0, 0)}, ids)
    assert res.module.get_submodule("head").weight is res.module.get_submodule("emb").weight
