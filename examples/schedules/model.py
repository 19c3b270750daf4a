"""A small CNN and a synthetic 4-class task, with everything the pruners and tools read:

    slimc prune examples/schedules/model.py --criterion taylor -o masks.pth   # calibration_batches + loss_fn
    slimc sensitivity examples/schedules/model.py -o sens/                   # evaluate
    slimc flops examples/schedules/model.py --masks masks.pth

agp.py and lottery.py train it under a pruning schedule in an ordinary training loop.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 32, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8×8 images: class k is a bright bar in one of four places, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g)
    for k in range(4):
        rows = slice(2 * k, 2 * k + 2)
        x[y == k, 0, rows, :] += 0.6
    return x, y


torch.manual_seed(0)
model = Net().eval()
example_inputs = torch.randn(2, 1, 8, 8)
train_x, train_y = make_data(512, seed=1)
test_x, test_y = make_data(256, seed=2)


def train_batches(batch: int = 64):
    perm = torch.randperm(len(train_x))
    for i in range(0, len(perm), batch):
        idx = perm[i:i + batch]
        yield train_x[idx], train_y[idx]


def calibration_batches():
    for i in range(0, 128, 32):
        yield train_x[i:i + 32], train_y[i:i + 32]


def loss_fn(output, target):
    return F.cross_entropy(output, target)


def evaluate(m) -> float:
    """Top-1 accuracy on the held-out set (higher is better)."""
    was = m.training
    m.eval()
    with torch.no_grad():
        acc = (m(test_x).argmax(1) == test_y).float().mean().item()
    m.train(was)
    return acc
