"""Small ShuffleNetV2 (chunk / concat / channel-shuffle channel graph)."""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x, groups: int):
    # Written exactly as in torchvision.models.shufflenetv2.
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, -1, height, width)
    return x


def _depthwise(c: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


def _pointwise_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ShuffleUnit(nn.Module):
    """Stride-1 unit: split channels in half, transform one half, concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.branch2 = nn.Sequential(*_pointwise_relu(c, c), *_depthwise(c, 1), *_pointwise_relu(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch2(x2)), 1)
        out = channel_shuffle(out, 2)
        return out


class ShuffleDownUnit(nn.Module):
    """Stride-2 unit: two branches over the full input, concat, shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        c = cout // 2
        self.branch1 = nn.Sequential(*_depthwise(cin, 2), *_pointwise_relu(cin, c))
        self.branch2 = nn.Sequential(*_pointwise_relu(cin, c), *_depthwise(c, 2), *_pointwise_relu(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        out = channel_shuffle(out, 2)
        return out


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        stage_channels: tuple[int, ...] = (48, 96, 192),
        units_per_stage: int = 3,
        stem_channels: int = 24,
        conv5_channels: int = 256,
        num_classes: int = 10,
    ):
        super().__init__()
        # CIFAR stem: 3x3 conv stride 1, no max-pool.
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        cin = stem_channels
        stages = []
        for cout in stage_channels:
            units: list[nn.Module] = [ShuffleDownUnit(cin, cout)]
            units += [ShuffleUnit(cout) for _ in range(units_per_stage - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = nn.Sequential(*_pointwise_relu(cin, conv5_channels))
        self.fc = nn.Linear(conv5_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.stages(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # global average pool
        return self.fc(x)


def shufflenetv2_small() -> ShuffleNetV2:
    return ShuffleNetV2(stage_channels=(48, 96, 192), units_per_stage=3)
