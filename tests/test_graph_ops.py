"""The slim graph is the original's graph with narrower tensors: no op the original lacks (a
gather of kept slices, a concat, a cast) in the traced slim graph, in slim.onnx, or in the
graph onnxruntime optimizes it into (the same fusions and blocked NCHWc kernels)."""
from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch
from torch import fx, nn

import slimc
from slimc.onnx import export_onnx
from slimc.prune import group_masks
from slimc.report import added_ops, graph_ops
from slimc.zoo import build, example_inputs, randomize_bn

CNNS = ["resnet_tiny", "mobilenetv2_small", "densenet_small", "shufflenetv2_small", "senet_small", "vgg11_small"]


def _onnx_ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _ort_optimized_ops(path, tmp_path) -> Counter:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / (path.stem + ".opt.onnx"))
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(so.optimized_model_filepath).graph
    return Counter(f"{n.domain}:{n.op_type}" for n in g.node)


@pytest.mark.parametrize("name", CNNS)
def test_slim_graph_and_onnx_add_no_op(name, tmp_path):
    m = randomize_bn(build(name)).eval()
    x = example_inputs(name)
    res = slimc.compile(m, group_masks(m, x, 0.5), x)
    added = res.report["ops_added"]
    if name.startswith("shufflenet"):  # x.chunk(2, 1) into halves no longer equal: the same op as a split
        chunks = sum(1 for n in fx.symbolic_trace(m).graph.nodes if n.target == "chunk")
        assert added == {"torch.split": chunks} and chunks > 0, added
    else:
        assert added == {}
    d, s = tmp_path / "dense.onnx", tmp_path / "slim.onnx"
    export_onnx(m, x, d, check=False)
    export_onnx(res.module, x, s, check=False)
    dense, slim = _onnx_ops(d), _onnx_ops(s)
    assert not (slim - dense), f"slim.onnx has ops the dense export lacks: {dict(slim - dense)}"


class Block(nn.Module):
    """64-channel conv-BN-ReLU residual block: pruned to 32, every width a multiple of 16."""

    def __init__(self, c: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.a, self.bn_a = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.b, self.bn_b = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.bn_b(self.b(torch.relu(self.bn_a(self.a(x)))))
        return self.fc(torch.relu(x).mean((2, 3)))


def test_onnxruntime_optimizes_slim_as_it_does_dense(tmp_path):
    torch.manual_seed(0)
    m = randomize_bn(Block()).eval()
    x = (torch.randn(2, 3, 16, 16),)
    masks = {"stem.weight": torch.ones(64, 3, 3, 3), "a.weight": torch.ones(64, 64, 3, 3)}
    masks["stem.weight"][32:] = 0  # (and with it b's output: one residual stream)
    masks["a.weight"][::2] = 0
    masks["b.weight"] = torch.ones(64, 64, 1, 1)
    masks["b.weight"][32:] = 0
    res = slimc.compile(m, masks, x)
    assert res.module.a.out_channels == 32 and res.module.stem.out_channels == 32
    d, s = tmp_path / "dense.onnx", tmp_path / "slim.onnx"
    export_onnx(m, x, d, check=False)
    export_onnx(res.module, x, s, check=False)
    assert _ort_optimized_ops(s, tmp_path) == _ort_optimized_ops(d, tmp_path)


def test_added_ops_catches_a_planted_gather():
    class Gathered(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.register_buffer("keep", torch.arange(4))

        def forward(self, x):
            return torch.index_select(self.conv(x), 1, self.keep)

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.conv(x)

    before = graph_ops(fx.symbolic_trace(Plain()))
    assert added_ops(before, fx.symbolic_trace(Plain())) == {}
    added = added_ops(before, fx.symbolic_trace(Gathered()))
    assert list(added) == ["index_select"] or "index_select" in next(iter(added)), added
