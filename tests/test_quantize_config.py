"""Quantization config lists (NNI style) and the quantizers' grids, checked against formulas
written out here (never slimc's own code): fast, no export."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimc.errors import ConfigError
from slimc.quantize import QAT
from slimc.quantize.config import QuantConfig
from slimc.quantize.methods import method


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x))


def net():
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        bn = m.features[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return m, (torch.randn(2, 3, 8, 8),)


def test_last_entry_wins_and_bits_per_type():
    m, _ = net()
    cfg = QuantConfig.parse([{"quant_types": ["weight", "input"], "quant_bits": {"weight": 4, "input": 8},
                              "op_types": ["Conv2d", "Linear"]},
                             {"exclude": True, "op_names": ["fc"]},
                             {"quant_types": ["weight"], "quant_bits": 6, "op_names": ["features.3"],
                              "quant_scheme": "per_tensor_affine"}])
    layers = cfg.resolve(m)
    assert set(layers) == {"features.0", "features.3"}
    assert layers["features.0"].bits == {"weight": 4, "input": 8}
    assert layers["features.3"].bits == {"weight": 6}
    assert not layers["features.3"].weight_scheme.per_channel and not layers["features.3"].weight_scheme.symmetric


@pytest.mark.parametrize("raw, needle", [
    ([{"quant_typs": ["weight"], "op_types": ["Conv2d"]}], "did you mean 'quant_types'"),
    ([{"quant_types": ["bias"], "op_types": ["Conv2d"]}], "quant_types must list"),
    ([{"quant_types": ["weight"], "quant_bits": {"input": 8}}], "not in its quant_types"),
    ([{"quant_types": ["weight"], "quant_bits": 0}], "integer ≥ 1"),
    ([{"quant_types": ["weight"], "quant_scheme": "per_row"}], "quant_scheme 'per_row'"),
    ([], "non-empty list"),
])
def test_bad_entries_are_one_line(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        QuantConfig.parse(raw).resolve(net()[0])


def test_names_and_matches_are_checked():
    m, _ = net()
    with pytest.raises(ConfigError, match="did you mean 'features.0'"):
        QuantConfig.parse([{"quant_types": ["weight"], "op_names": ["feature.0"]}]).resolve(m)
    with pytest.raises(ConfigError, match="matches no module"):
        QuantConfig.parse([{"quant_types": ["weight"], "op_types": ["Conv3d"]}]).resolve(m)


@pytest.mark.parametrize("name, bits", [("static", 4), ("dynamic", 16), ("dorefa", 8), ("bnn", 2), ("qat", 9),
                                        ("weight", 1)])
def test_bits_a_method_cannot_do(name, bits):
    with pytest.raises(ConfigError, match=f"--bits {bits}"):
        method(name).check_bits(bits)


def test_no_quantizable_layer():
    with pytest.raises(ConfigError, match="has no layer"):
        QAT(nn.Sequential(nn.ReLU(), nn.Flatten()), torch.randn(2, 4), method="qat")


def test_qat_weights_fold_batchnorm_on_a_per_channel_grid():
    """QAT's weight is quant(W·s)/s (s = γ/√(var+ε)): the folded weight lies on a symmetric per-channel
    int8 grid; the module keeps its class, its parameter name and its state dict keys' owner."""
    m, x = net()
    w, bn = m.features[0].weight.detach().clone(), m.features[1]
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().reshape(-1, 1, 1, 1)
    q = QAT(m, x, method="qat", bits=8)
    assert q.model is m and type(m) is Net
    got = m.features[0].weight.detach() * s
    folded = w * s
    scale = folded.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    want = torch.clamp(torch.round(folded / scale), -127, 127) * scale
    assert torch.allclose(got, want, atol=1e-6)


def test_dorefa_and_bnn_weights():
    m, x = net()
    w = m.fc.weight.detach().clone()
    QAT(m, x, method="dorefa", bits=3)
    t = torch.tanh(w)
    t = t / (2 * t.abs().max()) + 0.5
    assert torch.allclose(m.fc.weight.detach(), 2 * torch.round(t * 7) / 7 - 1, atol=1e-6)
    m, x = net()
    w, first, last = m.features[3].weight.detach().clone(), m.features[0].weight.detach().clone(), \
        m.fc.weight.detach().clone()
    q = QAT(m, x, method="bnn")
    assert torch.equal(m.features[3].weight.detach(), torch.sign(w))
    # BNN's default keeps the first and last weighted layers float
    assert torch.equal(m.features[0].weight.detach(), first) and torch.equal(m.fc.weight.detach(), last)
    assert "keep float weights" in q.notes[0]


def test_masks_stay_zero_through_training_and_dorefa():
    """A pruned weight stays pruned, even under DoReFa (whose grid has no zero)."""
    m, x = net()
    mask = torch.ones(8, 1, 1, 1)
    mask[:3] = 0
    q = QAT(m, x, method="dorefa", bits=4, masks={"features.0.weight": mask})
    opt = torch.optim.SGD(q.model.parameters(), lr=0.1)
    q.model.train()
    for _ in range(3):
        opt.zero_grad()
        q.model(torch.randn(4, 3, 8, 8)).square().mean().backward()
        opt.step()
    assert torch.count_nonzero(q.model.features[0].weight[:3]) == 0
    assert torch.count_nonzero(q.model.features[0].weight[3:]) > 0


def test_moving_average_ranges_and_start_step():
    """Activation ranges: the first batch's min/max, then an exponential moving average (decay
    0.99); nothing is quantized before quant_start_step training steps."""
    m, x = net()
    q = QAT(m, x, method="qat", quant_start_step=2)
    aq = q.attached.inputs["features.0"]
    a, b = torch.randn(4, 3, 8, 8), 3 * torch.randn(4, 3, 8, 8)
    q.model.train()
    q.model(a)
    assert float(aq.hi) == pytest.approx(float(a.max()))
    q.model(b)
    assert float(aq.hi) == pytest.approx(0.99 * float(a.max()) + 0.01 * float(b.max()), rel=1e-5)
    q.model.eval()  # two steps seen: quantized from now on
    x8 = torch.randn(2, 3, 8, 8)
    grid = aq.grid()
    assert torch.allclose(aq(x8, False), torch.fake_quantize_per_tensor_affine(
        x8, float(grid.scale), int(grid.zero_point), grid.qmin, grid.qmax))


def test_host_types_are_rules_of_the_cpu():
    """u8×s8 everywhere on x86; 7-bit weights where no VNNI accumulates without saturating; s8s8 on ARM."""
    from slimc.quantize.host import default_types

    vnni = default_types({"avx2", "avx512_vnni"}, "x86")
    assert (vnni["activation"], vnni["weight"], vnni["reduce_range"]) == ("uint8", "int8", False)
    assert default_types({"avx2"}, "x86")["reduce_range"] is True
    assert default_types({"asimddp"}, "arm")["activation"] == "int8"


def test_qat_keeps_weights_to_7_bit_without_vnni(monkeypatch):
    import slimc.quantize.host as host

    monkeypatch.setattr(host, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(host, "family", lambda: "x86")
    m, x = net()
    w = m.fc.weight.detach().clone()
    q = QAT(m, x, method="qat")
    scale = w.abs().amax(dim=1, keepdim=True) / 63
    assert torch.allclose(m.fc.weight.detach(), torch.clamp(torch.round(w / scale), -63, 63) * scale, atol=1e-6)
    assert any("7 bit" in n for n in q.notes)


def test_auto_method_sees_transformers_traced_to_aten_ops():
    """The export front end leaves no LayerNorm or attention modules: their ops say it."""
    import torch.nn.functional as F
    from torch import fx

    from slimc.quantize.api import auto_method

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(F.layer_norm(x, (8,))).chunk(3, -1)
            return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    assert auto_method(fx.symbolic_trace(Block())) == "dynamic"
    assert auto_method(net()[0]) == "static"
