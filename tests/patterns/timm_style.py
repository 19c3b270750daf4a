"""Building blocks written the way timm writes them (timm/layers, timm/models), small.

``DropPath`` and ``drop_path`` carry timm's module name, as slimc keys library ops by
qualified name (shape_rules/library.py) without importing the library.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v, divisor=8, min_value=None, round_limit=.9):
    """timm/layers/helpers.py"""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def drop_path(x, drop_prob: float = 0., training: bool = False, scale_by_keep: bool = True):
    """timm/layers/drop.py"""
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm/layers/drop.py"""

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


drop_path.__module__ = DropPath.__module__ = "timm.layers.drop"  # the names timm's have


class BatchNormAct2d(nn.BatchNorm2d):
    """timm/layers/norm_act.py: BatchNorm + activation in one module, its own forward."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 apply_act=True, act_layer=nn.ReLU, inplace=True, drop_layer=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = act_layer(inplace=inplace) if apply_act else nn.Identity()

    def forward(self, x):
        torch._assert(x.ndim == 4, f'expected 4D input (got {x.ndim}D input)')
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                else:
                    exponential_average_factor = self.momentum
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )
        x = self.drop(x)
        x = self.act(x)
        return x


class ConvNormAct(nn.Module):
    """timm/layers/conv_bn_act.py"""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, groups=1, bias=False,
                 apply_act=True, act_layer=nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=bias)
        self.bn = BatchNormAct2d(out_channels, apply_act=apply_act, act_layer=act_layer)

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        return x


class SqueezeExcite(nn.Module):
    """timm/models/_efficientnet_blocks.py"""

    def __init__(self, in_chs, rd_ratio=0.25, rd_channels=None, act_layer=nn.ReLU, gate_layer=nn.Sigmoid,
                 rd_round_fn=None):
        super().__init__()
        if rd_channels is None:
            rd_round_fn = rd_round_fn or round
            rd_channels = rd_round_fn(in_chs * rd_ratio)
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_reduce(x_se)
        x_se = self.act1(x_se)
        x_se = self.conv_expand(x_se)
        return x * self.gate(x_se)


class SEModule(nn.Module):
    """timm/layers/squeeze_excite.py: rd_channels rounded with make_divisible."""

    def __init__(self, channels, rd_ratio=1. / 16, rd_divisor=8, add_maxpool=False, bias=True, act_layer=nn.ReLU,
                 norm_layer=None, gate_layer=nn.Sigmoid):
        super().__init__()
        self.add_maxpool = add_maxpool
        rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias)
        self.bn = norm_layer(rd_channels) if norm_layer else nn.Identity()
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias)
        self.gate = gate_layer()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:
            x_se = 0.5 * x_se + 0.5 * x.amax((2, 3), keepdim=True)
        x_se = self.fc1(x_se)
        x_se = self.act(self.bn(x_se))
        x_se = self.fc2(x_se)
        return x * self.gate(x_se)


class InvertedResidual(nn.Module):
    """timm/models/_efficientnet_blocks.py: MBConv with SE, BatchNormAct2d and DropPath."""

    def __init__(self, in_chs, out_chs, exp_ratio=4.0, se_ratio=0.25, drop_path_rate=0.1):
        super().__init__()
        mid_chs = make_divisible(in_chs * exp_ratio)
        self.has_skip = in_chs == out_chs
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid_chs, act_layer=nn.SiLU)
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, 3, padding=1, groups=mid_chs, bias=False)
        self.bn2 = BatchNormAct2d(mid_chs, act_layer=nn.SiLU)
        self.se = SqueezeExcite(mid_chs, rd_ratio=se_ratio / exp_ratio, act_layer=nn.SiLU)
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = BatchNormAct2d(out_chs, apply_act=False)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class LayerNorm2d(nn.LayerNorm):
    """timm/layers/norm.py: LayerNorm over the channels of NCHW tensors."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class ConvNeXtBlock(nn.Module):
    """timm/models/convnext.py (conv_mlp=False): dw conv, channels-last LayerNorm, MLP,
    layer scale ``gamma``, DropPath."""

    def __init__(self, dim, ls_init_value=1e-1, drop_path_rate=0.1):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.fc2(self.act(self.fc1(x)))
        x = x.mul(self.gamma)
        x = x.permute(0, 3, 1, 2)
        x = self.drop_path(x) + shortcut
        return x


class GhostModule(nn.Module):
    """timm/models/ghostnet.py: primary conv + cheap depthwise op, concatenated and sliced."""

    def __init__(self, in_chs, out_chs, kernel_size=1, ratio=2, dw_size=3, act_layer=nn.ReLU):
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, kernel_size, 1, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_chs),
            act_layer(inplace=True),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_chs, new_chs, dw_size, 1, dw_size // 2, groups=init_chs, bias=False),
            nn.BatchNorm2d(new_chs),
            act_layer(inplace=True),
        )

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.out_chs, :, :]


class CrossStage(nn.Module):
    """timm/models/cspnet.py: expand, split in two, blocks on one half, transition, concat."""

    def __init__(self, in_chs, out_chs, depth=1):
        super().__init__()
        self.expand_chs = exp_chs = out_chs
        self.conv_exp = ConvNormAct(in_chs, exp_chs, kernel_size=1)
        self.blocks = nn.Sequential(*[ConvNormAct(exp_chs // 2, exp_chs // 2, kernel_size=3) for _ in range(depth)])
        self.conv_transition_b = ConvNormAct(exp_chs // 2, exp_chs // 2, kernel_size=1)
        self.conv_transition = ConvNormAct(exp_chs, out_chs, kernel_size=1)

    def forward(self, x):
        x = self.conv_exp(x)
        xs, xb = x.split(self.expand_chs // 2, dim=1)
        xb = self.blocks(xb)
        xb = self.conv_transition_b(xb).contiguous()
        out = self.conv_transition(torch.cat([xs, xb], dim=1))
        return out


class DualPathBlock(nn.Module):
    """timm/models/dpn.py: a residual path (add) and a dense path (cat), split by slices."""

    def __init__(self, in_chs, num_1x1_a, num_3x3_b, num_1x1_c, inc, groups=2, first=False):
        super().__init__()
        self.num_1x1_c = num_1x1_c
        self.inc = inc
        self.c1x1_w_s1 = ConvNormAct(in_chs, num_1x1_c + 2 * inc, kernel_size=1) if first else None
        self.c1x1_a = ConvNormAct(in_chs, num_1x1_a, kernel_size=1)
        self.c3x3_b = ConvNormAct(num_1x1_a, num_3x3_b, kernel_size=3, groups=groups)
        self.c1x1_c = ConvNormAct(num_3x3_b, num_1x1_c + inc, kernel_size=1)

    def forward(self, x):
        if isinstance(x, tuple):
            x_in = torch.cat(x, dim=1)
        else:
            x_in = x
        if self.c1x1_w_s1 is None:
            x_s1, x_s2 = x
        else:
            x_s = self.c1x1_w_s1(x_in)
            x_s1 = x_s[:, :self.num_1x1_c, :, :]
            x_s2 = x_s[:, self.num_1x1_c:, :, :]
        x_in = self.c1x1_a(x_in)
        x_in = self.c3x3_b(x_in)
        x_in = self.c1x1_c(x_in)
        out1 = x_in[:, :self.num_1x1_c, :, :]
        out2 = x_in[:, self.num_1x1_c:, :, :]
        resid = x_s1 + out1
        dense = torch.cat([x_s2, out2], dim=1)
        return resid, dense


class LinearBottleneck(nn.Module):
    """timm/models/rexnet.py: a partial residual over the first in_chs channels."""

    def __init__(self, in_chs, out_chs, exp_ratio=2.0, se_ratio=0.25, inplace_add=False):
        super().__init__()
        self.in_channels = in_chs
        self.inplace_add = inplace_add
        mid_chs = make_divisible(round(in_chs * exp_ratio), divisor=1)
        self.conv_exp = ConvNormAct(in_chs, mid_chs, act_layer=nn.SiLU)
        self.conv_dw = ConvNormAct(mid_chs, mid_chs, kernel_size=3, groups=mid_chs, apply_act=False)
        self.se = SEModule(mid_chs, rd_ratio=se_ratio, rd_divisor=1)
        self.act_dw = nn.ReLU6()
        self.conv_pwl = ConvNormAct(mid_chs, out_chs, 1, apply_act=False)

    def forward(self, x):
        shortcut = x
        x = self.conv_exp(x)
        x = self.conv_dw(x)
        x = self.se(x)
        x = self.act_dw(x)
        x = self.conv_pwl(x)
        if self.inplace_add:  # older timm: an in-place write (the export front end)
            x[:, 0:self.in_channels] += shortcut
        else:
            x = torch.cat([x[:, 0:self.in_channels] + shortcut, x[:, self.in_channels:]], dim=1)
        return x


class SplitAttn(nn.Module):
    """timm/layers/split_attn.py (ResNeSt): radix branches from one conv, summed over the
    radix axis, re-weighted by a softmax across it."""

    def __init__(self, in_channels, out_channels, radix=2, rd_ratio=0.25):
        super().__init__()
        self.radix = radix
        mid_chs = out_channels * radix
        attn_chs = make_divisible(in_channels * radix * rd_ratio, min_value=8, divisor=8)
        self.conv = nn.Conv2d(in_channels, mid_chs, 3, padding=1, groups=radix, bias=False)
        self.bn0 = nn.BatchNorm2d(mid_chs)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, attn_chs, 1)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, mid_chs, 1)

    def rsoftmax(self, x):
        batch = x.size(0)
        x = x.view(batch, 1, self.radix, -1).transpose(1, 2)
        x = F.softmax(x, dim=1)
        return x.reshape(batch, -1)

    def forward(self, x):
        x = self.act0(self.bn0(self.conv(x)))
        B, RC, H, W = x.shape
        x = x.reshape((B, self.radix, RC // self.radix, H, W))
        x_gap = x.sum(dim=1)
        x_gap = x_gap.mean((2, 3), keepdim=True)
        x_attn = self.fc2(self.act1(self.fc1(x_gap)))
        x_attn = self.rsoftmax(x_attn).view(B, -1, 1, 1)
        out = (x * x_attn.reshape((B, self.radix, RC // self.radix, 1, 1))).sum(dim=1)
        return out.contiguous()


class Res2NetSplits(nn.Module):
    """timm/models/res2net.py: split into scale pieces, hierarchical convs, the last piece
    passed as ``spx[-1]``, concatenated."""

    def __init__(self, width=4, scale=4):
        super().__init__()
        self.width = width
        self.convs = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale - 1)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(scale - 1)])

    def forward(self, out):
        spx = torch.split(out, self.width, 1)
        spo = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = F.relu(bn(conv(sp)))
            spo.append(sp)
        spo.append(spx[-1])
        return torch.cat(spo, 1)


class GlobalResponseNorm(nn.Module):
    """timm/layers/grn.py (ConvNeXt-V2), channels last."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.bias = nn.Parameter(torch.rand(dim))

    def forward(self, x):
        x_g = x.norm(p=2, dim=(1, 2), keepdim=True)
        x_n = x_g / (x_g.mean(dim=-1, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(1, 1, 1, -1), self.weight.view(1, 1, 1, -1), x * x_n)


class ConvNeXtV2Block(nn.Module):
    """timm/models/convnext.py with GRN in the MLP."""

    def __init__(self, dim):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        shortcut = x
        x = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        x = self.fc2(self.grn(self.act(self.fc1(x))))
        return x.permute(0, 3, 1, 2) + shortcut


class GroupNorm1(nn.GroupNorm):
    """timm/layers/norm.py (PoolFormer): GroupNorm with one group, its own forward."""

    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class PoolFormerBlock(nn.Module):
    """timm/models/metaformer.py: pooling token mixer between GroupNorm1s, layer scales."""

    def __init__(self, dim):
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.norm2 = GroupNorm1(dim)
        self.fc1 = nn.Conv2d(dim, 2 * dim, 1)
        self.fc2 = nn.Conv2d(2 * dim, dim, 1)
        self.layer_scale1 = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.layer_scale1 * (self.pool(y) - y)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PositionalEncodingFourier(nn.Module):
    """timm/models/edgenext.py: reads its conv's ``weight.device`` (a get_attr of a leaf's param)."""

    def __init__(self, hidden_dim=4, dim=16):
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.hidden_dim = hidden_dim

    def forward(self, x):
        device, dtype = self.token_projection.weight.device, self.token_projection.weight.dtype
        b, _, h, w = x.shape
        y_embed = torch.arange(1, h + 1, device=device, dtype=dtype).view(1, 1, h, 1).expand(b, self.hidden_dim, h, w)
        x_embed = torch.arange(1, w + 1, device=device, dtype=dtype).view(1, 1, 1, w).expand(b, self.hidden_dim, h, w)
        pos = torch.cat((y_embed.sin(), x_embed.cos()), dim=1)
        return x + self.token_projection(pos)
