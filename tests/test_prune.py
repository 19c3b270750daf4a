"""Every pruner writes complete masks: compile removes exactly what they mask, keeps nothing
"because coupled", and the slim model computes what the model masked with the pruner's
own masks computes. Plus: each criterion picks what it promises."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from helpers import assert_contract, assert_same_masks, masked_idx, n_params, outputs_diff, user_masked
from slimc import zoo
from slimc.prune import CRITERIA, make_pruner, prune, slim_regularizer
from slimc.prune.criteria import names

ALL_CRITERIA = names()
FAST = ["resnet_tiny", "vit_tiny"]


def zoo_data(name: str, n: int = 2, batch: int = 4) -> list[tuple]:
    g = torch.Generator().manual_seed(11)
    return [zoo.ZOO[name].inputs(batch, g) for _ in range(n)]


def output_energy(out, target) -> torch.Tensor:
    """A loss every output element feeds (the zoo has no labels)."""
    return out.float().pow(2).mean()


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    return zoo.build(name)


def check_pruner(name: str, criterion: str, **kw):
    m, x = _model(name), zoo.example_inputs(name)
    pruned = make_pruner(m, x, criterion, data=zoo_data(name), loss_fn=output_energy, **kw).prune()
    res = assert_contract(m, pruned.masks, x)
    if criterion == "level":  # unstructured zeros that happen to fill a slice of a kept channel stay
        assert all(k["reason"].startswith("held by unmasked source") for k in res.report["kept"]), res.report["kept"]
    else:
        assert res.report["kept"] == [], res.report["kept"]
    assert_same_masks(res.masks, pruned.masks)
    d, s = outputs_diff(res.module, user_masked(m, pruned.masks, res.masks), x, n=2)
    assert d <= 1e-5 * max(1.0, s)
    assert res.report["params"]["after"] == pruned.params_after()
    return m, pruned, res


def test_names_cover_the_registry():
    assert set(ALL_CRITERIA) == {"level", *CRITERIA}
    assert {"l1", "l2", "fpgm", "random", "slim", "apoz", "mean_activation", "taylor"} <= set(CRITERIA)


@pytest.mark.parametrize("criterion", ALL_CRITERIA)
@pytest.mark.parametrize("name", FAST)
def test_every_pruner_writes_complete_masks(name, criterion):
    m, pruned, res = check_pruner(name, criterion, ratio=0.5)
    if criterion == "level":  # unstructured: the zeros stay, counted in the report
        assert res.report["unstructured_zeros"]
        assert sum(res.report["unstructured_zeros"].values()) > 0.3 * n_params(m)
    else:
        assert n_params(res.module) < 0.45 * n_params(m)


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ALL_CRITERIA)
@pytest.mark.parametrize("name", [n for n in zoo.names() if n not in FAST])
def test_every_pruner_on_every_zoo_model(name, criterion):
    check_pruner(name, criterion, ratio=0.5)


@pytest.mark.parametrize("criterion", ["taylor", "slim", "fpgm"])
def test_global_ranking_round_to_and_cap_apply_to_every_pruner(criterion):
    m, pruned, res = check_pruner("resnet_tiny", criterion, ratio=0.5, ranking="global", round_to=4,
                                  max_sparsity_per_layer=0.7)
    assert max(pruned.sparsity.values()) <= 0.7 + 1e-9
    widths = [r["after"][0] for r in res.report["layers"] if r["changed"] and r["type"] == "Conv2d"]
    assert widths and all(w % 4 == 0 for w in widths), widths


# --------------------------------------------------------------------------- criteria
class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.bn(self.c1(x))))


def _rows(masks: dict, fqn: str = "c1.weight") -> set[int]:
    return masked_idx(masks[fqn], 0)


def _convbn() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return ConvBN().eval(), (torch.randn(2, 3, 6, 6),)


def test_activation_criteria_prune_what_they_promise():
    """What c2 reads is relu(bn(c1 x)) ≈ relu(β): channels 1 and 3 are always zero, 4..7 small
    and read by nothing (zero columns of c2), 0 and 2 large."""
    m, x = _convbn()
    with torch.no_grad():
        m.bn.weight.fill_(1.0)
        m.bn.bias.copy_(torch.tensor([5.0, -9, 5, -9, 0.01, 0.02, 0.03, 0.04]))
        m.c1.weight.mul_(0.001)
        m.c1.bias.zero_()
        m.c2.weight[:, 4:] = 0.0
    data = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    assert _rows(prune(m, x, "apoz", ratio=0.25, data=data)) == {1, 3}  # all zeros
    assert _rows(prune(m, x, "mean_activation", ratio=0.75, data=data)) == {1, 3, 4, 5, 6, 7}
    # a · ∂L/∂a is 0 where a is (1, 3) and where nothing reads the channel (4..7)
    assert _rows(prune(m, x, "taylor", ratio=0.75, data=data, loss_fn=output_energy)) == {1, 3, 4, 5, 6, 7}


def test_weight_criteria_prune_what_they_promise():
    m, x = _convbn()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.05, 0.6, 0.3]))
        m.c1.weight[[0, 2, 4, 6]] = m.c1.weight[0].clone()  # four identical filters: the median
        m.c1.weight[[1, 3, 5, 7]] *= 10  # four far-away filters
    assert _rows(prune(m, x, "slim", ratio=0.5)) == {1, 3, 5, 7}  # smallest |γ|
    assert _rows(prune(m, x, "fpgm", ratio=0.5)) == {0, 2, 4, 6}  # redundant (at the median)
    assert _rows(prune(m, x, "l1", ratio=0.5)) & {1, 3, 5, 7} == set()  # the big filters stay
    level = prune(m, x, "level", ratio=0.5)["c1.weight"]
    w = m.c1.weight.detach().abs()
    assert w[level == 0].max() <= w[level != 0].min()  # the smallest magnitudes go
    assert "c2.weight" not in prune(m, x, "level", ratio=0.5)  # an output layer, not named: not pruned
    named = prune(m, x, "level", [{"sparsity": 0.5, "op_names": ["c2"]}])
    assert set(named) == {"c2.weight"}


def test_complete_masks_cover_bn_bias_and_next_columns():
    m, x = _convbn()
    masks = prune(m, x, "l1", ratio=0.5)
    rows = _rows(masks)
    assert len(rows) == 4
    for fqn in ("c1.bias", "bn.weight", "bn.bias"):
        assert masked_idx(masks[fqn], 0) == rows, fqn
    assert masked_idx(masks["c2.weight"], 1) == rows
    assert not any(k.startswith("bn.running") for k in masks)  # buffers need none


def test_slim_regularizer_is_l1_of_batchnorm_gamma():
    m, _ = _convbn()
    r = slim_regularizer(m, 1e-3)
    assert torch.isclose(r, 1e-3 * m.bn.weight.abs().sum())
    r.backward()
    assert torch.equal(m.bn.weight.grad, 1e-3 * torch.sign(m.bn.weight.detach()))
    assert slim_regularizer(nn.Linear(2, 2)).item() == 0.0


def test_unknown_criterion_is_one_line():
    from slimc.errors import ConfigError

    m, x = _convbn()
    with pytest.raises(ConfigError, match="unknown criterion 'l3': use one of level, l1"):
        prune(m, x, "l3")
