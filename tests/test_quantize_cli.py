"""`slimc quantize` and `slimc compile --quantize` as a user meets them: the files and the report
section, data from model.py, bad inputs as one line + exit 2 with nothing written, and
`slimc bench` timing the int8 file of a compile output."""
from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from slimc.cli import main
from test_cli import _err  # one line on stderr, no traceback

MODEL_SRC = '''
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 4)
    def forward(self, x):
        return self.fc(self.features(x))
model = Net().eval()
example_inputs = torch.randn(2, 3, 8, 8)
g = torch.Generator().manual_seed(1)
X = torch.randn(96, 3, 8, 8, generator=g)
with torch.no_grad():
    Y = model(X).argmax(1)
def calibration_batches():
    return [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 48, 16)]
def evaluate(m):
    with torch.no_grad():
        return float((m(X[48:]).argmax(1) == Y[48:]).float().mean())
def finetune(m, steps):
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    m.train()
    for s in range(steps):
        i = (s * 16) % 48
        opt.zero_grad(); F.cross_entropy(m(X[i:i + 16]), Y[i:i + 16]).backward(); opt.step()
    m.eval()
'''


@pytest.fixture
def model_py(tmp_path: Path) -> Path:
    p = tmp_path / "model.py"
    p.write_text(MODEL_SRC)
    return p


def test_quantize_static_writes_the_file_and_the_report(model_py, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(model_py), "-o", str(out), "--method", "static"]) == 0
    rep = json.loads((out / "report.json").read_text())["quantize"]
    assert rep["onnx"] == "model.int8.onnx" and (out / "model.int8.onnx").is_file() and (out / "model.onnx").is_file()
    assert rep["method"] == "static" and rep["calibration"]["batches"] == 3
    assert rep["nodes"]["int8"] >= 3 and rep["size"]["int8_bytes"] < rep["size"]["float_bytes"]
    assert rep["check"]["outputs"][0]["sqnr_db"] > 20 and rep["check"]["worst"]
    assert rep["accuracy"]["float"] == 1.0 and rep["accuracy"]["int8"] >= 0.9
    s = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert s.run(None, {s.get_inputs()[0].name: torch.randn(5, 3, 8, 8).numpy()})[0].shape == (5, 4)
    assert "SQNR" in capsys.readouterr().out


def test_compile_quantize_then_bench_times_the_int8_file(model_py, tmp_path, capsys):
    masks = tmp_path / "m.pth"
    assert main(["prune", str(model_py), "--ratio", "0.5", "-o", str(masks)]) == 0
    out = tmp_path / "out"
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(out), "--quantize", "static"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["verify"]["ok"] and rep["quantize"]["graph"] == "slim graph"
    assert (out / "slim.onnx").is_file() and (out / rep["quantize"]["onnx"]).is_file()
    capsys.readouterr()
    assert main(["bench", str(out), "--batch", "2", "--runtimes", "ort", "--min-time", "0.05",
                 "-o", str(tmp_path / "bench")]) == 0
    res = json.loads((tmp_path / "bench" / "bench.json").read_text())
    res = res[0] if isinstance(res, list) else res
    res = res.get("results", [res])[0] if "results" in res else res
    assert any(r["variant"] == "slim-static-int8" for r in res["rows"])
    assert res["int8"] and res["machine"]["int8_isa"] is not None
    assert "int8 / slim float" in capsys.readouterr().out


@pytest.mark.slow
def test_quantize_qat_with_masks_trains_with_finetune(model_py, tmp_path):
    masks = tmp_path / "m.pth"
    assert main(["prune", str(model_py), "--ratio", "0.5", "-o", str(masks)]) == 0
    out = tmp_path / "q"
    assert main(["quantize", str(model_py), "--masks", str(masks), "-o", str(out), "--method", "qat",
                 "--steps", "5"]) == 0
    rep = json.loads((out / "report.json").read_text())["quantize"]
    assert rep["graph"] == "slim graph" and rep["steps"] == 5 and rep["check"]["ok"]
    assert (out / "slim.int8.onnx").is_file()


BAD_DATA = {
    "shape": "def calibration_batches():\n    return [torch.randn(4, 3, 9, 9)]\n",
    "dtype": "def calibration_batches():\n    return [torch.randn(4, 3, 8, 8).double()]\n",
    "empty": "def calibration_batches():\n    return []\n",
}


@pytest.mark.parametrize("kind, needle", [("shape", "has shape (4, 3, 9, 9) but the model takes (N, 3, 8, 8)"),
                                          ("dtype", "torch.float64 but the model takes torch.float32"),
                                          ("empty", "gave no batch")])
def test_bad_calibration_is_one_line_and_writes_nothing(kind, needle, model_py, tmp_path, capsys):
    model_py.write_text(MODEL_SRC + BAD_DATA[kind])
    out = tmp_path / "q"
    assert main(["quantize", str(model_py), "-o", str(out), "--method", "static"]) == 2
    assert needle in _err(capsys)
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--method", "dorefa", "--bits", "8"], "DoReFa quantizes to 1 to 7 bit"),
    (["--method", "static", "--bits", "4"], "static (onnxruntime QDQ, calibrated) quantizes to 8 bit"),
    (["--method", "bnn", "--bits", "2"], "BNN quantizes to 1 bit"),
    (["--config", "CFG", "--method", "weight"], "matches no module"),
])
def test_bad_options_are_one_line_and_write_nothing(args, needle, model_py, tmp_path, capsys):
    cfg = tmp_path / "q.yaml"
    cfg.write_text("- quant_types: [weight]\n  op_types: [Conv3d]\n")
    out = tmp_path / "q"
    args = [str(cfg) if a == "CFG" else a for a in args]
    assert main(["quantize", str(model_py), "-o", str(out), *args]) == 2
    assert needle in _err(capsys)
    assert not out.exists()


def test_no_quantizable_layer_and_no_finetune(tmp_path, capsys):
    p = tmp_path / "model.py"
    p.write_text("import torch, torch.nn as nn\nmodel = nn.Sequential(nn.ReLU(), nn.Flatten())\n"
                 "example_inputs = torch.randn(2, 3, 4, 4)\n")
    out = tmp_path / "q"
    assert main(["quantize", str(p), "-o", str(out), "--method", "qat"]) == 2
    assert "has no layer QAT quantizes" in _err(capsys)
    p.write_text(p.read_text() + "def calibration_batches():\n    return [torch.randn(2, 3, 4, 4)]\n")
    assert main(["quantize", str(p), "-o", str(out), "--method", "static"]) == 2
    assert "nothing to quantize" in _err(capsys)
    p.write_text(MODEL_SRC.split("g = torch.Generator")[0])  # no finetune()
    assert main(["quantize", str(p), "-o", str(out), "--method", "qat", "--steps", "3"]) == 2
    assert "define `finetune(model, steps)`" in _err(capsys)
    assert main(["quantize", str(p), "-o", str(out), "--method", "static"]) == 2
    assert "needs calibration data" in _err(capsys)
    assert not out.exists()
