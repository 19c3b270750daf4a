"""Attention with per-head learned biases, written the way timm writes LeViT and
EfficientFormer (timm/models/levit.py, timm/models/efficientformer.py): an
``attention_biases`` table (num_heads, positions) indexed by the buffer
``attention_bias_idxs``, cached per device in eval mode (``attention_bias_cache``), the
cache cleared by ``train()``. Small widths; the code shapes are the libraries'.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Dict

import torch
from torch import nn

from patterns.norm_forms import Mlp  # timm/layers/mlp.py


def ndgrid(*tensors):
    """timm/layers/grid.py"""
    return torch.meshgrid(*tensors, indexing='ij')


def _rel_pos_idxs(resolution):
    pos = torch.stack(ndgrid(torch.arange(resolution[0]), torch.arange(resolution[1]))).flatten(1)
    rel_pos = (pos[..., :, None] - pos[..., None, :]).abs()
    return (rel_pos[0] * resolution[1]) + rel_pos[1]


class ConvNorm(nn.Module):
    """timm/models/levit.py"""

    def __init__(self, in_chs, out_chs, kernel_size=1, stride=1, padding=0, dilation=1, groups=1, bn_weight_init=1):
        super().__init__()
        self.linear = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):
        return self.bn(self.linear(x))


class LinearNorm(nn.Module):
    """timm/models/levit.py: Linear then BatchNorm1d over the flattened tokens."""

    def __init__(self, in_features, out_features, bn_weight_init=1):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class NormLinear(nn.Module):
    """timm/models/levit.py: the classifier head."""

    def __init__(self, in_features, out_features, bias=True, drop=0.):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x):
        return self.linear(self.drop(self.bn(x)))


class AttentionBiasCache(nn.Module):
    """The per-device cache of ``attention_biases[:, attention_bias_idxs]`` that timm's LeViT and
    EfficientFormer attentions both write (the same two methods in each class there)."""
    attention_bias_cache: Dict[str, torch.Tensor]

    @torch.no_grad()
    def train(self, mode=True):
        super().train(mode)
        if mode and self.attention_bias_cache:
            self.attention_bias_cache = {}  # clear ab cache

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        if torch.jit.is_tracing() or self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        else:
            device_key = str(device)
            if device_key not in self.attention_bias_cache:
                self.attention_bias_cache[device_key] = self.attention_biases[:, self.attention_bias_idxs]
            return self.attention_bias_cache[device_key]


class LevitAttention(AttentionBiasCache):
    """timm/models/levit.py ``Attention`` (use_conv=False): q, k, v split per head from one
    projection, ``attn = q @ k * scale + attention_biases[:, attention_bias_idxs]``."""
    attention_bias_cache: Dict[str, torch.Tensor]

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4., resolution=14, act_layer=nn.Hardswish):
        super().__init__()
        resolution = (resolution, resolution) if isinstance(resolution, int) else resolution
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.key_attn_dim = key_dim * num_heads
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = int(attn_ratio * key_dim) * num_heads
        self.resolution = resolution

        self.qkv = LinearNorm(dim, self.val_attn_dim + self.key_attn_dim * 2)
        self.proj = nn.Sequential(OrderedDict([
            ('act', act_layer()),
            ('ln', LinearNorm(self.val_attn_dim, dim, bn_weight_init=0))
        ]))

        N = resolution[0] * resolution[1]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, N))
        self.register_buffer('attention_bias_idxs', _rel_pos_idxs(resolution), persistent=False)
        self.attention_bias_cache = {}

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(
            B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q = q.permute(0, 2, 1, 3)
        k = k.permute(0, 2, 3, 1)
        v = v.permute(0, 2, 1, 3)

        attn = q @ k * self.scale + self.get_attention_biases(x.device)
        attn = attn.softmax(dim=-1)

        x = (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        x = self.proj(x)
        return x


class LevitMlp(nn.Module):
    """timm/models/levit.py"""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.Hardswish, drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.ln1 = LinearNorm(in_features, hidden_features)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.ln2 = LinearNorm(hidden_features, out_features, bn_weight_init=0)

    def forward(self, x):
        x = self.ln1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.ln2(x)
        return x


class LevitBlock(nn.Module):
    """timm/models/levit.py"""

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4., mlp_ratio=2., resolution=14,
                 act_layer=nn.Hardswish):
        super().__init__()
        self.attn = LevitAttention(dim=dim, key_dim=key_dim, num_heads=num_heads, attn_ratio=attn_ratio,
                                   resolution=resolution, act_layer=act_layer)
        self.drop_path1 = nn.Identity()
        self.mlp = LevitMlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path2 = nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.attn(x))
        x = x + self.drop_path2(self.mlp(x))
        return x


class Levit(nn.Module):
    """timm/models/levit.py ``Levit`` (linear mode, one stage): a conv stem to tokens,
    LeViT blocks, the mean of the tokens into ``NormLinear``. ``img_size`` is fixed (the bias
    tables are per position)."""

    def __init__(self, img_size=32, in_chans=3, num_classes=10, embed_dim=32, key_dim=8, depth=2, num_heads=4,
                 attn_ratio=2., mlp_ratio=2.):
        super().__init__()
        act_layer = nn.Hardswish
        self.stem = nn.Sequential(OrderedDict([
            ('conv1', ConvNorm(in_chans, embed_dim // 2, 3, stride=2, padding=1)),
            ('act1', act_layer()),
            ('conv2', ConvNorm(embed_dim // 2, embed_dim, 3, stride=2, padding=1)),
        ]))
        resolution = img_size // 4
        self.blocks = nn.Sequential(*[
            LevitBlock(embed_dim, key_dim, num_heads=num_heads, attn_ratio=attn_ratio, mlp_ratio=mlp_ratio,
                       resolution=resolution, act_layer=act_layer) for _ in range(depth)])
        self.head = NormLinear(embed_dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x.flatten(2).transpose(1, 2)
        x = self.blocks(x)
        x = x.mean(1)
        return self.head(x)


class EfficientFormerAttention(AttentionBiasCache):
    """timm/models/efficientformer.py ``Attention``: one qkv Linear reshaped per head, then
    split into q, k, v; ``attn + attention_biases[:, attention_bias_idxs]``."""
    attention_bias_cache: Dict[str, torch.Tensor]

    def __init__(self, dim=384, key_dim=32, num_heads=8, attn_ratio=4, resolution=7):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.key_attn_dim = key_dim * num_heads
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.attn_ratio = attn_ratio

        self.qkv = nn.Linear(dim, self.key_attn_dim * 2 + self.val_attn_dim)
        self.proj = nn.Linear(self.val_attn_dim, dim)

        resolution = (resolution, resolution) if isinstance(resolution, int) else resolution
        self.attention_biases = torch.nn.Parameter(torch.zeros(num_heads, resolution[0] * resolution[1]))
        self.register_buffer('attention_bias_idxs', _rel_pos_idxs(resolution))
        self.attention_bias_cache = {}  # per-device attention_biases cache (data-parallel compat)

    def forward(self, x):  # x (B,N,C)
        B, N, C = x.shape
        qkv = self.qkv(x)
        qkv = qkv.reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)

        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn + self.get_attention_biases(x.device)

        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        x = self.proj(x)
        return x


class LayerScale(nn.Module):
    """timm/models/efficientformer.py"""

    def __init__(self, dim, init_values=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Flat(nn.Module):
    """timm/models/efficientformer.py"""

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        return x


class MetaBlock1d(nn.Module):
    """timm/models/efficientformer.py (its Attention built with small sizes)."""

    def __init__(self, dim, mlp_ratio=4., act_layer=nn.GELU, norm_layer=nn.LayerNorm, layer_scale_init_value=1e-5,
                 key_dim=32, num_heads=8, resolution=7):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = EfficientFormerAttention(dim, key_dim=key_dim, num_heads=num_heads, resolution=resolution)
        self.ls1 = LayerScale(dim, layer_scale_init_value)
        self.drop_path1 = nn.Identity()

        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.ls2 = LayerScale(dim, layer_scale_init_value)
        self.drop_path2 = nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class EfficientFormer(nn.Module):
    """timm/models/efficientformer.py, its last stage: a conv stem (BatchNorm, ReLU), ``Flat``,
    ``MetaBlock1d`` blocks with per-head attention biases, LayerNorm, the token mean into
    the head. ``img_size`` is fixed (the bias tables are per position)."""

    def __init__(self, img_size=32, in_chans=3, num_classes=10, embed_dim=32, depth=2, key_dim=8, num_heads=4,
                 mlp_ratio=2.):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, 3, stride=2, padding=1), nn.BatchNorm2d(embed_dim // 2), nn.ReLU(),
            nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=2, padding=1), nn.BatchNorm2d(embed_dim), nn.ReLU())
        self.flat = Flat()
        self.blocks = nn.Sequential(*[
            MetaBlock1d(embed_dim, mlp_ratio=mlp_ratio, layer_scale_init_value=0.5, key_dim=key_dim,
                        num_heads=num_heads, resolution=img_size // 4) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.flat(self.stem(x))
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class LevitAttentionAb(nn.Module):
    """facebookresearch/LeViT ``Attention`` (and the EfficientFormer / EfficientViT code that
    copies it): the offsets table built from the grid, and in eval mode a plain tensor
    ``self.ab = attention_biases[:, attention_bias_idxs]`` made by ``train()``."""

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, activation=nn.Hardswish, resolution=14):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        self.nh_kd = nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = int(attn_ratio * key_dim) * num_heads
        self.attn_ratio = attn_ratio
        h = self.dh + nh_kd * 2
        self.qkv = LinearNorm(dim, h)
        self.proj = nn.Sequential(activation(), LinearNorm(self.dh, dim, bn_weight_init=0))

        points = list(itertools.product(range(resolution), range(resolution)))
        N = len(points)
        attention_offsets = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                if offset not in attention_offsets:
                    attention_offsets[offset] = len(attention_offsets)
                idxs.append(attention_offsets[offset])
        self.attention_biases = torch.nn.Parameter(
            torch.zeros(num_heads, len(attention_offsets)))
        self.register_buffer('attention_bias_idxs',
                             torch.LongTensor(idxs).view(N, N))

    @torch.no_grad()
    def train(self, mode=True):
        super().train(mode)
        if mode and hasattr(self, 'ab'):
            del self.ab
        else:
            self.ab = self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x):  # x (B,N,C)
        B, N, C = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
        q = q.permute(0, 2, 1, 3)
        k = k.permute(0, 2, 1, 3)
        v = v.permute(0, 2, 1, 3)

        attn = (
            (q @ k.transpose(-2, -1)) * self.scale
            +
            (self.attention_biases[:, self.attention_bias_idxs]
             if self.training else self.ab)
        )
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.dh)
        x = self.proj(x)
        return x


class Residual(nn.Module):
    """facebookresearch/LeViT"""

    def __init__(self, m, drop=0.):
        super().__init__()
        self.m = m
        self.drop = drop

    def forward(self, x):
        return x + self.m(x)


class LevitOfficial(nn.Module):
    """facebookresearch/LeViT's model, one stage: a conv stem, ``Residual(Attention)`` and
    ``Residual(Mlp)`` blocks, the token mean into the head."""

    def __init__(self, img_size=32, in_chans=3, num_classes=10, embed_dim=32, key_dim=8, depth=2, num_heads=4,
                 attn_ratio=2, mlp_ratio=2):
        super().__init__()
        self.stem = nn.Sequential(ConvNorm(in_chans, embed_dim // 2, 3, 2, 1), nn.Hardswish(),
                                         ConvNorm(embed_dim // 2, embed_dim, 3, 2, 1))
        resolution = img_size // 4
        blocks = []
        for _ in range(depth):
            blocks.append(Residual(LevitAttentionAb(embed_dim, key_dim, num_heads, attn_ratio=attn_ratio,
                                                    resolution=resolution)))
            h = int(embed_dim * mlp_ratio)
            blocks.append(Residual(nn.Sequential(LinearNorm(embed_dim, h), nn.Hardswish(),
                                                 LinearNorm(h, embed_dim, bn_weight_init=0))))
        self.blocks = nn.Sequential(*blocks)
        self.head = NormLinear(embed_dim, num_classes)

    forward = Levit.forward
