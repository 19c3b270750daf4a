"""Library patterns (tests/patterns/): blocks written the way torchvision, timm and HF write
them — norm-act subclasses with their own forward, ConvNormAct, DropPath and stochastic
depth, layer scale, SqueezeExcite with make_divisible rounding, channels-first LayerNorm,
GhostNet's concat + slice, CSP split/concat, DPN's dual path, ReXNet's partial residual.

Each must keep the contract (``assert_contract``) under masks on every group — random
per-filter masks, sinks-only masks and the dependency-aware ``slimc.prune.group_masks`` —
and slim as far as the masks allow: a pruner's whole-group masks leave no masked group
behind.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_contract, kept_reasons, n_params, random_filter_masks, sink_masks
from patterns import EXPORT_ONLY, PATTERNS
from slimc.prune import group_masks
from helpers import randomize_norms

MASKS = ("filter", "sinks", "groups")
# HF's channels-first LayerNorm takes the variance of x - mean(x) over the channels: a removed
# channel contributes mean² there, so the stream channels it normalizes cannot go exactly
KEPT_BY_MATH = {"hf_convnext_layer": "sums over dim 1: the removed channel is not zero at its input",
                "timm_poolformer_group_norm1": "removes whole groups"}  # one group: all channels or none


def build(name: str, seed: int = 0, train: bool = False) -> tuple[nn.Module, torch.Tensor]:
    make, shape = {**PATTERNS, **EXPORT_ONLY}[name]
    torch.manual_seed(seed)
    model = randomize_norms(make(), seed).train(train)
    with torch.no_grad():  # layer scales and SE gates away from their trivial initial values
        for n, p in model.named_parameters():
            if "gamma" in n or "layer_scale" in n:
                p.copy_(torch.rand_like(p) + 0.5)
    return model, torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def masks_for(kind: str, model: nn.Module, x: torch.Tensor, seed: int = 0, front_end: str = "auto") -> dict:
    if kind == "filter":
        return random_filter_masks(model, 0.5, seed)
    if kind == "sinks":
        return sink_masks(model, 0.5, seed, types=(nn.Conv2d, nn.Linear))
    return group_masks(model, x, ratio=0.5, seed=seed, front_end=front_end)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_keeps_the_contract(name, kind):
    model, x = build(name)
    res = assert_contract(model, masks_for(kind, model, x), x)
    assert not res.report["barriers"], res.report["barriers"]
    assert not res.report["probed"], res.report["probed"]  # every op of these blocks has a rule
    if kind != "sinks":
        assert n_params(res.module) < n_params(model), kept_reasons(res)
    if kind == "groups":  # whole masked groups: every one of them goes (unless the math forbids)
        assert all(KEPT_BY_MATH.get(name, "-") in r["reason"] for r in res.report["kept"]), kept_reasons(res)


EXPORT_CASES = ["timm_conv_norm_act", "timm_mbconv_se_droppath", "timm_ghost_cat_slice", "timm_dpn_dual_path",
                "timm_rexnet_partial_residual", "tv_mbconv_stochastic_depth", "tv_convnext_layer_scale",
                "timm_rexnet_inplace_add"]


@pytest.mark.parametrize("name", EXPORT_CASES)
def test_pattern_through_export(name):
    model, x = build(name)
    masks = masks_for("groups", model, x, front_end="export")
    res = assert_contract(model, masks, x, front_end="export")
    assert res.report["front_end"] == "export"
    assert n_params(res.module) < n_params(model) and not res.report["kept"], kept_reasons(res)


def test_inplace_partial_residual_falls_back_to_export():
    """fx cannot trace ``x[:, :c] += s``; auto falls back to export, which functionalizes it."""
    model, x = build("timm_rexnet_inplace_add")
    res = assert_contract(model, random_filter_masks(model, 0.5), x)
    assert res.report["front_end"] == "export"
    assert n_params(res.module) < n_params(model)


@pytest.mark.parametrize("name", ["timm_mbconv_se_droppath", "tv_mbconv_stochastic_depth", "tv_convnext_layer_scale",
                                  "tv_stochastic_depth_function", "timm_conv_norm_act"])
def test_train_mode_drop_path_and_norm_act_follow_the_mode(name):
    """Compiled in train mode, drop-path and BatchNormAct2d's F.batch_norm read the
    module's mode at run time: the slim model in eval equals the masked one in eval."""
    model, x = build(name, train=True)
    res = assert_contract(model, random_filter_masks(model, 0.5), x)
    assert res.module.training
    assert n_params(res.module) < n_params(model)
    code = res.module.code
    assert "timm" not in code and "torchvision" not in code  # lowered to torch ops
