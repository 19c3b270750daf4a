"""Grouped convs lose whole groups (issue 23): the group width stays, the group count drops.

A grouped conv's channels are (group, position) products sharing one group axis, so the kept
set is kept groups × kept positions. The reference here is the model with the user's masks
applied by this file's own code, compared at the example shape and at another batch and size;
widths are derived by hand."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimc
from families import run_family
from slimc.prune import prune

C, G = 24, 4  # 4 groups of 6
PER = C // G


class Block(nn.Module):
    """A ResNeXt bottleneck as torchvision writes it: 1×1 → grouped 3×3 → 1×1, BN after each."""

    def __init__(self, cin: int = 16, width: int = C, groups: int = G):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cin, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cin)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(x + self.bn3(self.conv3(y)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = Block()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.block(F.relu(self.stem(x))).mean((2, 3)))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = Net()
    for mod in m.modules():  # BN with random statistics and β, so a live β in a removed channel shows
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.5, 0.5)
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _rows(shape, rows) -> torch.Tensor:
    mask = torch.ones(shape)
    mask[list(rows)] = 0
    return mask


def _masked(model: nn.Module, masks: dict) -> nn.Module:
    """The user's masks applied by this test: params multiplied by 0/1."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    return ref


def _group_masks(m: nn.Module, groups=(), positions=()) -> dict:
    """conv1's and conv2's filters of whole ``groups`` and of ``positions`` in every group, with
    their BatchNorm γ and β: what a pruner removing them would mask."""
    rows = {g * PER + p for g in groups for p in range(PER)} | {g * PER + p for g in range(G) for p in positions}
    out = {}
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        w = getattr(m.block, conv).weight
        out[f"block.{conv}.weight"] = _rows(w.shape, rows)
        out[f"block.{bn}.weight"] = _rows((C,), rows)
        out[f"block.{bn}.bias"] = _rows((C,), rows)
    return out


def _assert_exact(slim: nn.Module, ref: nn.Module) -> None:
    for shape in ((2, 3, 8, 8), (3, 3, 11, 7)):  # the example's and another batch and size
        x = torch.randn(*shape)
        with torch.no_grad():
            want, got = ref(x), slim(x)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item()), shape


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_whole_groups_go_and_the_width_stays(front_end):
    m = _net()
    masks = _group_masks(m, groups=(1, 3))
    res = slimc.compile(m, masks, torch.randn(2, 3, 8, 8), front_end=front_end)
    conv2 = res.model.block.conv2
    assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (2, 12, 12)
    assert conv2.weight.shape == (12, PER, 3, 3)  # each kept group keeps its 6 inputs
    assert res.model.block.conv1.out_channels == res.model.block.conv3.in_channels == 12
    _assert_exact(res.model, _masked(m, masks))
    _assert_exact(res.module, _masked(m, masks))


def test_whole_groups_and_aligned_positions_together():
    m = _net()
    masks = _group_masks(m, groups=(0,), positions=(2, 5))
    res = slimc.compile(m, masks, torch.randn(2, 3, 8, 8))
    conv2 = res.model.block.conv2
    # 3 groups of 6 - 2 = 4: a rectangle, kept groups × kept positions
    assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (3, 12, 12)
    _assert_exact(res.model, _masked(m, masks))


def test_a_group_nothing_reads_goes_whole():
    """conv2's filters of group 2 masked (with bn2): conv1's channels of group 2 are read by
    nothing kept, so they go too and the group is gone from both sides."""
    m = _net()
    rows = range(2 * PER, 3 * PER)
    masks = {"block.conv2.weight": _rows(m.block.conv2.weight.shape, rows),
             "block.bn2.weight": _rows((C,), rows), "block.bn2.bias": _rows((C,), rows)}
    res = slimc.compile(m, masks, torch.randn(2, 3, 8, 8))
    assert res.model.block.conv2.groups == G - 1
    assert res.model.block.conv1.out_channels == C - PER
    _assert_exact(res.model, _masked(m, masks))


def test_a_group_whose_inputs_went_goes_like_a_depthwise_channel():
    """conv1's filters of group 2 masked: channel mode removes them with bn1's γ and β, so
    group 2 of conv2 reads only zeros and makes bn2's β alone. Like a depthwise channel whose
    input went, the group goes with its BatchNorm; the final masks say so (derived here by hand)."""
    m = _net()
    rows = range(2 * PER, 3 * PER)
    masks = {"block.conv1.weight": _rows(m.block.conv1.weight.shape, rows)}
    res = slimc.compile(m, masks, torch.randn(2, 3, 8, 8))
    assert res.model.block.conv2.groups == G - 1
    cols = torch.ones(m.block.conv3.weight.shape)
    cols[:, list(rows)] = 0
    final = {**masks, "block.conv2.weight": _rows(m.block.conv2.weight.shape, rows), "block.conv3.weight": cols,
             **{f"block.{bn}.{p}": _rows((C,), rows) for bn in ("bn1", "bn2") for p in ("weight", "bias")}}
    assert set(res.masks) == set(final)
    for name, mask in final.items():
        assert torch.equal(res.masks[name].expand(mask.shape) != 0, mask != 0), name
    _assert_exact(res.model, _masked(m, final))


class Functional(nn.Module):
    """The grouped conv written functionally on a param, its group count an attribute."""

    def __init__(self):
        super().__init__()
        self.groups = G
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.w = nn.Parameter(torch.randn(C, PER, 3, 3) * 0.2)
        self.head = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(F.conv2d(x, self.w, None, 1, 1, 1, self.groups))
        return self.head(x)


def test_functional_grouped_conv_patches_groups_in_graph_and_class():
    torch.manual_seed(0)
    m = Functional().eval()
    rows = range(PER, 2 * PER)
    masks = {"stem.weight": _rows(m.stem.weight.shape, rows), "w": _rows(m.w.shape, rows)}
    res = slimc.compile(m, masks, torch.randn(2, 3, 8, 8))
    assert res.model.groups == G - 1 and res.model.w.shape == (C - PER, PER, 3, 3)
    conv = next(n for n in res.module.graph.nodes if "conv2d" in str(n.target))
    assert conv.args[6] == G - 1  # the graph's literal groups: 4 → 3
    _assert_exact(res.model, _masked(m, masks))
    _assert_exact(res.module, _masked(m, masks))


def test_pruner_removes_whole_groups_and_compile_removes_exactly_those():
    m = _net()
    x = torch.randn(2, 3, 8, 8)
    masks = prune(m, x, ratio=0.5, round_to=1)
    res = slimc.compile(m, masks, x)
    conv2 = res.model.block.conv2
    assert conv2.in_channels // conv2.groups == PER, "the group width must stay"
    assert conv2.groups == G // 2
    for name, mask in masks.items():  # the masks describe exactly the model compile makes
        final = res.masks[name].expand(mask.shape) if name in res.masks else torch.ones_like(mask)
        assert torch.equal(final != 0, mask.expand(final.shape) != 0), name
    _assert_exact(res.model, _masked(m, masks))


REGNET = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from patterns.torchvision_regnet import RegNet
from slimc.zoo import randomize_bn
torch.manual_seed(0)
model = randomize_bn(RegNet(), seed=0).eval()
example_inputs = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
"""


def test_torchvision_regnet_from_the_cli_loses_whole_groups(tmp_path):
    """torchvision's RegNetY blocks (groups computed from a group width of 8, SE on the grouped
    conv's output): slimc prune → compile → a fresh process compares the user's class, slim.pt
    and slim.onnx with the masked original at other batches and sizes."""
    run = run_family(tmp_path, REGNET, [(torch.randn(1, 3, 32, 32),), (torch.randn(2, 3, 32, 32),),
                                        (torch.randn(3, 3, 48, 40),)])
    run.assert_exact()
    grouped = [r for r in run.report["layers"] if r["layer"].endswith("f.b.0")]
    assert len(grouped) == 3 and any(r["changed"] for r in grouped)
    for r in grouped:
        assert r["after"][1] == 8, f"{r['layer']}: the group width (8) must stay: {r['after']}"
        assert r["after"][0] % 8 == 0 and r["after"][0] <= r["before"][0]
