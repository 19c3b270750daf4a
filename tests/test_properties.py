"""Property tests: random small architectures × random structured masks.

An architecture is a stem, a sequence of blocks drawn from {conv-bn-relu, residual basic
block, depthwise-separable block, concat of two branches, SE block} with random widths
4..16, and a linear head (optionally with a hidden layer). Masks mask random rows
(filters / out features) and, sometimes, random sink columns, biases and the following
BN affine, at random densities. The DESIGN.md contract must hold for every draw.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import slimc  # noqa: E402
from helpers import assert_contract, n_params, outputs_diff  # noqa: E402
from slimc.verify import masked_copy  # noqa: E402

# CI: 25 derandomized examples. Bug hunting: SLIMC_PROP_EXAMPLES=500 SLIMC_PROP_RANDOM=1
PROPS = settings(
    max_examples=int(os.environ.get("SLIMC_PROP_EXAMPLES", "25")),
    deadline=None,
    derandomize=not os.environ.get("SLIMC_PROP_RANDOM"),
    print_blob=True,
)
WIDTH = st.integers(4, 16)
X_SHAPE = (2, 3, 8, 8)


# --------------------------------------------------------------------------- blocks
class Block(nn.Module):
    """A block knows its (conv, bn) pairs so masks can zero a whole channel."""

    pairs: list[tuple[str, str | None]] = []


class ConvBNReLU(Block):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.pairs = [("conv", "bn")]

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Residual(Block):
    def __init__(self, cin, cout, mid):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        if cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.pairs.append(("proj.0", "proj.1"))
        else:
            self.proj = nn.Identity()

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.proj(x))


class DWSeparable(Block):
    def __init__(self, cin, cout, mult):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin * mult, 3, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin * mult)
        self.pw = nn.Conv2d(cin * mult, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pairs = [("dw", "bn1"), ("pw", "bn2")]

    def forward(self, x):
        return F.relu6(self.bn2(self.pw(F.relu6(self.bn1(self.dw(x))))))


class Concat(Block):
    def __init__(self, cin, ca, cb):
        super().__init__()
        self.a = nn.Conv2d(cin, ca, 1)
        self.b = nn.Conv2d(cin, cb, 3, padding=1)
        self.bn = nn.BatchNorm2d(ca + cb)
        self.pairs = [("a", None), ("b", None)]

    def forward(self, x):
        return F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))


class SEBlock(Block):
    def __init__(self, c, r):
        super().__init__()
        self.fc1 = nn.Linear(c, r)
        self.fc2 = nn.Linear(r, c)
        self.pairs = [("fc1", None), ("fc2", None)]

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s.view(s.size(0), -1, 1, 1)


class Net(nn.Module):
    def __init__(self, specs, widths, head_hidden):
        super().__init__()
        c = widths[0]
        self.stem = ConvBNReLU(3, c)
        blocks = []
        for (kind, extra), w in zip(specs, widths[1:]):
            if kind == "conv":
                blocks.append(ConvBNReLU(c, w))
                c = w
            elif kind == "res":
                blocks.append(Residual(c, w, extra))
                c = w
            elif kind == "dw":
                blocks.append(DWSeparable(c, w, 1 + extra % 2))
                c = w
            elif kind == "cat":
                blocks.append(Concat(c, w, extra))
                c = w + extra
            elif kind == "se":
                blocks.append(SEBlock(c, max(2, extra // 2)))
        self.blocks = nn.ModuleList(blocks)
        self.fc1 = nn.Linear(c, head_hidden) if head_hidden else None
        self.head = nn.Linear(head_hidden or c, 5)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        x = x.mean((2, 3))
        if self.fc1 is not None:
            x = F.relu(self.fc1(x))
        return self.head(x)


@torch.no_grad()
def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model


@st.composite
def architectures(draw):
    n = draw(st.integers(1, 4))
    specs = [(draw(st.sampled_from(["conv", "res", "dw", "cat", "se"])), draw(WIDTH)) for _ in range(n)]
    widths = [draw(WIDTH) for _ in range(n + 1)]
    head_hidden = draw(st.one_of(st.just(0), WIDTH))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = _randomize(Net(specs, widths, head_hidden), seed).eval()
    return model, (specs, widths, head_hidden, seed)


def _pairs(model: nn.Module):
    """(weight owner name, following BN name or None) for every conv/linear."""
    out = [("stem.conv", "stem.bn")]
    for i, b in enumerate(model.blocks):
        out += [(f"blocks.{i}.{c}", f"blocks.{i}.{bn}" if bn else None) for c, bn in b.pairs]
    if model.fc1 is not None:
        out.append(("fc1", None))
    out.append(("head", None))
    return out


@st.composite
def structured_masks(draw, model: nn.Module, *, whole_channels: float = 0.3, followers: float = 0.2):
    """Random rows per layer (density in [0, 0.9], at least one kept), sometimes sink
    columns; with probability ``whole_channels`` also the bias and following BN γ/β
    (so exact mode can prove the channel zero); with probability ``followers`` random
    BN γ and/or β entries on their own."""
    mods = dict(model.named_modules())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    masks: dict[str, torch.Tensor] = {}
    for name, bn in _pairs(model):
        mod = mods[name]
        w = mod.weight
        density = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]))
        n = w.shape[0]
        k = min(int(round(n * density)), n - 1)
        mk = torch.ones_like(w)
        rows = rng.choice(n, size=k, replace=False) if k else np.array([], dtype=int)
        if k:
            mk[torch.as_tensor(rows)] = 0
            if draw(st.floats(0, 1)) < whole_channels:
                if mod.bias is not None:
                    b = torch.ones_like(mod.bias)
                    b[torch.as_tensor(rows)] = 0
                    masks[f"{name}.bias"] = b
                if bn is not None:
                    for p in ("weight", "bias"):
                        t = torch.ones(n)
                        t[torch.as_tensor(rows)] = 0
                        masks[f"{bn}.{p}"] = t
        if bn is not None and draw(st.floats(0, 1)) < followers:
            # follower masks on their own (network slimming masks BN γ): γ and/or β
            for p in draw(st.sampled_from([("weight",), ("bias",), ("weight", "bias")])):
                t = masks.get(f"{bn}.{p}", torch.ones(n)).clone()
                t[torch.as_tensor(rng.choice(n, size=int(rng.integers(1, n)), replace=False))] = 0
                masks[f"{bn}.{p}"] = t
        if w.shape[1] > 1 and draw(st.booleans()):
            cols = rng.choice(w.shape[1], size=int(rng.integers(0, w.shape[1])), replace=False)
            mk[:, torch.as_tensor(cols, dtype=torch.long)] = 0
        if k or (mk == 0).any():
            masks[f"{name}.weight"] = mk
    return masks


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(*X_SHAPE, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- properties
@PROPS
@given(data=st.data())
def test_contract_holds_for_random_architectures(data):
    model, desc = data.draw(architectures(), label="architecture")
    masks = data.draw(structured_masks(model), label="masks")
    res = assert_contract(model, masks, (_x(),), allow_empty=True)
    assert n_params(res.module) <= n_params(model)


@PROPS
@given(data=st.data())
def test_exact_mode_equals_the_user_masked_model(data):
    """mode="exact": nothing beyond what is provably zero / unused goes, so the slim model
    equals the model with the USER's masks, not only with the final masks."""
    model, desc = data.draw(architectures(), label="architecture")
    masks = data.draw(structured_masks(model, whole_channels=0.7), label="masks")
    res = assert_contract(model, masks, (_x(),), mode="exact", allow_empty=True)
    diff, scale = outputs_diff(res.module, masked_copy(model, masks), (_x(),))
    assert diff <= 1e-5 * max(1.0, scale), f"exact mode differs from the user-masked model by {diff:.3g}"


@PROPS
@given(data=st.data())
def test_recompiling_with_final_masks_is_monotone(data):
    """Compiling again with the final masks never brings anything back: the second
    final masks ⊇ the first, the model is no larger, and the contract still holds.

    (It is not always a fixed point: removing a channel zeroes its sink columns, and a
    row whose remaining columns the user had masked becomes a whole masked filter the
    second time round. DESIGN.md does not promise idempotence.)"""
    model, desc = data.draw(architectures(), label="architecture")
    masks = data.draw(structured_masks(model), label="masks")
    r1 = slimc.compile(model, masks, (_x(),), verify=False, allow_empty=True)
    r2 = assert_contract(model, r1.masks, (_x(),), allow_empty=True)
    assert n_params(r2.module) <= n_params(r1.module)
    for k, v in r1.masks.items():
        assert not bool(((v == 0) & (r2.masks[k] != 0)).any()), k
