"""Building blocks written the way torchvision writes them (torchvision/ops, torchvision/models).

``stochastic_depth`` is ``torch.fx.wrap``-ed as torchvision's is (fx records a call to
it), and it and ``StochasticDepth`` carry torchvision's module name, as slimc keys library
ops by qualified name (shape_rules/library.py) without importing the library.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """torchvision/ops/stochastic_depth.py"""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"  # the name torchvision's has
torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    """torchvision/ops/stochastic_depth.py"""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)


StochasticDepth.__module__ = "torchvision.ops.stochastic_depth"


class Conv2dNormActivation(nn.Sequential):
    """torchvision/ops/misc.py (the common case)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1,
                 norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU):
        padding = (kernel_size - 1) // 2
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                            bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """torchvision/ops/misc.py"""

    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: Tensor) -> Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Tensor) -> Tensor:
        scale = self._scale(input)
        return scale * input


class MBConv(nn.Module):
    """torchvision/models/efficientnet.py: expand, depthwise, SE, project, stochastic depth."""

    def __init__(self, input_channels, out_channels, expand_ratio=4, stochastic_depth_prob=0.2):
        super().__init__()
        self.use_res_connect = input_channels == out_channels
        expanded = input_channels * expand_ratio
        self.block = nn.Sequential(
            Conv2dNormActivation(input_channels, expanded, kernel_size=1, activation_layer=nn.SiLU),
            Conv2dNormActivation(expanded, expanded, kernel_size=3, groups=expanded, activation_layer=nn.SiLU),
            SqueezeExcitation(expanded, max(1, input_channels // 4), activation=partial(nn.SiLU, inplace=True)),
            Conv2dNormActivation(expanded, out_channels, kernel_size=1, activation_layer=None),
        )
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class Permute(nn.Module):
    """torchvision/ops/misc.py"""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """torchvision/models/convnext.py"""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class CNBlock(nn.Module):
    """torchvision/models/convnext.py: layer scale of shape (dim, 1, 1), stochastic depth."""

    def __init__(self, dim, layer_scale=0.5, stochastic_depth_prob=0.1):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: Tensor) -> Tensor:
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class ConvNeXtDownsample(nn.Sequential):
    """torchvision/models/convnext.py: LayerNorm2d then a strided conv."""

    def __init__(self, cin, cout):
        super().__init__(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, kernel_size=2, stride=2))


def stochastic_depth_call(x: Tensor, training: bool) -> Tensor:
    """A model calling the function directly, as torchvision's ops users do."""
    return stochastic_depth(x, 0.25, "batch", training)
