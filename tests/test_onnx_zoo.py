"""ONNX export of the slim model for the zoo: checked by onnx.checker and onnxruntime,
physically small (no channel-selection ops), initializers matching the slim params."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import slimc
from slimc import zoo
from slimc.onnx import export_onnx, onnx_stats
from slimc.prune import group_masks

SMALL = ["vgg11_small", "resnet_tiny", "mobilenetv2_small", "densenet_small", "shufflenetv2_small", "senet_small", "unet_small"]
LARGE = ["vgg16", "resnet18", "resnet50", "mobilenetv2"]
SELECTION = ("Gather", "Slice", "ScatterND", "GatherElements", "GatherND")


def _compile(name: str):
    model, x = zoo.build(name), zoo.example_inputs(name)
    return model, x, slimc.compile(model, group_masks(model, x, 0.5), x)


def _export_both(name, tmp_path):
    model, x, res = _compile(name)
    orig = export_onnx(model, x, tmp_path / "original.onnx")
    slim = export_onnx(res.module, x, tmp_path / "slim.onnx")
    return model, res, orig, slim


def _check_pair(name, tmp_path):
    model, res, orig, slim = _export_both(name, tmp_path)
    for info in (orig, slim):
        assert info.max_abs_diff <= 1e-4 * max(1.0, info.output_scale)
        assert info.batch_sizes == [1, 3]
    # physically small: slimming adds no channel-selection ops
    for op in SELECTION:
        assert slim.selection_ops.get(op, 0) <= orig.selection_ops.get(op, 0), (op, slim.selection_ops)
    assert slim.initializer_bytes < orig.initializer_bytes
    # the initializers carry the slim params: same ratio as the torch param counts (BN folded)
    r_onnx = slim.initializer_params / orig.initializer_params
    r_torch = res.report["params"]["after"] / res.report["params"]["before"]
    assert abs(r_onnx - r_torch) < 0.02, (r_onnx, r_torch)


@pytest.mark.parametrize("name", SMALL)
def test_zoo_export_original_and_slim(name, tmp_path):
    _check_pair(name, tmp_path)


@pytest.mark.parametrize("name", zoo.names("transformer"))
def test_transformer_zoo_export(name, tmp_path):
    """Heads and hidden size removed: the ONNX graph is checked at batch 1 and 3 (the
    patched view sizes stay dynamic in the batch) and carries the slim weights."""
    model, x, res = _compile(name)
    slim = export_onnx(res.module, x, tmp_path / "slim.onnx")
    assert slim.max_abs_diff <= 1e-4 * max(1.0, slim.output_scale) and slim.batch_sizes == [1, 3]
    assert slim.initializer_params <= 1.05 * res.report["params"]["after"] + 4096  # + rotary/position constants


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_zoo_export_large(name, tmp_path):
    _check_pair(name, tmp_path)


@pytest.mark.slow
def test_resnet18_half_filters_is_a_quarter_of_the_bytes(tmp_path):
    """Golden: ResNet-18 with 50 % of every filter group removed keeps ~1/4 of the bytes."""
    model, res, orig, slim = _export_both("resnet18", tmp_path)
    ratio = slim.initializer_bytes / orig.initializer_bytes
    print(f"resnet18 initializer bytes {orig.initializer_bytes:,} -> {slim.initializer_bytes:,} ({ratio:.3f})")
    assert 0.22 < ratio < 0.28


def test_initializers_match_slim_params_without_bn(tmp_path):
    """No BN to fold: the slim ONNX initializers hold exactly the slim parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(2, 3, 12, 12)
    m = torch.ones(16, 3, 3, 3)
    m[::2] = 0
    res = slimc.compile(model, {"0.weight": m, "0.bias": (m[:, 0, 0, 0] != 0).float()}, x)
    info = export_onnx(res.module, x, tmp_path / "slim.onnx")
    stats = onnx_stats(tmp_path / "slim.onnx")
    n_params = sum(p.numel() for p in res.module.parameters())
    assert stats["float_initializer_params"] == n_params
    assert info.initializer_bytes >= n_params * 4


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.head1 = nn.Conv2d(8, 2, 1)
        self.head2 = nn.Linear(8, 5)

    def forward(self, x, y):
        h = torch.relu(self.a(x) + self.b(y))
        return self.head1(h), self.head2(h.mean((2, 3)))


def test_multiple_inputs_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    x = (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))
    m = torch.ones(8, 3, 3, 3)
    m[:4] = 0
    res = slimc.compile(model, {"a.weight": m, "b.weight": m.clone()}, x)
    assert res.module.a.out_channels == 4
    paths = res.save(tmp_path / "out")
    g = onnx.load(paths["slim.onnx"]).graph
    assert [i.name for i in g.input] == ["input_0", "input_1"]
    assert [o.name for o in g.output] == ["output_0", "output_1"]
    assert res.report["onnx"]["max_abs_diff"] <= 1e-4
    # dynamic batch: run the file at another batch size with onnxruntime
    import onnxruntime as ort

    sess = ort.InferenceSession(paths["slim.onnx"], providers=["CPUExecutionProvider"])
    feeds = {"input_0": np.random.randn(5, 3, 8, 8).astype(np.float32), "input_1": np.random.randn(5, 3, 8, 8).astype(np.float32)}
    out = sess.run(None, feeds)
    ref = res.module(*(torch.from_numpy(v) for v in feeds.values()))
    for o, r in zip(out, ref):
        assert np.abs(o - r.detach().numpy()).max() < 1e-4


@pytest.mark.parametrize("name,ndim", [("resnet_tiny", 4), (zoo.names("transformer")[0], 2)])
def test_a_changed_initializer_in_a_zoo_export_is_caught_and_nothing_written(name, ndim, tmp_path, monkeypatch):
    """The exporter's onnxruntime check, planted with one weight's rows swapped in the written
    file (tests/test_planted_faults_outputs.py): it must refuse the file and leave none behind."""
    from slimc.errors import ExportError
    from test_planted_faults_outputs import plant_in_onnx, swap_rows

    _, x, res = _compile(name)
    plant_in_onnx(monkeypatch, swap_rows, ndim)
    with pytest.raises(ExportError, match="diverges from torch"):
        export_onnx(res.module, x, tmp_path / "slim.onnx")
    assert not list(tmp_path.iterdir())
