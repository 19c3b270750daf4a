"""CNN blocks for the random architectures: plain torch, each with its ``channels`` account.

``forward`` is what the model computes; ``channels(ir, prefix, x)`` says the same thing in
channel ids (:class:`~randarch.channels.ChannelIR`), line for line.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACTS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu, "hardswish": F.hardswish,
        "none": lambda t: t}


class ConvBN(nn.Module):
    """conv (plain, grouped or depthwise) → BatchNorm → activation."""

    def __init__(self, cin: int, cout: int, k: int = 3, groups: int = 1, bias: bool = False, act: str = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        return ACTS[self.act](self.bn(self.conv(x)))

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        return ir.norm(f"{p}bn", ir.conv(f"{p}conv", x, self.conv))


class Residual(nn.Module):
    """Basic or bottleneck block: two or three ConvBNs (the middle one grouped), the last
    without activation, plus the input (a 1×1 ConvBN where widths differ), then ReLU."""

    def __init__(self, cin: int, cout: int, mid: int, groups: int = 1, bottleneck: bool = False):
        super().__init__()
        if bottleneck:
            self.body = nn.Sequential(ConvBN(cin, mid, 1), ConvBN(mid, mid, 3, groups), ConvBN(mid, cout, 1, act="none"))
        else:
            self.body = nn.Sequential(ConvBN(cin, mid, 3), ConvBN(mid, cout, 3, act="none"))
        self.proj = ConvBN(cin, cout, 1, act="none") if cin != cout else None

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        return F.relu(self.body(x) + skip)

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        skip = x if self.proj is None else self.proj.channels(ir, f"{p}proj.", x)
        y = x
        for i, layer in enumerate(self.body):
            y = layer.channels(ir, f"{p}body.{i}.", y)
        return ir.add(y, skip)


class Inverted(nn.Module):
    """MobileNetV2: 1×1 expand, depthwise 3×3 (channel multiplier 1 or 2), 1×1 project;
    the input added back where widths agree."""

    def __init__(self, cin: int, cout: int, expand: int, mult: int, act: str):
        super().__init__()
        hid = cin * expand
        self.expand = ConvBN(cin, hid, 1, act=act) if expand > 1 else None
        self.dw = ConvBN(hid, hid * mult, 3, groups=hid, act=act)
        self.project = ConvBN(hid * mult, cout, 1, act="none")
        self.residual = cin == cout

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.dw(y))
        return y + x if self.residual else y

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        y = x if self.expand is None else self.expand.channels(ir, f"{p}expand.", x)
        y = self.project.channels(ir, f"{p}project.", self.dw.channels(ir, f"{p}dw.", y))
        return ir.add(y, x) if self.residual else y


class Concat(nn.Module):
    """Two branches (1×1 and 3×3 convs with biases) concatenated, BatchNorm, ReLU."""

    def __init__(self, cin: int, ca: int, cb: int):
        super().__init__()
        self.a = nn.Conv2d(cin, ca, 1)
        self.b = nn.Conv2d(cin, cb, 3, padding=1)
        self.bn = nn.BatchNorm2d(ca + cb)

    def forward(self, x):
        return F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        return ir.norm(f"{p}bn", ir.cat([ir.conv(f"{p}a", x, self.a), ir.conv(f"{p}b", x, self.b)]))


class SqueezeExcite(nn.Module):
    """x · σ(fc2(relu(fc1(mean(x))))) per channel."""

    def __init__(self, c: int, r: int):
        super().__init__()
        self.fc1 = nn.Linear(c, r)
        self.fc2 = nn.Linear(r, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s.view(s.shape[0], -1, 1, 1)

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        s = ir.linear(f"{p}fc2", ir.linear(f"{p}fc1", x, self.fc1.out_features, True), len(x), True)
        return ir.mul(x, s)


class Pool(nn.Module):
    """2×2 max or average pooling: channels pass."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return F.max_pool2d(x, 2) if self.kind == "max" else F.avg_pool2d(x, 2)

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        return x


class ConvNet(nn.Module):
    """stem ConvBN → blocks → global average pool → (hidden Linear, ReLU) → Linear head."""

    def __init__(self, stem: int, blocks: list[nn.Module], width: int, hidden: int, n_out: int, flatten_pool: bool):
        super().__init__()
        self.stem = ConvBN(3, stem, 3, bias=True)
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(width, hidden) if hidden else None
        self.head = nn.Linear(hidden or width, n_out)
        self.flatten_pool = flatten_pool

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) if self.flatten_pool else x.mean((2, 3))
        if self.fc is not None:
            x = F.relu(self.fc(x))
        return self.head(x)

    def channels(self, ir) -> None:
        x = self.stem.channels(ir, "stem.", ir.input(3))
        for i, b in enumerate(self.blocks):
            x = b.channels(ir, f"blocks.{i}.", x)
        if self.fc is not None:
            x = ir.linear("fc", x, self.fc.out_features, True)
        ir.barrier(ir.linear("head", x, self.head.out_features, True))


def draw_convnet(rng: np.random.Generator) -> tuple[ConvNet, list[str]]:
    """A random ConvNet (1–4 blocks, widths 4–32) and the kinds of its blocks."""
    width = lambda: int(rng.integers(4, 17))  # noqa: E731
    c = width()
    stem, blocks, kinds, pools = c, [], [], 0
    for _ in range(int(rng.integers(1, 5))):
        kind = str(rng.choice(["conv", "res", "bottleneck", "inverted", "grouped", "cat", "se", "pool"]))
        if kind == "pool" and pools == 2:
            kind = "conv"
        if kind == "conv":
            w = width()
            blocks.append(ConvBN(c, w, int(rng.choice([1, 3])), act=str(rng.choice(list(ACTS)))))
        elif kind == "res":
            w = c if rng.random() < 0.5 else width()
            blocks.append(Residual(c, w, width()))
        elif kind == "bottleneck":
            g = int(rng.choice([2, 4]))
            w = c if rng.random() < 0.5 else width()
            blocks.append(Residual(c, w, g * int(rng.integers(1, 5)), groups=g, bottleneck=True))
        elif kind == "inverted":
            w = c if rng.random() < 0.5 else width()
            blocks.append(Inverted(c, w, int(rng.choice([1, 2])), int(rng.choice([1, 2])), str(rng.choice(["relu6", "silu"]))))
        elif kind == "grouped":
            g = int(rng.choice([g for g in (2, 4) if c % g == 0] or [1]))
            w = g * int(rng.integers(2, 17 // g + 1))
            blocks.append(ConvBN(c, w, 3, groups=g))
        elif kind == "cat":
            a, b = width(), width()
            blocks.append(Concat(c, a, b))
            w = a + b
        elif kind == "se":
            blocks.append(SqueezeExcite(c, int(rng.integers(2, 9))))
            w = c
        else:
            blocks.append(Pool(str(rng.choice(["max", "avg"]))))
            pools += 1
            w = c
        kinds.append(kind)
        c = w
    hidden = width() if rng.random() < 0.4 else 0
    return ConvNet(stem, blocks, c, hidden, 5, bool(rng.random() < 0.3)), kinds
