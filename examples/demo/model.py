"""Demo model for `make demo`: a small CIFAR-style ResNet with a Squeeze-Excitation gate,
a channel-concat branch and a flatten into the classifier. Deterministic weights
(seeded) so the bundled masks.pth matches them.

    slimc compile examples/demo/model.py --masks examples/demo/masks.pth -o out/demo
"""
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout // 4, 1), nn.ReLU(),
                                nn.Conv2d(cout // 4, cout, 1), nn.Sigmoid())
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = y * self.se(y)
        return F.relu(y + self.short(x))


class DemoNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.left = nn.Conv2d(32, 16, 3, 1, 1)
        self.right = nn.Conv2d(32, 16, 1)
        self.layer1 = Block(32, 64, 2)
        self.layer2 = Block(64, 128, 2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(128 * 2 * 2, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = self.layer2(self.layer1(x))
        x = self.pool(x).view(x.size(0), -1)
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.1, self.training))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    m = DemoNet()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():  # non-trivial BN statistics, so BN beta matters
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
    return m.eval()


example_inputs = (torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
