"""``round_to``: the default ``"auto"`` keeps multiples of 16 channels in layers of 16 or more
(what the CPU kernels run fastest), leaves grouped convs' aligned positions and small layers
alone, and ``1`` prunes exactly the ratio. Widths are derived here by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimc
from slimc.cli import main
from slimc.errors import ConfigError
from slimc.prune import prune


class Net(nn.Module):
    """a: 40 channels; g: grouped conv, 8 groups of 5 (its positions stay aligned); s: 8 channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 40, 3, padding=1)
        self.g = nn.Conv2d(40, 40, 3, padding=1, groups=8)
        self.s = nn.Conv2d(40, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.relu(self.g(x))
        return self.fc(torch.relu(self.s(x)).mean((2, 3)))


def _widths(masks: dict, model: nn.Module) -> dict[str, int]:
    x = (torch.randn(2, 3, 8, 8),)
    res = slimc.compile(model, masks, x)
    return {n: m.out_channels for n, m in res.model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


def test_auto_rounds_single_channel_layers_to_16_and_leaves_groups(net):
    x = (torch.randn(2, 3, 8, 8),)
    # a and g's outputs: 40 = 8 groups × 5 positions; a unit is one whole group (5 channels of a,
    # 5 of g): 0.5 of 8 groups → 4 go, 4 groups of 5 stay (20 channels; the group width stays,
    # not rounded); s: 8 channels, under 16: 4 go
    auto = _widths(prune(net, x, ratio=0.5), net)
    assert auto == {"a": 20, "g": 20, "s": 4}
    exact = _widths(prune(net, x, ratio=0.5, round_to=1), net)
    assert exact == {"a": 20, "g": 20, "s": 4}
    g = slimc.compile(net, prune(net, x, ratio=0.5), x).model.g
    assert (g.groups, g.in_channels // g.groups, g.out_channels // g.groups) == (4, 5, 5)


class Wide(nn.Module):
    def __init__(self, c: int = 40, d: int = 16):
        super().__init__()
        self.a = nn.Conv2d(3, c, 3, padding=1)
        self.b = nn.Conv2d(c, d, 3, padding=1)
        self.fc = nn.Linear(d, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def test_auto_keeps_multiples_of_16_where_1_keeps_the_ratio():
    torch.manual_seed(0)
    m = Wide().eval()
    x = (torch.randn(2, 3, 8, 8),)
    # a: 40 at 0.3 → 12 go, 28 stay → rounded up to 32; b: 16 at 0.3 → 4 go, 12 stay → 16 (whole)
    assert _widths(prune(m, x, ratio=0.3), m) == {"a": 32, "b": 16}
    assert _widths(prune(m, x, ratio=0.3, round_to=1), m) == {"a": 28, "b": 12}
    assert _widths(prune(m, x, ratio=0.3, round_to=8), m) == {"a": 32, "b": 16}
    assert _widths(prune(m, x, ratio=0.5, round_to=8), m) == {"a": 24, "b": 8}


@pytest.mark.parametrize("bad", [0, -2, "16", "fast", 1.5, True])
def test_round_to_refused_when_not_a_positive_integer_or_auto(bad, net):
    with pytest.raises(ConfigError, match="round_to"):
        prune(net, (torch.randn(2, 3, 8, 8),), ratio=0.5, round_to=bad)


def test_cli_round_to_takes_auto_or_n(tmp_path, capsys):
    src = tmp_path / "model.py"
    src.write_text("import torch\nfrom torch import nn\nmodel = nn.Sequential(nn.Conv2d(3, 40, 3), nn.ReLU(), "
                   "nn.Conv2d(40, 4, 1)).eval()\nexample_inputs = torch.randn(2, 3, 8, 8)\n")
    for arg, kept in (("auto", 32), ("1", 28), ("8", 32)):
        out = tmp_path / f"m{arg}.pth"
        assert main(["prune", str(src), "--criterion", "l1", "--ratio", "0.3", "--round-to", arg, "-o", str(out)]) == 0
        m = torch.load(out)
        w = m["0.weight"] if "0.weight" in m else next(v for k, v in m.items() if k.endswith("0.weight"))
        assert int(w.flatten(1).any(1).sum()) == kept, arg
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["prune", str(src), "--round-to", "zero", "-o", str(tmp_path / "x.pth")])
    assert e.value.code == 2
    assert "--round-to" in capsys.readouterr().err


def test_auto_removes_a_subset_of_what_the_exact_ratio_removes():
    """Rounding keeps more, never other channels: every unit auto removes, round_to=1 removes too
    (so before fine-tuning the rounded model is the exact one with channels given back)."""
    torch.manual_seed(1)
    m = Wide(72, 40).eval()
    x = (torch.randn(2, 3, 8, 8),)
    for ratio in (0.2, 0.3, 0.5, 0.7):
        auto, exact = prune(m, x, ratio=ratio), prune(m, x, ratio=ratio, round_to=1)
        for name in ("a.weight", "b.weight"):
            gone_auto = ~auto[name].flatten(1).any(1)
            gone_exact = ~exact[name].flatten(1).any(1)
            assert not (gone_auto & ~gone_exact).any(), (ratio, name)
            assert int((~gone_auto).sum()) % 16 == 0 or int((~gone_auto).sum()) == auto[name].shape[0]


class Regnetish(nn.Module):
    """6 groups of 8 (RegNet's group width): a kept count of groups that makes a multiple of 16
    channels is an even one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 48, 1)
        self.g = nn.Conv2d(48, 48, 3, padding=1, groups=6)
        self.fc = nn.Linear(48, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.g(torch.relu(self.a(x)))).mean((2, 3)))


def test_auto_keeps_whole_groups_in_multiples_of_16_channels():
    torch.manual_seed(0)
    m = Regnetish().eval()
    x = (torch.randn(2, 3, 8, 8),)
    # 0.5 of 6 groups: 3 go, 3 stay (24 channels) → auto keeps 4 groups (32 channels, 2 blocks of 16)
    assert _widths(prune(m, x, ratio=0.5), m) == {"a": 32, "g": 32}
    assert _widths(prune(m, x, ratio=0.5, round_to=1), m) == {"a": 24, "g": 24}
    assert _widths(prune(m, x, ratio=0.5, round_to=32), m) == {"a": 32, "g": 32}  # 4 groups: 32 channels
    g = slimc.compile(m, prune(m, x, ratio=0.5), x).model.g
    assert (g.groups, g.in_channels // g.groups) == (4, 8)
