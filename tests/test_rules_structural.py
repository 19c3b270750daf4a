"""Structure: cat / split / chunk, channel shuffle, SE gating, indexing and channel slices,
tied weights (shape_rules/structural.py, shape_rules/slicing.py). Each: a small
fragment, random structured masks, ``helpers.assert_contract``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import SEEDS, assert_contract, build, check, kept_reasons
from helpers import mask_rows, masked_idx, random_filter_masks, removed_idx, slim_module, x_
import slimc


# --------------------------------------------------------------------------- cat / split / chunk / shuffle
class CatSplit(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 10, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        if kind != "cat":
            self.p = nn.Conv2d(6 if kind == "split" else 8, 5, 1)
            self.q = nn.Conv2d(10 if kind == "split" else 8, 5, 1)
        self.head = nn.Conv2d(16 if kind == "cat" else 10, 4, 1)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        if self.kind == "cat":
            return self.head(y)
        if self.kind == "split":
            u, v = torch.split(y, [6, 10], dim=1)
        elif self.kind == "chunk":
            u, v = y.chunk(2, dim=1)
        else:
            u, v = torch.chunk(y, 2, 1)
        return self.head(torch.cat([self.p(u), self.q(v)], 1))


@pytest.mark.parametrize("kind", ["cat", "split", "chunk", "torch_chunk"])
def test_cat_split_chunk(kind):
    m = build(CatSplit, kind)
    x = x_(2, 3, 5, 5)
    masks = {"a.weight": mask_rows(m, "a.weight", [0, 5]), "b.weight": mask_rows(m, "b.weight", [1, 2, 9])}
    res = check(m, x, masks)
    assert removed_idx(res, m, "bn.weight") == {0, 5, 6 + 1, 6 + 2, 6 + 9}
    if kind == "cat":
        assert removed_idx(res, m, "head.weight", 1) == {0, 5, 7, 8, 15}
    elif kind == "split":
        assert removed_idx(res, m, "p.weight", 1) == {0, 5}
        assert removed_idx(res, m, "q.weight", 1) == {1, 2, 9}
    else:  # chunk(2): halves of 8
        assert removed_idx(res, m, "p.weight", 1) == {0, 5, 7}
        assert removed_idx(res, m, "q.weight", 1) == {0, 7}
    for seed in SEEDS:
        check(m, x, seed=seed)


class Shuffle(nn.Module):
    def __init__(self, groups: int = 2, c: int = 8, hw: int = 4):
        super().__init__()
        self.g, self.c, self.hw = groups, c, hw
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        n = x.size(0)
        x = x.view(n, self.g, self.c // self.g, self.hw, self.hw)
        x = torch.transpose(x, 1, 2).contiguous()
        x = x.view(n, -1, self.hw, self.hw)
        return self.conv2(x)


def test_channel_shuffle_whole_group_goes():
    m = build(Shuffle)  # channel c = h * 4 + d  →  after shuffle c' = d * 2 + h
    res = check(m, x_(2, 3, 4, 4), {"conv1.weight": mask_rows(m, "conv1.weight", [4, 5, 6, 7])})
    assert removed_idx(res, m, "conv1.weight") == {4, 5, 6, 7}
    assert removed_idx(res, m, "conv2.weight", 1) == {1, 3, 5, 7}


def test_channel_shuffle_same_position_in_every_group_goes():
    m = build(Shuffle)
    res = check(m, x_(2, 3, 4, 4), {"conv1.weight": mask_rows(m, "conv1.weight", [1, 5])})
    assert removed_idx(res, m, "conv1.weight") == {1, 5}
    assert removed_idx(res, m, "conv2.weight", 1) == {2, 3}


def test_channel_shuffle_non_rectangle_is_kept():
    m = build(Shuffle)
    # masked (h, d): (0,1) (1,1) (1,0) → d=1 goes in both groups; (1,0) alone would break
    # the rectangle {0,1} × {0,2,3}, so it stays (masked, zero) and is reported
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [1, 5, 4])}, x_(2, 3, 4, 4))
    assert removed_idx(res, m, "conv1.weight") == {1, 5}
    assert "rectangle" in kept_reasons(res)
    assert masked_idx(res.masks["conv1.weight"]) == {1, 4, 5}
    for seed in SEEDS:
        assert_contract(m, random_filter_masks(m, 0.5, seed), x_(2, 3, 4, 4))


class SE(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Linear(c, 4)
        self.fc2 = nn.Linear(4, c)
        self.conv2 = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return self.conv2(x * s.unsqueeze(-1).unsqueeze(-1))


def test_se_gating():
    m = build(SE)
    x = x_(2, 3, 5, 5)
    res = check(m, x, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3, 4])})
    # the gate needs no mask of its own: fc2 rows and fc1 columns of the channel go too
    assert removed_idx(res, m, "fc2.weight") == {0, 3, 4}
    assert removed_idx(res, m, "fc1.weight", 1) == {0, 3, 4}
    assert slim_module(res, "conv2").in_channels == 5
    # masking the gate's producer only: sigmoid(β) ≠ 0, so the channel must stay
    res = assert_contract(m, {"fc2.weight": mask_rows(m, "fc2.weight", [1])}, x)
    assert removed_idx(res, m, "conv1.weight") == set()
    for seed in SEEDS:
        check(m, x, seed=seed)


# --------------------------------------------------------------------------- indexing
class Index(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d({"channel_slice": 4, "channel_step": 4}.get(kind, 8), 4, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        if self.kind == "crop":
            y = y[:, :, 1:-1, 1:-1]
        elif self.kind == "ellipsis":
            y = y[..., 1:]
        elif self.kind == "none_squeeze":
            y = y[:, None].squeeze(1)
        elif self.kind == "spatial_int":
            y = y[:, :, 0].unsqueeze(2)
        elif self.kind == "channel_step":
            y = y[:, ::2]
        else:
            y = y[:, 2:6]
        return self.conv2(y)


@pytest.mark.parametrize("kind", ["crop", "ellipsis", "none_squeeze", "spatial_int"])
def test_spatial_indexing_leaves_channels_free(kind):
    m = build(Index, kind)
    res = check(m, x_(2, 3, 5, 5), {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3])})
    assert removed_idx(res, m, "conv1.weight") == {0, 3}


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_channel_slice_is_an_offset(front_end):
    """y[:, 2:6]: channel 3 (masked) goes at offset 1 of the slice; channels the slice never
    reads (0, 1, 6, 7) go too; the slice bounds move to where the kept ones lie. The user's
    class holds the bounds as literals: it cannot follow, and the report names the line."""
    m = build(Index, "channel_slice")
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3])}, x_(2, 3, 5, 5),
                          front_end=front_end)
    assert removed_idx(res, m, "conv1.weight") == {0, 1, 3, 6, 7}
    assert removed_idx(res, m, "conv2.weight", dim=1) == {1}
    assert res.module.get_parameter("conv2.weight").shape[1] == 3
    assert res.model is None
    assert "y[:, 2:6]" in res.report["user_model"]["reason"]


def test_stepped_channel_slice_is_a_barrier():
    m = build(Index, "channel_step")
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 3])}, x_(2, 3, 5, 5))
    assert removed_idx(res, m, "conv1.weight") == set()
    assert "barrier" in kept_reasons(res)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.b.weight = self.a.weight  # one Parameter, two modules
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.b(F.relu(self.a(self.stem(x)))))


def test_tied_weights():
    m = build(Tied)
    masks = {"a.weight": mask_rows(m, "a.weight", [0, 1])}
    res = slimc.compile(m, masks, x_(2, 3, 5, 5))  # verify=True
    assert res.report["verify"]["ok"]
    assert res.module.a.weight is res.module.b.weight
    assert_contract(m, masks, x_(2, 3, 5, 5))
