"""The `export` front end (torch.export, ATen ops) finds the same groups as `fx`."""
from __future__ import annotations

import pytest
import torch

import slimc
from slimc import zoo
from slimc.prune import group_masks


@pytest.mark.parametrize("name", [
    "resnet_tiny", "shufflenetv2_small",
    *(pytest.param(n, marks=pytest.mark.slow) for n in ["mobilenetv2_small", "senet_small", "unet_small", "densenet_small"]),
])
def test_export_front_end_matches_fx(name):
    model, x = zoo.build(name), zoo.example_inputs(name)
    masks = group_masks(model, x, 0.5)
    a = slimc.compile(model, masks, x, front_end="fx")
    b = slimc.compile(model, masks, x, front_end="export")
    assert b.report["front_end"] == "export"
    assert b.report["params"]["after"] == a.report["params"]["after"] < a.report["params"]["before"]
    assert b.report["verify"]["ok"] and not b.report["barriers"]
    for k in a.masks:
        assert torch.equal(a.masks[k], b.masks[k]), k
    y = b.module(*zoo.example_inputs(name, batch=5))  # the batch size stays free
    assert y.shape[0] == 5


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor value: fx cannot trace it, torch.export can (torch.cond-free:
    the branch is taken on a shape, which export specializes)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if y.shape[-1] > 4:  # a Python `if` on a traced size: fine for export, a Proxy error for fx
            y = y * 2
        return self.b(y)


def test_auto_falls_back_to_export_and_says_so():
    model = DataDependent().eval()
    x = torch.randn(2, 3, 8, 8)
    m = torch.ones(8, 3, 3, 3)
    m[:4] = 0
    res = slimc.compile(model, {"a.weight": m}, x)
    assert res.report["front_end"] == "export"  # fx cannot trace its data-dependent branch
    assert any("front end 'export' used; fx: TraceError" in n for n in res.report["notes"]), res.report["notes"]
    assert res.report["verify"]["ok"]
    assert res.model.b.weight.shape[1] == 4  # the user's class: b reads the 4 channels a kept
