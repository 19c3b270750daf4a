"""Tests for slimc.export (ONNX export + onnxruntime check).

Kept fast: a handful of tiny models, each exported once (the first dynamo export
in a process costs a few seconds of exporter start-up).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _load_export_module():
    """Import slimc.export; fall back to loading the file directly if the
    package __init__ is not importable (it is developed separately)."""
    try:
        import slimc.export as mod  # noqa: PLC0415

        return mod
    except Exception:
        path = Path(__file__).resolve().parents[1] / "slimc" / "export.py"
        spec = importlib.util.spec_from_file_location("slimc_export_standalone", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


E = _load_export_module()
ExportError = E.ExportError
export_onnx = E.export_onnx
check_onnx = E.check_onnx
onnx_stats = E.onnx_stats


# --------------------------------------------------------------------------- models


class ConvNet(nn.Module):
    """Conv2d-BN-ReLU-Conv-adaptive pool-flatten-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = self.conv2(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def _conv_net() -> ConvNet:
    torch.manual_seed(0)
    m = ConvNet()
    with torch.no_grad():  # non-trivial BN statistics so folding is observable
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.5, 0.5)
    return m


class PlainConv(nn.Module):
    """No BN, no reshape: every initializer is a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(3, 4)

    def forward(self, x, y):
        h = self.a(x) + self.b(y)
        return torch.relu(h), h.sum(dim=1, keepdim=True)


torch.library.define("slimc_test::opaque", "(Tensor x) -> Tensor")


@torch.library.impl("slimc_test::opaque", "CompositeExplicitAutograd")
def _opaque_impl(x):
    return x.clone()


@torch.library.register_fake("slimc_test::opaque")
def _opaque_fake(x):
    return torch.empty_like(x)


class Unexportable(nn.Module):
    """Calls a custom op that has no ONNX translation in either exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.ops.slimc_test.opaque(self.lin(x))


class DataDependent(nn.Module):
    """torch.export cannot trace the data-dependent branch; TorchScript can."""

    def forward(self, x):
        if x.abs().sum() >= 0:  # always true
            return x * 2.0
        return x


def _assert_clean_dir(d: Path, keep: set[str]) -> None:
    leftovers = {p.name for p in d.iterdir()} - keep
    assert not leftovers, f"unexpected files left behind: {leftovers}"


# --------------------------------------------------------------------------- tests


def test_conv_net_dynamic_batch(tmp_path, capfd):
    m = _conv_net()
    m.train()
    m.bn.eval()  # mixed per-submodule flags must be restored exactly
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = tmp_path / "net.onnx"

    res = export_onnx(m, (torch.randn(2, 3, 16, 16),), out)

    assert out.is_file()
    _assert_clean_dir(tmp_path, {"net.onnx"})  # single self-contained file, no temp/.data
    assert res.exporter == "dynamo" and res.fallback_reason is None
    assert res.checked and res.batch_sizes == [1, 3]
    assert res.input_names == ["input"] and res.output_names == ["output"]
    assert res.opset >= 18
    assert res.max_abs_diff <= 1e-4 * max(1.0, res.output_scale)
    assert res.output_scale > 0
    assert "CPUExecutionProvider" in res.providers
    assert all(v == 0 for v in res.selection_ops.values()), res.selection_ops
    d = res.to_dict()
    assert d["path"] == str(out.resolve()) and d["exporter"] == "dynamo"

    # eval-mode export must not touch parameters/buffers or the training flags
    assert m.training and not m.bn.training and m.conv1.training
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # BatchNorm (eval) is folded into conv1 by the exporter's optimizer: no BN
    # node, no running stats initializers; conv1 gains a C-sized bias instead.
    stats = onnx_stats(out)
    assert "BatchNormalization" not in stats["op_types"]
    assert stats["op_types"]["Conv"] == 2
    bn_params = m.bn.weight.numel() + m.bn.bias.numel()
    n_params = sum(p.numel() for p in m.parameters())
    folded = n_params - bn_params + m.bn.num_features
    unfolded = n_params + m.bn.running_mean.numel() + m.bn.running_var.numel()
    assert stats["float_initializer_params"] in (folded, unfolded)
    assert stats["initializer_params"] == res.initializer_params
    assert stats["initializer_bytes"] == res.initializer_bytes > 0

    # the exporter's console spam must be swallowed
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured

    # standalone re-check of the written file
    chk = check_onnx(out, m, (torch.randn(4, 3, 16, 16),), batch_sizes=(2, 5))
    assert chk.batch_sizes == [2, 5] and chk.exporter == "dynamo"
    assert chk.max_abs_diff <= 1e-4 * max(1.0, chk.output_scale)


def test_two_inputs_two_outputs_names(tmp_path):
    torch.manual_seed(1)
    m = TwoInTwoOut()
    res = export_onnx(m, (torch.randn(2, 5), torch.randn(2, 3)), tmp_path / "two.onnx")
    assert res.input_names == ["input_0", "input_1"]
    assert res.output_names == ["output_0", "output_1"]
    assert res.batch_sizes == [1, 3]

    import onnx

    model = onnx.load(str(tmp_path / "two.onnx"))
    assert [i.name for i in model.graph.input] == ["input_0", "input_1"]
    assert [o.name for o in model.graph.output] == ["output_0", "output_1"]
    for vi in list(model.graph.input) + list(model.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_param, vi  # shared dynamic batch dim

    # user-given names
    res2 = export_onnx(
        m,
        (torch.randn(2, 5), torch.randn(2, 3)),
        tmp_path / "named.onnx",
        input_names=["x", "y"],
        output_names=["act", "total"],
        check=False,
    )
    assert res2.input_names == ["x", "y"] and res2.output_names == ["act", "total"]
    assert not res2.checked and res2.batch_sizes == []


def test_initializer_params_without_bn(tmp_path):
    torch.manual_seed(2)
    m = PlainConv()
    res = export_onnx(m, (torch.randn(1, 3, 8, 8),), tmp_path / "plain.onnx")
    n_params = sum(p.numel() for p in m.parameters())
    assert res.initializer_params == n_params
    assert res.initializer_bytes == 4 * n_params  # float32
    assert all(v == 0 for v in res.selection_ops.values())


def test_static_batch_checks_example_batch_only(tmp_path):
    torch.manual_seed(3)
    m = PlainConv()
    res = export_onnx(m, (torch.randn(2, 3, 8, 8),), tmp_path / "static.onnx", dynamic_batch=False)
    assert res.batch_sizes == [2]

    import onnx

    model = onnx.load(str(tmp_path / "static.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_broken_check_raises_and_leaves_no_file(tmp_path):
    out = tmp_path / "sub" / "net.onnx"
    with pytest.raises(ExportError) as ei:
        export_onnx(_conv_net(), (torch.randn(2, 3, 16, 16),), out, rtol_scale=-1)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "'output'" in msg and "batch 1" in msg
    assert not out.exists()
    assert not (tmp_path / "sub").exists()  # directory created for the export is removed again
    _assert_clean_dir(tmp_path, set())


def test_unexportable_op_raises_and_leaves_no_file(tmp_path):
    out = tmp_path / "bad.onnx"
    cwd_before = set(os.listdir(os.getcwd()))
    with pytest.raises(ExportError) as ei:
        export_onnx(Unexportable(), (torch.randn(2, 4),), out)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "both exporters" in msg and "opaque" in msg
    assert not out.exists()
    _assert_clean_dir(tmp_path, set())
    assert set(os.listdir(os.getcwd())) == cwd_before  # no exporter reports dropped in cwd


def test_torchscript_fallback_is_recorded(tmp_path):
    res = export_onnx(DataDependent(), (torch.randn(2, 4),), tmp_path / "dd.onnx")
    assert res.exporter == "torchscript"
    assert res.fallback_reason and "\n" not in res.fallback_reason
    assert res.batch_sizes == [1, 3]
    assert any("TracerWarning" in w for w in res.warnings)
    assert onnx_stats(tmp_path / "dd.onnx")["exporter"] == "torchscript"


def test_graph_module_input(tmp_path):
    torch.manual_seed(4)
    gm = torch.fx.symbolic_trace(PlainConv())
    res = export_onnx(gm, (torch.randn(2, 3, 8, 8),), tmp_path / "gm.onnx")
    assert res.exporter == "dynamo" and res.batch_sizes == [1, 3]


def test_bad_names_rejected(tmp_path):
    with pytest.raises(ExportError, match="output_names has 1 names"):
        export_onnx(TwoInTwoOut(), (torch.randn(2, 5), torch.randn(2, 3)), tmp_path / "x.onnx", output_names=["o"])
    assert not (tmp_path / "x.onnx").exists()
