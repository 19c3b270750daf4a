"""Tests for slimc.onnx (ONNX export + onnxruntime check).

Kept fast: a handful of tiny models, each exported once (the first dynamo export
in a process costs a few seconds of exporter start-up).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from slimc.onnx import ExportError, check_onnx, export_onnx, onnx_stats  # noqa: E402


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


def test_broken_check_raises_and_leaves_no_file(tmp_path, monkeypatch):
    """A file that differs from torch (one initializer's first entry changed after the export,
    before the check; the tolerance as default): the check fails, naming the output and batch."""
    import onnx
    from onnx import numpy_helper

    import slimc.onnx.export as export_mod

    real = export_mod._finalize_file

    def finalize_then_corrupt(dest: str) -> None:
        real(dest)
        model = onnx.load(dest)
        init = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
        arr = numpy_helper.to_array(init).copy()
        arr.flat[0] += 1.0
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(model, dest)

    monkeypatch.setattr(export_mod, "_finalize_file", finalize_then_corrupt)
    out = tmp_path / "sub" / "net.onnx"
    with pytest.raises(ExportError) as ei:
        export_onnx(_conv_net(), (torch.randn(2, 3, 16, 16),), out)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("onnxruntime output 'output' diverges from torch at batch 1: max |diff| = "), msg
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


# --------------------------------------------------------------------------- dynamic dims (batch and sequence)


def _onnx_dims(path) -> list[list[str | int]]:
    import onnx

    model = onnx.load(str(path))
    return [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]


def test_grown_size_keeps_powers_of_two():
    from slimc.onnx.shapes import grown_size

    assert [grown_size(n) for n in (1, 7, 12, 16, 128, 96)] == [2, 8, 16, 32, 256, 128]


def test_check_runs_change_every_dynamic_dim():
    from slimc.onnx.shapes import check_runs

    ids, img = torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 3, 12, 12)
    runs = check_runs((ids, img), {0: (0, 1), 1: (0, 2, 3)}, (1, 3))
    assert [r.shapes for r in runs] == [((1, 16), (1, 3, 12, 12)), ((3, 32), (3, 3, 16, 16))]
    assert [r.label() for r in runs][0] == "batch 1" and "(3, 32)" in runs[1].label()
    # a static batch with a dynamic sequence: the example batch, then the grown sequence
    runs = check_runs((ids,), {0: (1,)}, (2,))
    assert [r.shapes for r in runs] == [((2, 16),), ((2, 32),)]
    # batch only: the shapes of today's check (no second run added)
    assert [r.shapes for r in check_runs((ids,), {0: (0,)}, (1, 3))] == [((1, 16),), ((3, 16),)]


def test_random_token_ids_stay_in_the_example_range():
    from slimc.onnx.shapes import random_like

    ids = torch.tensor([[3, 9, 0, 4]])
    t = random_like(ids, (3, 8), seed=0)
    assert t.shape == (3, 8) and t.dtype == ids.dtype and int(t.min()) >= 0 and int(t.max()) <= 9
    assert len(t.unique()) > 2  # fresh ids, not a copy of the example
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert bool(random_like(mask, (2, 8), seed=0).all())  # bool masks: values of the example


def test_bad_dynamic_dims_rejected(tmp_path):
    x = (torch.randn(2, 3, 8, 8),)
    with pytest.raises(ExportError, match="names input 1"):
        export_onnx(PlainConv(), x, tmp_path / "x.onnx", dynamic_dims={1: [0]})
    with pytest.raises(ExportError, match="names dim 4"):
        export_onnx(PlainConv(), x, tmp_path / "x.onnx", dynamic_dims={0: [0, 4]})
    assert not (tmp_path / "x.onnx").exists()


def test_slim_token_transformer_dynamic_batch_and_sequence(tmp_path):
    """Issue #9's export: a slim zoo GPT with dynamic batch and sequence, checked by
    onnxruntime at the example sequence length and at a second one."""
    import numpy as np
    import onnxruntime as ort

    import slimc
    from slimc import zoo
    from slimc.prune import group_masks

    model, x = zoo.build("gpt_tiny"), zoo.example_inputs("gpt_tiny")
    res = slimc.compile(model, group_masks(model, x, 0.5), x)
    out = tmp_path / "gpt.onnx"
    info = export_onnx(res.module, x, out, dynamic_dims={0: [0, 1]})
    assert info.checked and info.batch_sizes == [1, 3]
    assert info.input_shapes == [[[1, 16]], [[3, 32]]]
    assert info.dynamic_dims == {"input": [0, 1]} and info.to_dict()["dynamic_dims"] == {"input": [0, 1]}
    assert all(isinstance(d, str) and d for d in _onnx_dims(out)[0])  # both dims symbolic
    assert info.max_abs_diff <= 1e-4 * max(1.0, info.output_scale)
    # any other batch and sequence length runs too
    ids = torch.randint(0, 128, (5, 24))
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": ids.numpy()})
    assert np.abs(got - res.module(ids).detach().numpy()).max() < 1e-4


def test_static_batch_dynamic_sequence(tmp_path):
    torch.manual_seed(5)
    m = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 4)).eval()
    ids = torch.randint(0, 50, (2, 12))
    info = export_onnx(m, (ids,), tmp_path / "seq.onnx", dynamic_dims={0: [1]})
    assert info.batch_sizes == [2] and info.input_shapes == [[[2, 12]], [[2, 16]]]
    dims = _onnx_dims(tmp_path / "seq.onnx")[0]
    assert dims[0] == 2 and isinstance(dims[1], str)
    # dynamic_batch=False still means every dim static
    info = export_onnx(m, (ids,), tmp_path / "static.onnx", dynamic_dims={0: [0, 1]}, dynamic_batch=False)
    assert info.input_shapes == [[[2, 12]]] and _onnx_dims(tmp_path / "static.onnx")[0] == [2, 12]


class FixedSequence(nn.Module):
    """Hard-codes the sequence length: cannot be exported with a dynamic one."""

    def forward(self, x):
        return x.reshape(x.shape[0], 4, 4).sum(-1)


def test_fixed_sequence_with_dynamic_dims_is_one_clear_error(tmp_path):
    out = tmp_path / "fixed.onnx"
    with pytest.raises(ExportError) as ei:
        export_onnx(FixedSequence(), (torch.randn(2, 16),), out, dynamic_dims={0: [0, 1]})
    msg = str(ei.value)
    assert "\n" not in msg and ("dim 1" in msg or "(3, 32)" in msg), msg
    assert not out.exists()
    _assert_clean_dir(tmp_path, set())


def test_hf_bert_dynamic_batch_and_sequence(tmp_path):
    """HF BERT (small config, no download) with input ids and attention mask, both
    dynamic in batch and sequence: one shared sequence length, checked at two."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.long)
    info = export_onnx(bert, (ids, mask), tmp_path / "bert.onnx", dynamic_dims={0: [0, 1], 1: [0, 1]},
                       input_names=["input_ids", "attention_mask"])
    assert info.exporter == "dynamo" and info.checked
    assert info.input_shapes == [[[1, 16], [1, 16]], [[3, 32], [3, 32]]]
    assert info.dynamic_dims == {"input_ids": [0, 1], "attention_mask": [0, 1]}
    assert info.max_abs_diff <= 1e-4 * max(1.0, info.output_scale)
