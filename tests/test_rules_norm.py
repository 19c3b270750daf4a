"""Linear layers and normalizations: BatchNorm, GroupNorm, InstanceNorm, LayerNorm, norms
without affine (shape_rules/linear.py, shape_rules/norm.py). Each: a small fragment,
random structured masks, ``helpers.assert_contract``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import ConvChain, SEEDS, assert_contract, build, check, kept_reasons, mask_rows
from helpers import masked_idx, masked_reference, n_params, random_filter_masks, removed_idx, run_eval, slim_module, x_
import slimc


# --------------------------------------------------------------------------- linear / norms
class Linear3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_on_3d_input(seed):
    m = build(Linear3d, seed=seed)
    res = check(m, x_(2, 5, 8), seed=seed)
    assert slim_module(res, "fc1").out_features == 8
    assert slim_module(res, "fc2").in_features == 8


class BN1dOnLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("variant", ["bn1d_linear", "bn1d_conv1d", "bn2d", "bn3d"])
def test_batchnorm(variant):
    if variant == "bn1d_linear":
        m, x = build(BN1dOnLinear), x_(4, 8)
    else:
        nd = {"bn1d_conv1d": 1, "bn2d": 2, "bn3d": 3}[variant]
        m = build(ConvChain, nd)
        x = x_(*{1: (2, 3, 12), 2: (2, 3, 6, 6), 3: (2, 3, 4, 4, 4)}[nd])
    res = check(m, x)
    # every removed channel's BN affine is zeroed in the final masks (β would leak otherwise)
    bn = "bn" if variant == "bn1d_linear" else "bn1"
    src = "fc1.weight" if variant == "bn1d_linear" else "conv1.weight"
    gone = removed_idx(res, m, src)
    assert gone
    for p in ("weight", "bias"):
        assert masked_idx(res.masks[f"{bn}.{p}"]) == gone


def test_batchnorm_train_mode_batch_statistics():
    """In train mode BN uses batch statistics: the slim model still matches."""
    m = build(ConvChain, 2, train=True)
    res = check(m, x_(2, 3, 6, 6))
    assert res.module.training
    ref = masked_reference(m, res.masks).train()
    x = x_(4, 3, 6, 6, seed=5)
    with torch.no_grad():
        a, b = res.module(x), ref(x)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


class GNNet(nn.Module):
    def __init__(self, groups: int = 4, c: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.gn = nn.GroupNorm(groups, c)
        self.conv2 = nn.Conv2d(c, 6, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.gn(self.conv1(x))))


def test_groupnorm_half_group_removes_nothing():
    m = build(GNNet)
    res = assert_contract(m, {"conv1.weight": mask_rows(m, "conv1.weight", [0, 1])}, x_(2, 3, 6, 6))
    assert removed_idx(res, m, "conv1.weight") == set()
    gn = slim_module(res, "gn")
    assert (gn.num_groups, gn.num_channels) == (4, 16)
    assert "GroupNorm" in kept_reasons(res)


def test_groupnorm_whole_group_shrinks_num_groups():
    m = build(GNNet)
    res = check(m, x_(2, 3, 6, 6), {"conv1.weight": mask_rows(m, "conv1.weight", [4, 5, 6, 7, 9])})
    assert removed_idx(res, m, "conv1.weight") == {4, 5, 6, 7}
    gn = slim_module(res, "gn")
    assert (gn.num_groups, gn.num_channels) == (3, 12)
    assert slim_module(res, "conv2").in_channels == 12


@pytest.mark.parametrize("seed", SEEDS)
def test_groupnorm_random_masks(seed):
    m = build(GNNet, seed=seed)
    assert_contract(m, random_filter_masks(m, 0.6, seed), x_(2, 3, 6, 6))


class INNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.inorm(self.conv1(x))))


def test_instancenorm_affine():
    m = build(INNet)
    res = check(m, x_(2, 3, 6, 6))
    assert slim_module(res, "inorm").num_features == 4


class LNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.ln(self.fc1(x))))


@pytest.mark.parametrize("seed", SEEDS)
def test_layernorm_exact_form(seed):
    m = build(LNNet, seed=seed)
    masks = {"fc1.weight": random_filter_masks(m, 0.5, seed)["fc1.weight"]}
    res = check(m, x_(2, 5, 8), masks)
    assert removed_idx(res, m, "fc1.weight") == masked_idx(masks["fc1.weight"])
    assert not any(isinstance(mod, nn.LayerNorm) and mod.normalized_shape == (16,) for mod in res.module.modules())


def test_layernorm_renorm_compiles():
    m = build(LNNet)
    masks = {"fc1.weight": random_filter_masks(m, 0.5, 0)["fc1.weight"]}
    res = slimc.compile(m, masks, x_(2, 5, 8), verify=False, renorm=True)
    assert n_params(res.module) < n_params(m)
    lns = [mod for mod in res.module.modules() if isinstance(mod, nn.LayerNorm)]
    assert lns and lns[0].normalized_shape == (8,)
    out = run_eval(res.module, (x_(3, 5, 8),))[0]
    assert out.shape == (3, 5, 4) and torch.isfinite(out).all()


def test_layernorm_renorm_with_verify_is_reported_approximate():
    m = build(LNNet)
    masks = {"fc1.weight": random_filter_masks(m, 0.5, 0)["fc1.weight"]}
    res = slimc.compile(m, masks, x_(2, 5, 8), renorm=True)  # verify=True
    assert res.report["verify"]["max_abs_diff"] > 0
    assert "approximate" in str(res.report).lower()


class TorchRMSNet(nn.Module):
    """torch's own nn.RMSNorm (F.rms_norm in the graph) on a pruned hidden size."""

    def __init__(self, eps=1e-6):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.RMSNorm(16, eps=eps)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


@pytest.mark.parametrize("eps", [1e-6, None])
def test_torch_rmsnorm_is_exact_over_kept_channels(eps):
    """F.rms_norm had no rule: the norm was a barrier and the hidden size never shrank
    (property draw seed 8). Now its mean of squares is written out over the original count
    in the graph, and the user's nn.RMSNorm rescales γ and ε (ε = None: torch's default)."""
    m = build(TorchRMSNet, eps=eps)
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
    masks = {"fc1.weight": mask_rows(m, "fc1.weight", [1, 4, 9])}
    res = check(m, x_(2, 5, 8), masks)
    assert removed_idx(res, m, "fc1.weight") == {1, 4, 9}
    assert res.model is not None and res.model.norm.normalized_shape == (13,)
    x = x_(3, 7, 8, seed=1)
    ref = run_eval(masked_reference(m, res.masks), (x,))[0]
    for slim in (res.module, res.model):
        assert (run_eval(slim, (x,))[0] - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


class NoAffineNorms(nn.Module):
    """Norm layers whose sizes no parameter carries: GroupNorm/LayerNorm/InstanceNorm without affine."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8, affine=False)
        self.inorm = nn.InstanceNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.fc1 = nn.Linear(6, 12)
        self.ln = nn.LayerNorm(12, elementwise_affine=False)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        y = self.c2(F.relu(self.inorm(self.gn(self.c1(x)))))
        return self.fc2(self.ln(self.fc1(y.mean((2, 3)))))


def test_norms_without_affine_are_resized():
    torch.manual_seed(0)
    m = NoAffineNorms().eval()
    wm = torch.ones(8, 3, 3, 3)
    wm[:2] = 0  # one whole GroupNorm group (channels 0, 1)
    bm = torch.ones(8)
    bm[:2] = 0
    fm = torch.ones(12, 6)
    fm[:4] = 0
    fb = torch.ones(12)
    fb[:4] = 0
    res = assert_contract(m, {"c1.weight": wm, "c1.bias": bm, "fc1.weight": fm, "fc1.bias": fb}, x_(2, 3, 6, 6))
    gn = slim_module(res, "gn")
    assert (gn.num_groups, gn.num_channels) == (3, 6)
    assert slim_module(res, "c1").out_channels == 6 and slim_module(res, "fc1").out_features == 8
