"""Small networks built from blocks written the way torchvision, timm and HF write them
(``torchvision_style``, ``timm_style``, ``hf_style``): what users bring from those
libraries, without importing them. :data:`PATTERNS` maps a name to (builder, input shape).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from patterns import hf_style as hf
from patterns import timm_style as timm
from patterns import torchvision_style as tv


class Net(nn.Module):
    """stem → body → global average pool → classifier."""

    def __init__(self, stem: nn.Module, body: nn.Module, width: int, classes: int = 5):
        super().__init__()
        self.stem = stem
        self.body = body
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.body(self.stem(x))
        if isinstance(x, tuple):
            x = torch.cat(x, dim=1)
        return self.head(x.mean((2, 3)))


class DPNBody(nn.Module):
    """Two dual-path blocks; the second takes the (residual, dense) pair."""

    def __init__(self):
        super().__init__()
        self.b1 = timm.DualPathBlock(16, 12, 12, 16, 4, first=True)
        self.b2 = timm.DualPathBlock(16 + 12, 12, 12, 16, 4)

    def forward(self, x):
        return self.b2(self.b1(x))


class CallsStochasticDepth(nn.Module):
    """A block calling torchvision's ``stochastic_depth`` function directly."""

    def __init__(self, dim):
        super().__init__()
        self.conv = tv.Conv2dNormActivation(dim, dim, kernel_size=3)

    def forward(self, x):
        return tv.stochastic_depth_call(self.conv(x), self.training) + x


def _timm_stem(cout=16):
    return timm.ConvNormAct(3, cout, kernel_size=3)


def _tv_stem(cout=16):
    return tv.Conv2dNormActivation(3, cout, kernel_size=3)


PATTERNS: dict[str, tuple[Callable[[], nn.Module], tuple]] = {
    "timm_conv_norm_act": (lambda: Net(_timm_stem(), timm.ConvNormAct(16, 24, kernel_size=3), 24), (2, 3, 8, 8)),
    "timm_mbconv_se_droppath": (lambda: Net(_timm_stem(), nn.Sequential(
        timm.InvertedResidual(16, 16), timm.InvertedResidual(16, 16), timm.ConvNormAct(16, 24)), 24), (2, 3, 8, 8)),
    "timm_se_make_divisible": (lambda: Net(_timm_stem(24), nn.Sequential(
        timm.SEModule(24, rd_ratio=1 / 3, rd_divisor=4), timm.ConvNormAct(24, 16)), 16), (2, 3, 8, 8)),
    "timm_convnext_layer_scale": (lambda: Net(nn.Sequential(nn.Conv2d(3, 16, 2, 2), timm.LayerNorm2d(16)),
                                              nn.Sequential(timm.ConvNeXtBlock(16), timm.ConvNeXtBlock(16)), 16),
                                  (2, 3, 8, 8)),
    "timm_ghost_cat_slice": (lambda: Net(_timm_stem(), nn.Sequential(
        timm.GhostModule(16, 20), timm.GhostModule(20, 24)), 24), (2, 3, 8, 8)),
    "timm_csp_split_cat": (lambda: Net(_timm_stem(), timm.CrossStage(16, 32), 32), (2, 3, 8, 8)),
    "timm_dpn_dual_path": (lambda: Net(_timm_stem(), DPNBody(), 16 + 16), (2, 3, 8, 8)),
    "timm_rexnet_partial_residual": (lambda: Net(_timm_stem(), nn.Sequential(
        timm.LinearBottleneck(16, 24), timm.LinearBottleneck(24, 32)), 32), (2, 3, 8, 8)),
    "timm_resnest_split_attention": (lambda: Net(_timm_stem(), nn.Sequential(
        timm.SplitAttn(16, 16), timm.ConvNormAct(16, 24)), 24), (2, 3, 8, 8)),
    "timm_res2net_splits": (lambda: Net(_timm_stem(), nn.Sequential(
        timm.Res2NetSplits(4, 4), timm.ConvNormAct(16, 24)), 24), (2, 3, 8, 8)),
    "timm_convnextv2_grn": (lambda: Net(nn.Sequential(nn.Conv2d(3, 16, 2, 2), timm.LayerNorm2d(16)),
                                        nn.Sequential(timm.ConvNeXtV2Block(16), timm.ConvNeXtV2Block(16)), 16),
                            (2, 3, 8, 8)),
    "timm_poolformer_group_norm1": (lambda: Net(_timm_stem(), nn.Sequential(
        timm.PoolFormerBlock(16), timm.ConvNormAct(16, 24)), 24), (2, 3, 8, 8)),
    "timm_edgenext_pos_encoding": (lambda: Net(_timm_stem(), nn.Sequential(
        timm.PositionalEncodingFourier(4, 16), timm.ConvNormAct(16, 24)), 24), (2, 3, 8, 8)),
    "tv_mbconv_stochastic_depth": (lambda: Net(_tv_stem(), nn.Sequential(tv.MBConv(16, 16), tv.MBConv(16, 16)), 16),
                                   (2, 3, 8, 8)),
    "tv_convnext_layer_scale": (lambda: Net(nn.Sequential(nn.Conv2d(3, 16, 2, 2), tv.LayerNorm2d(16)), nn.Sequential(
        tv.CNBlock(16), tv.ConvNeXtDownsample(16, 24), tv.CNBlock(24)), 24), (2, 3, 8, 8)),
    "tv_stochastic_depth_function": (lambda: Net(_tv_stem(), CallsStochasticDepth(16), 16), (2, 3, 8, 8)),
    "hf_convnext_layer": (lambda: Net(nn.Sequential(nn.Conv2d(3, 16, 2, 2), hf.ConvNextLayerNorm(16)),
                                      nn.Sequential(hf.ConvNextLayer(16), hf.ConvNextLayer(16)), 16), (2, 3, 8, 8)),
    "hf_resnet_conv_layer": (lambda: Net(hf.ResNetConvLayer(3, 16), hf.ResNetConvLayer(16, 24), 24), (2, 3, 8, 8)),
}
# written with an in-place slice write (older timm ReXNet): only the export front end traces it
EXPORT_ONLY = {"timm_rexnet_inplace_add": (lambda: Net(_timm_stem(), nn.Sequential(
    timm.LinearBottleneck(16, 24, inplace_add=True), timm.LinearBottleneck(24, 32, inplace_add=True)), 32),
    (2, 3, 8, 8))}
