"""Probing ops without a shape rule (slimc/probe.py).

An op that passes (no output position moves when other positions change, the op runs on
fewer positions and gives the same values there) is treated as channel-wise along that
dim and marked "probed"; one that mixes stays a barrier with what the probe found. It must
never turn a mixing op into a channel-wise one: cumulative sums, FFTs, rolls, softmax over
the channels, channel-dependent gathers, ops that mix only for some inputs, and ops that
read their size as a value.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimc
from helpers import assert_contract, kept_reasons, n_params, random_filter_masks


def swish_beta(x):  # a user's activation, fx.wrap-ed: fx records a call to it
    return x * torch.sigmoid(1.5 * x)


def softmax_channels(x):
    return torch.softmax(x, 1)


def roll_channels(x):
    return torch.roll(x, 1, 1)


def flip_when_large(x):  # mixes only where the input is large
    return torch.where(x > 2.5, x.flip(1), x)


def per_channel_mean(x):  # channel-wise, but reads the channel count as a value
    return x / x.shape[1]


def scale_by(x, w):  # a learned per-channel scale passed in
    return x * w.view(1, -1, 1, 1) + 0.5 * x


def plus_one(x):
    return x + 1.0


def noisy(x):
    return x + 0.01 * torch.randn_like(x)


for _f in (swish_beta, softmax_channels, roll_channels, flip_when_large, per_channel_mean, scale_by, plus_one, noisy):
    torch.fx.wrap(_f.__name__)


class Clamp2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0) * 2

    @staticmethod
    def backward(ctx, g):
        return g


@torch.library.custom_op("slimc_test::scaled_abs", mutates_args=())
def scaled_abs(x: torch.Tensor) -> torch.Tensor:
    return x * 3 + x.abs()


@scaled_abs.register_fake
def _(x):
    return torch.empty_like(x)


OPS = {
    # channel-wise: the probe lets them through
    "user_activation": (lambda m, y: swish_beta(y), True),
    "autograd_function": (lambda m, y: Clamp2.apply(y), True),
    "torch_ops_extension": (lambda m, y: scaled_abs(y), True),
    "cumsum_over_width": (lambda m, y: torch.cumsum(y, 3), True),
    "fft_over_space": (lambda m, y: torch.fft.fft2(y).abs(), True),
    "learned_scale_param": (lambda m, y: scale_by(y, m.w), True),
    "no_rule_elementwise": (lambda m, y: torch.special.i0e(y), True),  # no rule: the probe decides
    # mixing along the channels: barriers
    "cumsum_over_channels": (lambda m, y: torch.cumsum(y, 1), False),
    "fft_over_channels": (lambda m, y: torch.fft.fft(y, dim=1).abs(), False),
    "roll_channels": (lambda m, y: roll_channels(y), False),
    "softmax_channels": (lambda m, y: softmax_channels(y), False),
    "gather_channels": (lambda m, y: torch.gather(y, 1, m.idx.expand_as(y)), False),
    "mixes_for_some_inputs": (lambda m, y: flip_when_large(y), False),
    "reads_its_size": (lambda m, y: per_channel_mean(y), False),
}


class OneOp(nn.Module):
    def __init__(self, op, width=8):
        super().__init__()
        self.a = nn.Conv2d(3, width, 1)
        self.b = nn.Conv2d(width, 4, 1)
        self.w = nn.Parameter(torch.rand(width) + 0.5)
        self.register_buffer("idx", torch.randperm(width).view(1, width, 1, 1))
        self.op = op

    def forward(self, x):
        return self.b(self.op(self, self.a(x)))


def _smaller(res) -> bool:
    return res.report["params"]["after"] < res.report["params"]["before"]


def _compile(name: str, front_end: str = "fx", **kw):
    torch.manual_seed(0)
    m = OneOp(OPS[name][0]).eval()
    masks = {"a.weight": torch.ones(8, 3, 1, 1).index_fill_(0, torch.tensor([1, 4, 6]), 0)}
    return m, slimc.compile(m, masks, torch.randn(2, 3, 6, 6), front_end=front_end, **kw)


@pytest.mark.parametrize("name", sorted(OPS))
def test_probe_never_turns_a_mixing_op_channel_wise(name):
    m, res = _compile(name)
    channel_wise = OPS[name][1]
    assert res.report["verify"]["ok"]
    assert _smaller(res) == channel_wise, kept_reasons(res)
    if channel_wise and name != "autograd_function":  # fx traces into an autograd.Function's forward
        assert res.report["probed"] and "1" in res.report["probed"][0]["found"]
        assert not any("dim 1" in b["reason"] for b in res.report["barriers"])
    elif not channel_wise:
        why = " ".join(r["reason"] for r in res.report["barriers"]) + kept_reasons(res)
        assert "probe" in why or "mixes" in why, why  # (not just "no shape rule": the probe judged it)


@pytest.mark.parametrize("name", ["user_activation", "torch_ops_extension", "learned_scale_param"])
def test_probed_op_keeps_the_contract(name):
    torch.manual_seed(0)
    m = OneOp(OPS[name][0]).eval()
    if name != "learned_scale_param":  # assert_contract counts every param of the model
        del m.w
    del m.idx
    res = assert_contract(m, random_filter_masks(m, 0.5), torch.randn(2, 3, 6, 6))
    assert res.report["probed"]
    if name == "learned_scale_param":  # its per-channel parameter is sliced with the channels
        assert res.module.get_parameter("w").shape[0] < 8


def test_probe_through_export_and_off():
    _, res = _compile("torch_ops_extension", front_end="export")
    assert res.report["probed"] and res.report["verify"]["ok"]
    m, off = _compile("user_activation", probe=False)
    assert not off.report["probed"] and not _smaller(off)
    assert "no shape rule" in off.report["barriers"][0]["reason"]


def test_probe_finding_is_the_barrier_reason():
    _, res = _compile("cumsum_over_channels")
    row = next(b for b in res.report["barriers"] if "cumsum" in b["op"])
    assert "probe" in row["reason"] and "dim 1" in row["reason"], row
    assert res.report["probed"][0]["found"] == "channel-wise along dims 0, 2, 3"


def test_inspect_lists_probed_ops():
    from slimc.inspect import inspect_model

    torch.manual_seed(0)
    info = inspect_model(OneOp(OPS["user_activation"][0]).eval(), torch.randn(2, 3, 6, 6))
    assert info["probed"] and info["probed"][0]["op"].endswith("swish_beta")
    assert not inspect_model(OneOp(OPS["user_activation"][0]).eval(), torch.randn(2, 3, 6, 6), probe=False)["probed"]


def test_failed_check_recompiles_without_probing(monkeypatch):
    """The built-in check is the proof: if it fails with a probed op treated channel-wise,
    compile drops the probe's finding and tries again."""
    import slimc.probe as probe_mod

    real = probe_mod._probe

    def lenient(op, name, captured, verdicts=None):  # a (broken) probe that calls everything channel-wise
        out = real(op, name, captured)
        if isinstance(out, probe_mod.Unsupported) or out.mixed:
            c = probe_mod.Coupling()
            for x in op.inputs:
                for d in range(len(op.shape(x))):
                    c.flow(op.slot(x, d), op.out(d))
            c.probed = "channel-wise along dims 0, 1, 2, 3 (forced)"
            return c
        return out

    monkeypatch.setattr(probe_mod, "_probe", lenient)
    m, res = _compile("roll_channels")
    assert res.report["verify"]["ok"] and not _smaller(res)
    assert any("compiled again" in n for n in res.report["notes"])


def test_probe_cost_is_logarithmic_in_channels():
    """Group testing: about 2·log2(n) perturbed runs per dim, not n."""
    import slimc.probe as probe_mod

    calls = []
    real = probe_mod._call

    def counting(op, case, leaves):
        calls.append(1)
        return real(op, case, leaves)

    torch.manual_seed(0)
    import unittest.mock as mock

    with mock.patch.object(probe_mod, "_call", counting):
        res = slimc.compile(OneOp(OPS["user_activation"][0], width=256).eval(), {}, torch.randn(1, 3, 2, 2))
    assert res.report["probed"]
    assert len(calls) < 3 * 2 * 2 * 8 * 4, len(calls)  # cases × (±) × bits(256) × a few dims


def test_zero_analysis_of_probed_ops():
    """A probed op that keeps zeros passes a removed channel as zero (a LayerNorm after it
    can still drop it); one that does not (x + 1) cannot."""

    class LN(nn.Module):
        def __init__(self, op):
            super().__init__()
            self.fc = nn.Linear(4, 8, bias=False)
            self.ln = nn.LayerNorm(8)
            self.out = nn.Linear(8, 3)
            self.op = op

        def forward(self, x):
            return self.out(self.ln(self.op(self.fc(x))))

    masks = {"fc.weight": torch.ones(8, 4).index_fill_(0, torch.tensor([2, 5]), 0)}
    for op, goes in ((swish_beta, True), (plus_one, False)):
        torch.manual_seed(0)
        m = LN(op).eval()
        res = assert_contract(m, masks, torch.randn(2, 5, 4))
        assert (n_params(res.module) < n_params(m)) == goes, kept_reasons(res)


def test_one_function_many_calls_is_probed_once():
    import slimc.probe as probe_mod

    judged = []
    real = probe_mod._judge

    def counting(op, base):
        judged.append(op.node.name)
        return real(op, base)

    class Many(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(8, 8, 1) for _ in range(6))

        def forward(self, x):
            for c in self.convs:
                x = swish_beta(c(x))
            return x

    import unittest.mock as mock

    with mock.patch.object(probe_mod, "_judge", counting):
        res = slimc.compile(Many().eval(), {}, torch.randn(2, 8, 4, 4))
    assert len(res.report["probed"]) == 6 and len(judged) == 1


def test_probe_leaves_random_ops_alone():
    res = slimc.compile(OneOp(lambda m, y: noisy(y)).eval(), {}, torch.randn(2, 3, 4, 4), verify=False)
    assert not res.report["probed"]
    assert "differ" in res.report["barriers"][0]["reason"]


def test_mixing_user_function_is_named_in_the_report():
    _, res = _compile("softmax_channels")
    assert any("softmax_channels" in b["op"] for b in res.report["barriers"])
