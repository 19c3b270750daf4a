"""A parameter, buffer or plain tensor that an op reads as data (Swin-V2's relative-coordinates
table fed to an MLP) is a value like any node output: its channels stay while a kept weight
reads them. Before, such a group had no node output in it, so liveness found nothing kept and
removed it — the slim model then differed from the user's own masked model."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimc


class TableMLP(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        t = torch.randn(1, 5, 2)
        if kind == "plain":
            self.table = t
        elif kind == "buffer":
            self.register_buffer("table", t, persistent=False)
        else:
            self.table = nn.Parameter(t)
        self.mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + self.mlp(self.table).sum(1)


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("kind", ["plain", "buffer", "parameter"])
def test_a_table_read_as_data_keeps_its_channels(kind, front_end):
    torch.manual_seed(0)
    m = TableMLP(kind).eval()
    x = torch.randn(2, 4)
    masks = {"fc.weight": torch.ones(3, 4)}  # nothing masked: nothing may go
    res = slimc.compile(m, masks, (x,), front_end=front_end)
    assert sum(p.numel() for p in res.module.parameters()) == sum(p.numel() for p in m.parameters())
    for xs in (x, torch.randn(5, 4)):
        with torch.no_grad():
            assert torch.allclose(res.module(xs), m(xs), atol=1e-6)
            assert torch.allclose(res.model(xs), m(xs), atol=1e-6)


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_a_table_whose_reading_columns_are_masked_goes(front_end):
    torch.manual_seed(0)
    m = TableMLP("buffer").eval()
    x = torch.randn(2, 4)
    w = torch.ones(8, 2)
    w[:, 1] = 0  # the MLP reads the table's second coordinate nowhere
    res = slimc.compile(m, {"mlp.0.weight": w}, (x,), front_end=front_end)
    assert res.module.get_parameter("mlp.0.weight").shape == (8, 1)
    ref = copy.deepcopy(m)  # (the table is a non-persistent buffer: not in the state dict)
    with torch.no_grad():
        ref.mlp[0].weight.mul_(w)
        for xs in (x, torch.randn(5, 4)):
            assert torch.allclose(res.module(xs), ref(xs), atol=1e-6)
