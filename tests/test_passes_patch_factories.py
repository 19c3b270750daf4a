"""passes/patch_factories.py: a constant-filled new tensor (``torch.zeros(B, H)``) whose
dim lost channels is created at the slim size."""
from __future__ import annotations

import torch
from torch import nn

from helpers import assert_contract, mask_rows, run_pass


class ZeroState(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 8)
        return self.out(torch.relu(self.fc(x) + h))


def test_zeros_take_the_slim_width():
    torch.manual_seed(0)
    m = ZeroState().eval()
    masks = {"fc.weight": mask_rows(m, "fc.weight", [0, 7]), "fc.bias": mask_rows(m, "fc.bias", [0, 7])}
    x = (torch.randn(2, 4),)
    res, _ = run_pass("patch_factories", m, masks, x)
    zeros = next(n for n in res.gm.graph.nodes if n.target == "new_zeros")
    assert res.modified and 6 in zeros.args
    assert_contract(m, masks, x)
