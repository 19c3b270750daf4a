"""Quantization end to end, in onnxruntime on the CPU: every method's int8 file against what it
must compute — the fake-quant torch model (QAT, DoReFa, BNN, Naive), the float file of the same
graph (static, dynamic) —, what the file holds (int8 weights on the grid the method defines,
written out here), which ops onnxruntime runs in int8, pruning + QAT as one slim int8 file, and
planted faults the built-in check must catch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from slimc import zoo
from slimc.errors import VerifyError
from slimc.quantize import QAT, quantize


class ResBlockNet(nn.Module):
    """conv-BN-ReLU stem, a residual block, pooling, a classifier: what the CNN zoo is made of."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(x + y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet():
    torch.manual_seed(0)
    m = zoo.randomize_bn(ResBlockNet()).eval()
    return m, (torch.randn(2, 3, 8, 8),)


def batches(n=3, batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g),) for _ in range(n)]


def ort_run(model_proto, x: torch.Tensor) -> np.ndarray:
    s = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def int_weights(model_proto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model_proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}


def optimized_ops(model_proto, tmp_path) -> set[str]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}


def agree(ref: torch.Tensor, got: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement where the reference's top two are more than 8 output steps apart,
    99.9th percentile of |Δ| in output steps: 8-bit steps of the reference's range)"""
    ref = ref.detach().numpy()
    step = (ref.max() - ref.min()) / 255
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 8 * step
    same = ref.argmax(-1) == got.argmax(-1)
    return float(same[clear].mean()), float(np.quantile(np.abs(ref - got), 0.999) / step)


def train(model, steps=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 3, 8, 8, generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), torch.randint(0, 10, (16,), generator=g)).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("name, bits", [("qat", 8), pytest.param("dorefa", 4, marks=pytest.mark.slow),
                                        pytest.param("bnn", 1, marks=pytest.mark.slow)])
def test_trained_quantizers_export_what_they_compute(name, bits, tmp_path):
    m, x = resnet()
    q = QAT(m, x, method=name, bits=bits)
    train(q.model)
    res = q.export(tmp_path / "out", data=batches())
    int8 = onnx.load(str(tmp_path / "out" / "model.int8.onnx"))
    test_x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = q.model(test_x)
    top1, steps = agree(ref, ort_run(int8, test_x))
    assert top1 >= 0.995 and steps <= 4, (top1, steps)
    assert res.report["check"]["ok"]
    weights = int_weights(int8)
    if name == "bnn":  # sign weights, sign activations as Sign ops; the first and last layers stay float
        assert {"conv1.weight_quantized", "conv2.weight_quantized"} <= set(weights)
        assert not {"stem.0.weight_quantized", "fc.weight_quantized"} & set(weights)
        assert set(np.unique(weights["conv1.weight_quantized"])) <= {-1, 0, 1}
        assert "Sign" in {n.op_type for n in int8.graph.node}
    else:
        assert {"stem.0.weight_quantized", "conv1.weight_quantized", "fc.weight_quantized"} <= set(weights)
    if name == "dorefa":  # (2k − n) for n = 15: odd integers in [−15, 15]
        w = weights["fc.weight_quantized"]
        assert w.min() >= -15 and w.max() <= 15 and np.all(w % 2 == 1)
    if name == "qat":  # integer-arithmetic-only inference: onnxruntime fuses the QDQ groups
        assert {"QLinearConv", "QGemm"} <= optimized_ops(int8, tmp_path)


@pytest.mark.slow
def test_qat_weights_in_the_file_are_the_folded_grid(tmp_path):
    """The conv's int8 weight is round(W·s / scale) with s = γ/√(var+ε) (BatchNorm folded) and a
    symmetric per-channel scale, computed here from the trained float weights."""
    m, x = resnet()
    q = QAT(m, x, method="qat")
    train(q.model, 5)
    res = q.export(data=batches())
    w = q.model.conv1.parametrizations.weight.original.detach()
    bn = q.model.bn1
    folded = w * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().reshape(-1, 1, 1, 1)
    scale = folded.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    want = torch.clamp(torch.round(folded / scale), -127, 127).to(torch.int8).numpy()
    assert np.array_equal(int_weights(res.int8)["conv1.weight_quantized"], want)
    assert "BatchNormalization" not in {n.op_type for n in res.int8.graph.node}


def test_naive_weights_only_per_layer_table_names_the_worst_layer():
    """Naive (weights only): 8-bit everywhere but conv2 at 2 bit — the per-layer table (int8 vs float)
    names conv2's output first; activations stay float."""
    m, x = resnet()
    cfg = [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]},
           {"quant_types": ["weight"], "quant_bits": 2, "op_names": ["conv2"]}]
    res = quantize(m, x, "weight", config_list=cfg, data=batches())
    assert res.report["vs_float"]["worst"][0]["module"] in ("conv2", "bn2")
    assert res.report["nodes"]["int8"] == 0 and res.report["nodes"]["int8_weights_float_compute"] >= 4
    assert int_weights(res.int8)["conv2.weight_quantized"].max() <= 1  # 2-bit symmetric: −1..1
    assert m.conv2.weight.dtype == torch.float32 and not hasattr(m.conv2, "parametrizations")  # not touched


def test_static_qdq_against_float(tmp_path):
    """Post-training static: QDQ per-channel, uint8 activations / int8 weights on x86; the int8
    file against the float file, compared here on fresh inputs."""
    m, x = resnet()
    res = quantize(m, x, "static", data=batches())
    rep = res.report
    assert rep["method"] == "static" and rep["calibration"]["batches"] == 3
    test_x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    f, q = ort_run(res.float, test_x), ort_run(res.int8, test_x)
    sqnr = 10 * np.log10(np.sum(f ** 2) / np.sum((f - q) ** 2))
    assert sqnr > 25, sqnr
    assert rep["check"]["outputs"][0]["sqnr_db"] > 25 and rep["check"]["worst"]
    assert "QLinearConv" in optimized_ops(res.int8, tmp_path)
    assert rep["size"]["ratio"] < 0.7
    out = res(test_x[:4])  # a callable onnxruntime session: torch in, torch out
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10)


def test_planted_fault_activation_scale(monkeypatch):
    """An int8 file whose activation scale is not the trained one must not pass the check."""
    import slimc.quantize.deploy as deploy

    real = deploy._act

    def wrong(point):
        if isinstance(point, str):
            return real(point)
        from slimc.quantize.grid import Grid

        return real(Grid(point.scale * 3, point.zero_point, point.qmin, point.qmax, point.axis))

    monkeypatch.setattr(deploy, "_act", wrong)
    m, x = resnet()
    q = QAT(m, x, method="qat")
    train(q.model, 5)
    with pytest.raises(VerifyError, match="does not compute what the fake-quant model computes"):
        q.export(data=batches())


def test_planted_fault_weight_changed_after_training():
    m, x = resnet()
    q = QAT(m, x, method="qat")
    train(q.model, 3)
    q.remove()  # the quantized values are plain weights now …
    with torch.no_grad():
        m.fc.weight.add_(1e-3)  # … and one is changed
    q2 = QAT.__new__(QAT)
    q2.__dict__.update(q.__dict__)
    from slimc.quantize.deploy import Points, deploy_module
    from slimc.quantize.grid import weight_grid

    pts = Points(weights={"fc": weight_grid(m.fc.weight.detach() - 1e-3, 8, per_channel=True)})
    with pytest.raises(VerifyError, match="not on its quantization grid"):
        deploy_module(m, pts, x)


def test_pruning_and_qat_compose_into_one_slim_int8_file():
    """Complete masks (slimc's pruner) + QAT training → compile → export: one slim int8 file that
    onnxruntime runs as the masked fake-quant model computes."""
    from slimc.prune import make_pruner

    m, x = resnet()
    masks = make_pruner(m, x, "l1", round_to=1, ratio=0.5).prune().masks
    q = QAT(m, x, method="qat", masks=masks)
    train(q.model, 10)
    res = q.export(data=batches())
    assert res.report["graph"] == "slim graph" and res.stem == "slim"
    n_int8 = sum(v.size for v in int_weights(res.int8).values())
    dense = sum(p.numel() for n, p in m.named_parameters() if n.endswith("original"))
    assert n_int8 < 0.5 * dense
    for fqn, mask in masks.items():  # masked weights stayed zero while it trained
        mod = q.model.get_submodule(fqn.rsplit(".", 1)[0])
        if fqn.endswith(".weight") and hasattr(mod, "parametrizations"):
            assert torch.count_nonzero(mod.weight * (1 - mask.float())) == 0
    test_x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = q.model(test_x)
    top1, steps = agree(ref, ort_run(res.int8, test_x))
    assert top1 >= 0.995 and steps <= 4, (top1, steps)


@pytest.mark.parametrize("name", ["resnet_tiny", pytest.param("mobilenetv2_small", marks=pytest.mark.slow)])
def test_static_on_zoo_cnns(name, tmp_path):
    m, x = zoo.build(name), zoo.example_inputs(name)
    data = [zoo.example_inputs(name, batch=8, seed=s) for s in range(2)]
    res = quantize(m, x, data=data)  # auto: static for a CNN
    assert res.report["method"] == "static"
    assert res.report["check"]["outputs"][0]["cosine"] > 0.99
    assert "QLinearConv" in optimized_ops(res.int8, tmp_path)


def test_transformer_dynamic_by_default_static_keeps_norms_float(tmp_path):
    m, x = zoo.build("bert_tiny"), zoo.example_inputs("bert_tiny")
    data = [zoo.example_inputs("bert_tiny", batch=4, seed=s) for s in range(2)]
    dyn = quantize(m, x, data=data)
    assert dyn.report["method"] == "dynamic"
    assert dyn.report["runtime_ops"]["int8"] and dyn.report["check"]["outputs"][0]["cosine"] > 0.99
    st = quantize(m, x, "static", data=data)
    floats = st.report["nodes"]["float_nodes"]
    assert any(r.startswith("transformer:") for r in floats), floats
    ops = optimized_ops(st.int8, tmp_path)
    assert "LayerNormalization" in ops and "Softmax" in ops and ("QLinearMatMul" in ops or "QGemm" in ops)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qat", "weight"])
def test_torch_methods_on_a_transformer(name):
    m, x = zoo.build("gpt_tiny"), zoo.example_inputs("gpt_tiny")  # tied lm_head / embedding
    data = [zoo.example_inputs("gpt_tiny", batch=4, seed=s) for s in range(2)]
    res = quantize(m, x, name, data=data)
    assert res.report["check"]["ok"]
