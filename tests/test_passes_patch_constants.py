"""passes/patch_constants.py: sizes written in the graph follow the kept channels — one
patcher per op family, keyed by the op objects the shape rules use."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimc
from helpers import assert_contract, masked_reference, n_params
from slimc.passes.patch_constants import PATCHERS, RESHAPES
from slimc.shape_rules import RULES
from slimc.shape_rules.structural import SPLITS


def test_every_patched_op_has_a_rule():
    """The patchers' keys are the rules' op objects: no second list of ops to drift."""
    assert set(PATCHERS) <= set(RULES)
    assert set(SPLITS) <= set(PATCHERS) and set(RESHAPES) <= set(PATCHERS)
    assert torch.tensor_split in PATCHERS and "tensor_split" in PATCHERS


class TensorSplitNet(nn.Module):
    """A conv whose output is cut along channels by tensor_split, each piece read by its own conv."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.points = [4, 8]
        self.heads = nn.ModuleList(nn.Conv2d(4, 5, 1) for _ in range(3))

    def forward(self, x):
        y = self.stem(x)
        if self.form == "sections":
            a, b, c = torch.tensor_split(y, 3, dim=1)
        elif self.form == "indices":
            a, b, c = torch.tensor_split(y, self.points, dim=1)
        else:  # the Tensor method
            a, b, c = y.tensor_split(self.points, 1)
        return self.heads[0](a) + self.heads[1](b) + self.heads[2](c)


def _stem_mask(removed: list[int]) -> dict[str, torch.Tensor]:
    m = torch.ones(12, 1, 1, 1)
    m[removed] = 0
    return {"stem.weight": m}


@pytest.mark.parametrize("form", ["sections", "indices", "method"])
@pytest.mark.parametrize("removed", [[0, 5, 9], [1, 2, 6, 11]])
def test_tensor_split_with_pruned_channels(form, removed):
    """Pieces of unequal width after pruning: the split becomes torch.split at the kept
    widths, and the slim graph equals the masked original."""
    torch.manual_seed(0)
    m = TensorSplitNet(form).eval()
    x = torch.randn(2, 3, 8, 8)
    res = assert_contract(m, _stem_mask(removed), (x,))
    assert n_params(res.module) < n_params(m)
    assert not any(n.op == "call_function" and "tensor_split" in str(n.target) for n in res.module.graph.nodes)
    if res.model is not None:  # the user's class follows only where its call can give the sizes
        with torch.no_grad():
            torch.testing.assert_close(res.model(x), masked_reference(m, res.masks).eval()(x), atol=1e-5, rtol=0)


def test_tensor_split_user_class_follows_split_points():
    """tensor_split at ``self.points``: the user's class gets the new split points."""
    torch.manual_seed(0)
    m = TensorSplitNet("indices").eval()
    x = torch.randn(2, 3, 8, 8)
    res = assert_contract(m, _stem_mask([0, 5, 9]), (x,))
    assert res.model is not None, res.report["user_model"]
    assert res.model.points == [3, 6]
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), res.module(x), atol=1e-5, rtol=0)


def test_tensor_split_into_sections_of_unequal_width_blocks_the_user_class():
    torch.manual_seed(0)
    m = TensorSplitNet("sections").eval()
    res = assert_contract(m, _stem_mask([0, 5]), (torch.randn(2, 3, 8, 8),))
    assert res.model is None
    assert "equal pieces" in res.report["user_model"]["reason"], res.report["user_model"]


class LiteralFlatten(nn.Module):
    """``view(-1, 32 * 4 * 4)``: a flatten of C × 4 × 4 at 32×32 images; at 64×64 the same
    line makes four rows per image, each mixing two channels' planes."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(2),
                               nn.MaxPool2d(2))
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.f(x).view(-1, 32 * 4 * 4))


def test_a_literal_flatten_is_checked_where_it_flattens_and_says_so():
    """The check varies only what keeps the view a flatten of the channels (the batch), and
    the report names the line; slim == the model masked by the test at other batch sizes."""
    from helpers import user_masked

    torch.manual_seed(0)
    m = LiteralFlatten().eval()
    rows = torch.ones(32, 1, 1, 1)
    rows[::2] = 0
    masks = {"f.0.weight": rows, "f.0.bias": rows.flatten()}
    res = slimc.compile(m, masks, torch.randn(8, 3, 32, 32))
    v = res.report["verify"]
    assert v["ok"] and res.module.fc.in_features == 256
    assert "view merges [32, 4, 4] into one dim only at the traced sizes" in v["varied"], v["varied"]
    assert "view(-1, 32 * 4 * 4)" in v["varied"] and v["varied"].endswith("varied input 0 dims [0]"), v["varied"]
    ref = user_masked(m, masks)
    for b in (1, 5):
        x = torch.randn(b, 3, 32, 32)
        assert (res.module(x) - ref(x)).abs().max() <= 1e-5
