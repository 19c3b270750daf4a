"""CIFAR-style VGG with BatchNorm."""

from __future__ import annotations

import torch
from torch import nn

VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]
VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def make_features(cfg: list[int | str], in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [
                nn.Conv2d(c, int(v), kernel_size=3, padding=1),
                nn.BatchNorm2d(int(v)),
                nn.ReLU(inplace=True),
            ]
            c = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG for 32x32 inputs: five 2x2 pools bring the map to 1x1."""

    def __init__(self, cfg: list[int | str], hidden: int = 512, num_classes: int = 10):
        super().__init__()
        self.features = make_features(cfg)
        last = [v for v in cfg if v != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(int(last), hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _scaled(cfg: list[int | str], div: int) -> list[int | str]:
    return [v if v == "M" else int(v) // div for v in cfg]


def vgg16() -> VGG:
    return VGG(VGG16_CFG, hidden=512)


def vgg11_small() -> VGG:
    return VGG(_scaled(VGG11_CFG, 4), hidden=128)
