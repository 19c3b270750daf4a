"""passes/slice_params.py: leaf modules become smaller instances of the same class; params
cut to the kept indices (masked entries that stay are zero); tied params stay tied."""
from __future__ import annotations

import torch
from torch import nn

from helpers import ConvChain, build, mask_rows, run_pass, x_


def test_leaves_shrink_and_keep_their_class():
    m = build(ConvChain, 2).eval()
    res, ctx = run_pass("slice_params", m, {"conv1.weight": mask_rows(m, "conv1.weight", [1, 5])}, (x_(2, 3, 8, 8),))
    assert res.modified
    conv1, bn1, conv2 = (res.gm.get_submodule(n) for n in ("conv1", "bn1", "conv2"))
    assert type(conv1) is nn.Conv2d and conv1.out_channels == 6 and conv1.weight.shape == (6, 3, 3, 3)
    assert type(bn1) is nn.BatchNorm2d and bn1.num_features == 6 and bn1.running_var.shape == (6,)
    assert conv2.in_channels == 6 and conv2.weight.shape == (6, 6, 3, 3)
    keep = [0, 2, 3, 4, 6, 7]
    assert torch.equal(conv1.weight, m.conv1.weight[keep])
    assert m.conv1.weight.shape == (8, 3, 3, 3)  # the original is untouched


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.relu(self.mid(self.emb(ids))))


def test_tied_weights_stay_one_parameter():
    torch.manual_seed(0)
    m = Tied().eval()
    cols = torch.ones(1, 8)
    cols[0, [2, 6]] = 0
    rows = torch.ones(8, 1)
    rows[[2, 6]] = 0  # the tie joins the embedding's columns with mid's outputs: both go
    res, _ = run_pass("slice_params", m, {"emb.weight": cols, "mid.weight": rows, "mid.bias": rows[:, 0]},
                      (torch.randint(0, 10, (2, 5)),))
    emb, out = res.gm.get_submodule("emb"), res.gm.get_submodule("out")
    assert emb.weight.shape == (10, 6) and emb.weight is out.weight
