"""The command line as a user meets it: outputs written, errors one line + exit 2,
nothing half-written, inputs never overwritten."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from slimc.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "model.py"
DEMO_MASKS = ROOT / "examples" / "demo" / "masks.pth"

MODEL_SRC = '''
import torch, torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x))))
torch.manual_seed(0)
model = Net().eval()
example_inputs = torch.randn(2, 3, 8, 8)
'''


@pytest.fixture
def model_py(tmp_path: Path) -> Path:
    p = tmp_path / "model.py"
    p.write_text(MODEL_SRC)
    return p


def _masks(tmp_path: Path, masks: dict) -> Path:
    p = tmp_path / "m.pth"
    torch.save(masks, p)
    return p


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_compile_demo_writes_everything(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(DEMO), "--masks", str(DEMO_MASKS), "-o", str(out)]) == 0
    for f in ("slim.pt", "slim.onnx", "masks.pth", "report.json", "inputs.pt"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    assert rep["verify"]["ok"] and rep["params"]["after"] < rep["params"]["before"] / 3
    assert rep["onnx"]["max_abs_diff"] <= 1e-4
    text = capsys.readouterr().out
    assert "params" in text and "FLOPs" in text and "max abs diff" in text
    slim = torch.load(out / "slim.pt", weights_only=False)  # torch alone
    assert slim(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # export from the compile output, without the model file
    assert main(["export", str(out), "-o", str(tmp_path / "again.onnx")]) == 0
    assert (tmp_path / "again.onnx").is_file()


def test_export_variants(tmp_path, model_py):
    m = torch.ones(8, 3, 3, 3)
    m[:4] = 0
    masks = _masks(tmp_path, {"conv1.weight": m})
    out = tmp_path / "x" / "slim.onnx"
    assert main(["export", str(model_py), "--masks", str(masks), "-o", str(out), "--original", "--masked"]) == 0
    assert out.is_file()
    assert (out.parent / "slim.original.onnx").is_file()
    assert (out.parent / "slim.masked.onnx").is_file()


@pytest.mark.parametrize(
    "masks,needle",
    [
        ({"conv9.weight": torch.ones(8, 3, 3, 3)}, "conv9.weight"),
        ({"conv1.weight": torch.ones(8, 3)}, "shape"),
        ({"conv1.weight": torch.full((8, 3, 3, 3), 0.5)}, "binary"),
    ],
)
def test_bad_masks_one_line_exit_2(tmp_path, capsys, model_py, masks, needle):
    out = tmp_path / "out"
    assert main(["compile", str(model_py), "--masks", str(_masks(tmp_path, masks)), "-o", str(out)]) == 2
    assert needle in _err(capsys)
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_corrupt_and_missing_files(tmp_path, capsys, model_py):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file at all")
    assert main(["compile", str(model_py), "--masks", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "bad.pth" in _err(capsys)
    assert main(["compile", str(model_py), "--masks", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth" in _err(capsys)
    assert main(["compile", str(tmp_path / "nomodel.py")]) == 2
    assert "nomodel.py" in _err(capsys)


def test_model_file_without_model_or_inputs(tmp_path, capsys):
    p = tmp_path / "empty.py"
    p.write_text("import torch\n")
    assert main(["compile", str(p)]) == 2
    assert "model" in _err(capsys)
    p.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    assert main(["compile", str(p)]) == 2
    assert "example_inputs" in _err(capsys)


def test_untraceable_model(tmp_path, capsys):
    p = tmp_path / "dyn.py"
    p.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if x.sum() > 0:\n"
        "            return x\n"
        "        return torch.nonzero(x)\n"
        "model = M()\nexample_inputs = torch.randn(2, 3)\n"
    )
    rc = main(["compile", str(p), "--front-end", "fx", "-o", str(tmp_path / "o")])
    assert rc == 2
    assert "trace" in _err(capsys)


def test_mask_that_prunes_a_whole_layer(tmp_path, capsys, model_py):
    masks = _masks(tmp_path, {"conv1.weight": torch.zeros(8, 3, 3, 3)})
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert "every channel" in err and "--allow-empty" in err
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(tmp_path / "o"), "--allow-empty", "--no-onnx"]) == 0


def test_never_overwrites_inputs(tmp_path, capsys, model_py):
    masks = _masks(tmp_path, {})
    before = masks.read_bytes()
    assert main(["prune", str(model_py), "-o", str(model_py)]) == 2
    assert "overwrite" in _err(capsys)
    assert main(["export", str(model_py), "--masks", str(masks), "-o", str(masks)]) == 2
    _err(capsys)
    assert masks.read_bytes() == before and "class Net" in model_py.read_text()


def test_failed_compile_keeps_previous_outputs(tmp_path, capsys, model_py):
    out = tmp_path / "out"
    good = _masks(tmp_path, {})
    assert main(["compile", str(model_py), "--masks", str(good), "-o", str(out), "--no-onnx"]) == 0
    capsys.readouterr()
    before = (out / "slim.pt").read_bytes()
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.full((8, 3, 3, 3), 2.0)}, bad)
    assert main(["compile", str(model_py), "--masks", str(bad), "-o", str(out)]) == 2
    assert (out / "slim.pt").read_bytes() == before
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_prune_then_compile(tmp_path, capsys, model_py):
    masks = tmp_path / "masks.pth"
    assert main(["prune", str(model_py), "--ratio", "0.5", "-o", str(masks)]) == 0
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(tmp_path / "o"), "--json", "--no-onnx"]) == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["params"]["after"] < rep["params"]["before"]


def test_inspect_and_rules(capsys, model_py):
    assert main(["inspect", str(model_py)]) == 0
    out = capsys.readouterr().out
    assert "conv1.weight" in out
    assert main(["rules", "--markdown"]) == 0
    assert "nn.Conv2d" in capsys.readouterr().out


def test_debug_shows_traceback(tmp_path, model_py):
    masks = _masks(tmp_path, {"nope.weight": torch.ones(1)})
    from slimc.errors import MaskError

    with pytest.raises(MaskError):
        main(["compile", str(model_py), "--masks", str(masks), "--debug"])


def test_bench_model_and_compile_output(tmp_path, capsys, model_py):
    m = torch.ones(8, 3, 3, 3)
    m[:4] = 0
    masks = _masks(tmp_path, {"conv1.weight": m})
    out = tmp_path / "b"
    args = ["--batch", "1,2", "--min-time", "0.02", "--runtimes", "torch", "-o", str(out)]
    assert main(["bench", str(model_py), "--masks", str(masks), *args]) == 0
    assert {"bench.json", "bench.md", "bench.png"} <= set(os.listdir(out))
    (res,) = json.loads((out / "bench.json").read_text())["results"]
    assert {(e["runtime"], e["batch"]) for e in res["speedup"]} == {("torch-eager", 1), ("torch-eager", 2)}
    assert all(e["masked_ms"] > 0 and e["slim_ms"] > 0 for e in res["speedup"])
    assert {r["variant"] for r in res["rows"]} == {"original", "masked", "slim"}
    assert "masked ms" in capsys.readouterr().out
    comp = tmp_path / "c"
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(comp), "--no-onnx"]) == 0
    assert main(["bench", str(comp), *args]) == 0
    assert main(["bench", str(model_py), "--masks", str(masks), "--batch", "one"]) == 2
    assert "--batch" in _err(capsys)


class _ReaderLeavesAfterOneLine:
    """A pipe whose reader goes away after the first write (`slimc prune … | head -1`)."""

    def __init__(self):
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        if self.lines:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_reader_that_leaves_early_loses_nothing_the_command_wrote(model_py, tmp_path, monkeypatch):
    """The masks are written, then the summary is printed into a closed pipe: the command
    finishes with 0 and its file stays (a failed command's outputs are undone; this is none)."""
    import sys

    pipe = _ReaderLeavesAfterOneLine()
    monkeypatch.setattr(sys, "stdout", pipe)
    out = tmp_path / "m.pth"
    assert main(["prune", str(model_py), "-o", str(out), "--ratio", "0.5"]) == 0
    assert pipe.lines and out.is_file() and torch.load(out)
    assert sys.stdout is pipe  # put back
