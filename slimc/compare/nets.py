"""The comparison's networks: small CNNs for 8×8 digits, the classic CIFAR-10 ones.

* ``digits_vgg`` — VGG-style: two conv-conv-pool stages, a two-layer classifier (most
  parameters are late and cheap, most FLOPs early: what separates a params budget from
  a FLOPs budget);
* ``digits_resnet`` — ResNet-style: a stem and three basic blocks (16, 32, 64 channels,
  the last two strided with 1×1 projections), global average pooling, one linear layer;
* ``vgg16``, ``resnet18``, ``resnet50`` — the CIFAR-10 networks of the classic comparison
  (:mod:`slimc.zoo`), untrained.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from slimc.errors import ConfigError


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsVGG(nn.Module):
    """conv24-conv24-pool-conv48-conv48-pool (8×8 → 2×2), linear 192 → 96 → 10."""

    def __init__(self, widths: tuple[int, int] = (24, 48), hidden: int = 96, num_classes: int = 10,
                 in_channels: int = 1):
        super().__init__()
        a, b = widths
        self.features = nn.Sequential(*_conv_bn(in_channels, a), *_conv_bn(a, a), nn.MaxPool2d(2),
                                      *_conv_bn(a, b), *_conv_bn(b, b), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(b * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem 16, blocks 16 → 32 (stride 2) → 64 (stride 2), average pool, linear 64 → 10."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        a, b, c = widths
        self.stem = nn.Sequential(*_conv_bn(in_channels, a))
        self.layer1 = BasicBlock(a, a)
        self.layer2 = BasicBlock(a, b, stride=2)
        self.layer3 = BasicBlock(b, c, stride=2)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _zoo(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from slimc.zoo import resnet, vgg

        return {"vgg16": vgg.vgg16, "resnet18": resnet.resnet18, "resnet50": resnet.resnet50}[name]()

    return build


#: name → (builder, input shape without the batch dim, data set it is for)
NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    "digits_vgg": (DigitsVGG, (1, 8, 8), "digits"),
    "digits_resnet": (DigitsResNet, (1, 8, 8), "digits"),
    "vgg16": (_zoo("vgg16"), (3, 32, 32), "cifar10"),
    "resnet18": (_zoo("resnet18"), (3, 32, 32), "cifar10"),
    "resnet50": (_zoo("resnet50"), (3, 32, 32), "cifar10"),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """A freshly initialised network (weights from ``seed``)."""
    if name not in NETS:
        raise ConfigError(f"unknown model '{name}': use one of {', '.join(NETS)}")
    torch.manual_seed(seed)
    return NETS[name][0]()


def input_shape(name: str) -> tuple[int, ...]:
    return NETS[name][1]


def dataset_of(name: str) -> str:
    return NETS[name][2]
