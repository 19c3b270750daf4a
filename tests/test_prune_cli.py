"""slimc prune / flops / sensitivity as a user meets them: data-driven criteria from a model.py,
complete masks (compile then equals the model masked with them), one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import assert_same_masks, outputs_diff, user_masked
from slimc.cli import main
from slimc.loading import load_spec
from slimc.masks import load_masks, normalize
from slimc.prune.data import Batch, as_batch

MODEL = '''
import torch, torch.nn as nn, torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(32, 10)
    def forward(self, x):
        return self.classifier(self.features(x))
torch.manual_seed(0)
model = Net().eval()
with torch.no_grad():
    for bn in (model.features[1], model.features[4]):
        bn.running_mean.uniform_(-0.2, 0.2); bn.bias.uniform_(-0.5, 0.5)
example_inputs = torch.randn(2, 3, 8, 8)
'''
DATA = '''
def calibration_batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        yield torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
def loss_fn(out, target):
    return F.cross_entropy(out, target)
def evaluate(m):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    with torch.no_grad():
        return (m(x).argmax(1) == y).float().mean().item()
'''


@pytest.fixture
def model_py(tmp_path: Path) -> Path:
    p = tmp_path / "model.py"
    p.write_text(MODEL + DATA)
    return p


@pytest.fixture
def bare_py(tmp_path: Path) -> Path:
    p = tmp_path / "bare.py"
    p.write_text(MODEL)
    return p


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("criterion", ["apoz", "mean_activation", "taylor", "slim", "level"])
def test_prune_from_model_py_then_compile(tmp_path, capsys, model_py, criterion):
    masks = tmp_path / "m.pth"
    assert main(["prune", str(model_py), "--criterion", criterion, "--round-to", "1", "-o", str(masks)]) == 0
    out = capsys.readouterr().out
    assert "the masked model is the slim model" in out
    out_dir = tmp_path / "out"
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(out_dir), "--no-onnx", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kept"] == [] and rep["verify"]["ok"]
    model, x, _ = load_spec(str(model_py))
    given = normalize(load_masks(masks), model).masks
    final = torch.load(out_dir / "masks.pth", weights_only=True)
    assert_same_masks(final, given)  # compile removes exactly what the pruner masked
    slim = torch.load(out_dir / "slim.pt", weights_only=False)
    d, s = outputs_diff(slim, user_masked(model, torch.load(masks, weights_only=True), final), x, n=2)
    assert d <= 1e-5 * max(1.0, s)
    if criterion == "level":
        assert rep["unstructured_zeros"] and rep["params"]["after"] == rep["params"]["before"]
    else:
        assert rep["params"]["after"] < 0.4 * rep["params"]["before"]


def test_prune_config_format_and_exclusion(tmp_path, capsys, model_py):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("- sparsity: 0.5\n  op_types: [Conv2d]\n- exclude: true\n  op_names: [classifier]\n"
                   "- sparsity: 0.25\n  op_names: [features.0]\n")
    masks = tmp_path / "m.pth"
    assert main(["prune", str(model_py), "--config", str(cfg), "--format", "nni", "--round-to", "1", "-o", str(masks)]) == 0
    raw = torch.load(masks, weights_only=True)
    # the classifier (excluded) keeps its full width: the channels it reads (features.3's) stay
    assert set(raw) == {"features.0", "features.1", "features.3"} and set(raw["features.0"]) == {"weight", "bias"}
    assert int((raw["features.0"]["weight"].flatten(1) == 0).all(1).sum()) == 4  # 25 % of 16
    w3 = raw["features.3"]["weight"]
    assert int((w3.transpose(0, 1).flatten(1) == 0).all(1).sum()) == 4  # the columns of features.0's filters
    assert not (w3.flatten(1) == 0).all(1).any()  # no filter of features.3
    capsys.readouterr()


@pytest.mark.parametrize("argv,match", [
    (["--criterion", "apoz"], "criterion 'apoz' needs calibration data: define `calibration_batches\\(\\)` in model.py"),
    (["--criterion", "taylor"], "criterion 'taylor' needs calibration data"),
    (["--criterion", "l3"], "unknown criterion 'l3'"),
    (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["--ratio", "1.5"], "ratio must be in \\[0, 1\\)"),
])
def test_prune_errors_are_one_line(tmp_path, capsys, bare_py, argv, match):
    import re

    assert main(["prune", str(bare_py), *argv, "-o", str(tmp_path / "m.pth")]) == 2
    assert re.search(match, _err(capsys))
    assert not (tmp_path / "m.pth").exists()


def test_taylor_without_loss_names_loss_fn(tmp_path, capsys):
    p = tmp_path / "m.py"
    p.write_text(MODEL + "def calibration_batches():\n    return [torch.randn(2, 3, 8, 8)]\n")
    assert main(["prune", str(p), "--criterion", "taylor", "-o", str(tmp_path / "x.pth")]) == 2
    assert "define `loss_fn(output, target)` in model.py" in _err(capsys)


def test_prune_never_overwrites_its_model(capsys, model_py):
    assert main(["prune", str(model_py), "-o", str(model_py)]) == 2
    assert "would overwrite the input" in _err(capsys)


def test_flops_before_and_after(tmp_path, capsys, model_py):
    masks = tmp_path / "m.pth"
    assert main(["prune", str(model_py), "--round-to", "1", "-o", str(masks)]) == 0
    capsys.readouterr()
    assert main(["flops", str(model_py), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert "after" not in rep["params"] and rep["flops"]["before"] > 0
    assert main(["flops", str(model_py), "--masks", str(masks), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = {r["layer"]: r for r in rep["layers"]}
    assert rep["params"]["after"] < 0.4 * rep["params"]["before"]
    assert rep["flops"]["after"] < 0.4 * rep["flops"]["before"]
    assert rows["features.3"]["params_after"] == 16 * 8 * 9 + 16 and rows["features.3"]["flops_after"] < \
        rows["features.3"]["flops_before"] / 3
    assert main(["flops", str(model_py), "--masks", str(masks)]) == 0
    assert "layers by FLOPs" in capsys.readouterr().out


def test_sensitivity_writes_json_png_and_a_config_that_prunes(tmp_path, capsys, model_py):
    out = tmp_path / "sens"
    assert main(["sensitivity", str(model_py), "--sparsities", "0.25,0.5", "--max-drop", "1", "-o", str(out)]) == 0
    res = json.loads((out / "sensitivity.json").read_text())
    assert res["metric"] == "evaluate" and res["higher_is_better"] and res["sparsities"] == [0.25, 0.5]
    assert {r["family"] for r in res["families"]} == {"features.0", "features.3"}
    assert all(len(r["values"]) == 2 for r in res["families"])
    assert (out / "sensitivity.png").stat().st_size > 1000
    capsys.readouterr()
    masks = tmp_path / "m.pth"
    assert main(["prune", str(model_py), "--config", str(out / "config.yaml"), "--round-to", "1", "-o", str(masks)]) == 0
    assert "2 layers pruned" in capsys.readouterr().out


def test_sensitivity_without_evaluate_uses_the_loss(tmp_path, capsys, bare_py, model_py):
    p = tmp_path / "loss_only.py"
    p.write_text(model_py.read_text().split("def evaluate")[0])
    assert main(["sensitivity", str(p), "--sparsities", "0.5", "-o", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "sensitivity.json").read_text())["metric"] == "loss"
    capsys.readouterr()
    assert main(["sensitivity", str(bare_py), "-o", str(tmp_path / "s2")]) == 2
    assert "sensitivity needs evaluate(model)" in _err(capsys)


@pytest.mark.parametrize("item,want", [
    (torch.ones(2), ((1,), None)),
    ((torch.ones(2), torch.zeros(2)), ((1,), 2)),  # a one-input model: (inputs, target)
    (((torch.ones(2),), torch.zeros(2)), ((1,), 2)),
    ({"inputs": torch.ones(2), "target": torch.zeros(2)}, ((1,), 2)),
])
def test_calibration_items(item, want):
    b = as_batch(item, n_inputs=1)
    assert isinstance(b, Batch) and len(b.inputs) == len(want[0])
    assert (b.target is None) == (want[1] is None)


def test_calibration_item_for_two_inputs():
    a, b = torch.ones(2), torch.zeros(2)
    assert len(as_batch((a, b), n_inputs=2).inputs) == 2
    assert as_batch(((a, b), a), n_inputs=2).target is a
    from slimc.errors import DataError

    with pytest.raises(DataError, match="calibration batch 3 is a str"):
        as_batch("x", n_inputs=2, i=3)


@pytest.mark.parametrize("body,match", [
    ("def calibration_batches():\n    raise RuntimeError('no dataset here')\n", "calibration_batches\\(\\) in .* failed: RuntimeError: no dataset here"),
    ("def calibration_batches():\n    return [torch.randn(2, 5, 8, 8)]\n", "running the model on a calibration batch failed"),
    ("def calibration_batches():\n    return []\n", "gave no batch"),
])
def test_bad_calibration_data_is_one_line(tmp_path, capsys, body, match):
    import re

    p = tmp_path / "m.py"
    p.write_text(MODEL + body)
    assert main(["prune", str(p), "--criterion", "apoz", "-o", str(tmp_path / "x.pth")]) == 2
    assert re.search(match, _err(capsys))
