"""Layer norms in the forms the libraries write them, and small networks around them:
timm's ``LayerNorm`` / ``LayerNorm2d`` (timm/layers/norm.py, a ``_fast_norm`` flag), its
float32 variants ``LayerNormFp32`` / ``LayerNorm2dFp32`` (computed in float32, cast back),
a non-affine norm (``affine=False``; OLMo's has no weight either), and timm's ConvNeXt
block with ``conv_mlp=True`` (timm/models/convnext.py: the channels-first norm before 1x1
convs). torchvision's ``LayerNorm2d`` and ``CNBlock`` are in :mod:`patterns.torchvision_style`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patterns import torchvision_style as tv


def is_fast_norm():
    """timm/layers/fast_norm.py: off unless set."""
    return False


class LayerNorm(nn.LayerNorm):
    """timm/layers/norm.py: LayerNorm w/ fast norm option."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, **kwargs):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, **kwargs)
        self._fast_norm = is_fast_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_norm:
            raise NotImplementedError  # timm's fast_layer_norm (apex / autocast); off here
        else:
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x


class LayerNormFp32(nn.LayerNorm):
    """timm/layers/norm.py"""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, **kwargs):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        x = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
        return x


class LayerNorm2d(LayerNorm):
    """timm/layers/norm.py: LayerNorm for channels of '2D' spatial NCHW tensors (its own class
    there, with LayerNorm's constructor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        if self._fast_norm:
            raise NotImplementedError
        else:
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class LayerNorm2dFp32(LayerNormFp32):
    """timm/layers/norm.py (its own class there, with LayerNormFp32's constructor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        x = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
        x = x.permute(0, 3, 1, 2)
        return x


class NonAffineLayerNorm(nn.Module):
    """A layer norm without weight or bias, as OLMo (transformers' ``OlmoLayerNorm``) writes
    it: computed in float32, cast back."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.normalized_shape = (hidden_size,)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        orig_dtype = hidden_states.dtype
        return F.layer_norm(hidden_states.to(dtype=torch.float32), self.normalized_shape, None, None,
                            eps=1e-5).to(orig_dtype)


class Mlp(nn.Module):
    """timm/layers/mlp.py with ``use_conv=True``: 1x1 convs."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, use_conv=False):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        linear_layer = (lambda i, o, bias=True: nn.Conv2d(i, o, kernel_size=1, bias=bias)) if use_conv else nn.Linear
        self.fc1 = linear_layer(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(0.)
        self.norm = nn.Identity()
        self.fc2 = linear_layer(hidden_features, out_features)
        self.drop2 = nn.Dropout(0.)

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class ConvNeXtBlock(nn.Module):
    """timm/models/convnext.py ConvNeXtBlock: ``conv_mlp=True`` (LayerNorm2d, 1x1 convs, all
    NCHW) or ``False`` (permute, LayerNorm, Linear)."""

    def __init__(self, in_chs, mlp_ratio=4, conv_mlp=False, ls_init_value=0.5, norm_layer=None):
        super().__init__()
        if not norm_layer:
            norm_layer = LayerNorm2d if conv_mlp else LayerNorm
        self.use_conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size=7, padding=3, groups=in_chs, bias=True)
        self.norm = norm_layer(in_chs)
        self.mlp = Mlp(in_chs, int(mlp_ratio * in_chs), act_layer=nn.GELU, use_conv=conv_mlp)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(in_chs)) if ls_init_value is not None else None
        self.shortcut = nn.Identity()
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.norm(x)
            x = self.mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)
            x = self.norm(x)
            x = self.mlp(x)
            x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.drop_path(x) + self.shortcut(shortcut)
        return x


class ConvNeXt(nn.Module):
    """A small ConvNeXt: patchify stem with a channels-first norm, blocks, a downsample
    (norm, strided conv), blocks, pooled features through a channels-last norm to the head."""

    def __init__(self, dims=(16, 32), conv_mlp=True, stem_norm=LayerNorm2d, head_norm=LayerNorm, num_classes=10,
                 block_norm=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), stem_norm(dims[0]))
        self.stage0 = nn.Sequential(*[ConvNeXtBlock(dims[0], conv_mlp=conv_mlp, norm_layer=block_norm)
                                      for _ in range(2)])
        self.downsample = nn.Sequential(stem_norm(dims[0]), nn.Conv2d(dims[0], dims[1], kernel_size=2, stride=2))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[1], conv_mlp=conv_mlp, norm_layer=block_norm))
        self.norm_pre = nn.Identity()
        self.head_norm = head_norm(dims[1])
        self.fc = nn.Linear(dims[1], num_classes)

    def forward(self, x):
        x = self.stage1(self.downsample(self.stage0(self.stem(x))))
        x = x.mean((2, 3))
        return self.fc(self.head_norm(x))


class TorchvisionConvNeXt(nn.Module):
    """torchvision/models/convnext.py, small: its ``LayerNorm2d`` in the stem and the
    downsample, ``CNBlock`` (permute, ``nn.LayerNorm``, Linear), the classifier's
    ``LayerNorm2d`` on pooled (N, C, 1, 1) features, flattened."""

    def __init__(self, dims=(16, 24), num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), tv.LayerNorm2d(dims[0], eps=1e-6)),
            nn.Sequential(tv.CNBlock(dims[0]), tv.CNBlock(dims[0])),
            tv.ConvNeXtDownsample(dims[0], dims[1]),
            nn.Sequential(tv.CNBlock(dims[1])))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(tv.LayerNorm2d(dims[1], eps=1e-6), nn.Flatten(1),
                                        nn.Linear(dims[1], num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class TokenNorms(nn.Module):
    """A pre-norm MLP stack on tokens (B, N, C) with the norm of the caller's choice (non-affine,
    float32 cast-back, …): the hidden size shrinks through it."""

    def __init__(self, norm=NonAffineLayerNorm, dim=32, hidden=64, depth=2, in_dim=12, num_classes=10):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.norms = nn.ModuleList([norm(dim) for _ in range(depth)])
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
                                   for _ in range(depth)])
        self.norm = norm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x)
        for n, mlp in zip(self.norms, self.mlps):
            x = x + mlp(n(x))
        return self.head(self.norm(x))
