"""The per-layer view (`slimc bench --layers`, slimc.bench.layers): rows paired by layer,
FLOPs and channels read right, and each reason for a slow slim layer named when planted."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from slimc.bench.layers import Layer, LayerTimes, compare_layers, ort_layers, torch_layers
from slimc.cli import main
from slimc.onnx import export_onnx


def _times(layers: list[Layer], ops=None) -> LayerTimes:
    return LayerTimes("x", sum(lay.ms for lay in layers), {lay.name: lay for lay in layers},
                      Counter(ops or [lay.op for lay in layers]))


def _why(dense: Layer, slim: Layer, slim_ops=None) -> list[str]:
    cmp = compare_layers(_times([dense]), _times([slim], slim_ops), block=16)
    (row,) = cmp["rows"]
    assert row["flag"]
    return row["why"]


def test_each_reason_is_named_when_planted():
    dense = Layer("c", "Conv", 4.0, flops=4000, bytes=100, cin=64, cout=64, groups=8, nchwc=True)
    # fast enough: no flag, no reason
    ok = Layer("c", "Conv", 1.1, flops=1000, bytes=50, cin=32, cout=32, groups=8, nchwc=True)
    assert not compare_layers(_times([dense]), _times([ok]), block=16)["rows"][0]["flag"]
    slow = dict(ms=3.0, flops=1000, bytes=50, groups=8, nchwc=True)
    assert any("in channels 24 not a multiple of 16" in w for w in _why(dense, Layer("c", "Conv", cin=24, cout=32, **slow)))
    assert any("out channels 40 not a multiple of 16" in w for w in _why(dense, Layer("c", "Conv", cin=32, cout=40, **slow)))
    w = _why(dense, Layer("c", "Conv", 3.0, flops=1000, bytes=50, cin=32, cout=32, groups=8, nchwc=True))
    assert any("groups of width 4 (dense 8)" in x for x in w), w
    w = _why(dense, Layer("c", "Conv", 3.0, flops=1000, bytes=50, cin=32, cout=32, groups=4, nchwc=False))
    assert w == ["off the NCHWc path"], w
    w = _why(dense, Layer("c", "Conv", 3.0, flops=1000, bytes=500, cin=32, cout=32, groups=4, nchwc=True))
    assert any(x.startswith("memory-bound (2.0 FLOP/byte") for x in w), w
    w = _why(dense, Layer("c", "Conv", 3.0, flops=1000, bytes=50, cin=32, cout=32, groups=4, nchwc=True),
             slim_ops=["Conv", "Gather"])
    assert w == [], w  # an op type the dense graph lacks is named on the rows of that op only
    g = Layer("c", "Gather", 3.0, flops=1000, bytes=50)
    assert any("Gather: an op the dense graph lacks" in x
               for x in compare_layers(_times([Layer("c", "Gather", 4.0, flops=4000, bytes=100)], ["Conv"]),
                                       _times([g]), block=16)["rows"][0]["why"])


class Net(nn.Module):
    def __init__(self, c: int = 32, groups: int = 4):
        super().__init__()
        self.a = nn.Conv2d(3, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


def test_both_runtimes_pair_rows_by_module_with_flops_and_channels(tmp_path: Path):
    torch.manual_seed(0)
    dense, slim = Net(32).eval(), Net(16).eval()
    x = (torch.randn(2, 3, 16, 16),)
    e = compare_layers(torch_layers(dense, x, rounds=3, warmup=1), torch_layers(slim, x, rounds=3, warmup=1))
    rows = {r["layer"]: r for r in e["rows"]}
    assert set(rows) == {"a", "b", "fc"}
    # FLOPs by hand: b is 3x3, groups 4: 2 · N·H·W · Cout · (Cin/g) · 9
    assert rows["b"]["dense_flops"] == 2 * 2 * 16 * 16 * 32 * 8 * 9
    assert rows["b"]["slim_flops"] == 2 * 2 * 16 * 16 * 16 * 4 * 9
    assert rows["b"]["cin"] == [32, 16] and rows["b"]["groups"] == [4, 4]
    paths = []
    for name, m in (("d", dense), ("s", slim)):
        paths.append(tmp_path / f"{name}.onnx")
        export_onnx(m, x, paths[-1], check=False)
    o = compare_layers(*(ort_layers(p, x, rounds=3, warmup=1) for p in paths))
    convs = {r["layer"]: r for r in o["rows"] if r["op"] in ("Conv", "FusedConv")}
    assert set(convs) == {"a", "b"}, [r["layer"] for r in o["rows"]]
    assert convs["b"]["dense_flops"] == 2 * 2 * 16 * 16 * 32 * 8 * 9  # read off onnxruntime's shapes
    assert convs["b"]["flops_cut"] == 4.0


def test_cli_bench_layers_writes_and_prints_the_view(tmp_path, capsys):
    torch.manual_seed(0)
    src = tmp_path / "model.py"
    src.write_text("import torch\nfrom torch import nn\n"
                   "model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),"
                   " nn.Conv2d(32, 32, 3, padding=1)).eval()\nexample_inputs = torch.randn(1, 3, 16, 16)\n")
    m = torch.ones(32, 3, 3, 3)
    m[:12] = 0
    torch.save({"0.weight": m}, tmp_path / "m.pth")
    out = tmp_path / "b"
    assert main(["bench", str(src), "--masks", str(tmp_path / "m.pth"), "--batch", "2", "--min-time", "0.02",
                 "--runtimes", "torch", "--layers", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Layers of model that lose the most time" in printed
    (res,) = json.loads((out / "bench.json").read_text())["results"]
    assert set(res["layers"]) == {"torch"}  # (onnxruntime's view: the test above)
    torch_rows = {r["layer"]: r for r in res["layers"]["torch"]["rows"]}
    assert torch_rows["3"]["cin"] == [32, 20] and torch_rows["0"]["cout"] == [32, 20]
    assert "| 3 |" in (out / "bench.md").read_text()
