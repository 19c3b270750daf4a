"""passes/exact_layernorm.py: a LayerNorm over a dim that lost channels keeps the
reference's statistics (removed channels counted as zeros); ``renorm`` keeps a plain one."""
from __future__ import annotations

import torch
from torch import nn

from helpers import assert_contract, mask_rows, run_pass


class LN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.ln(self.fc(x)))


def _masks(m):
    return {"fc.weight": mask_rows(m, "fc.weight", [1, 4]), "fc.bias": mask_rows(m, "fc.bias", [1, 4])}


def test_layernorm_over_pruned_channels_is_written_out_exactly():
    torch.manual_seed(0)
    m = LN().eval()
    x = (torch.randn(2, 5, 4),)
    res, ctx = run_pass("exact_layernorm", m, _masks(m), x)
    assert res.modified and not ctx.approximate
    assert not any(n.op == "call_module" and n.target == "ln" for n in res.gm.graph.nodes)
    assert any(ev.kind == "layernorm" for ev in ctx.events)
    assert_contract(m, _masks(m), x)


def test_renorm_keeps_a_plain_layernorm_marked_approximate():
    import slimc

    torch.manual_seed(0)
    m = LN().eval()
    res = slimc.compile(m, _masks(m), (torch.randn(2, 5, 4),), renorm=True, verify=False)
    assert isinstance(res.module.get_submodule("ln"), nn.LayerNorm) and res.module.ln.normalized_shape == (6,)
