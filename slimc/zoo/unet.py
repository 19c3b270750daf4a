"""Small UNet for 2-class segmentation (skip concatenations across scales)."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Module):
    """(3x3 conv -> BN -> ReLU) x 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpTranspose(nn.Module):
    """2x upsampling with a stride-2 transposed conv, skip concat, double conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        x = torch.cat([skip, up], dim=1)
        return self.conv(x)


class UpBilinear(nn.Module):
    """2x bilinear upsampling followed by a 1x1 conv, skip concat, double conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.reduce = nn.Conv2d(cin, cout, kernel_size=1)
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.reduce(self.up(x))
        x = torch.cat([skip, up], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        widths: tuple[int, int, int, int] = (16, 32, 64, 128),
    ):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.enc1 = DoubleConv(in_channels, w1)
        self.enc2 = DoubleConv(w1, w2)
        self.enc3 = DoubleConv(w2, w3)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(w3, w4)
        self.up3 = UpTranspose(w4, w3)
        self.up2 = UpTranspose(w3, w2)
        self.up1 = UpBilinear(w2, w1)
        self.head = nn.Conv2d(w1, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        s3 = self.enc3(self.pool(s2))
        x = self.bottleneck(self.pool(s3))
        x = self.up3(x, s3)
        x = self.up2(x, s2)
        x = self.up1(x, s1)
        return self.head(x)


def unet_small() -> UNet:
    return UNet(widths=(16, 32, 64, 128))
