"""Nothing is lost when the ONNX export fails: ``res.save`` / ``slimc compile`` write every
torch output first (slim.pt, masks.pth, inputs.pt, the user's class, report.json), then try
ONNX; its failure is a reason in report.json (``onnx.error``), one line on the console and
exit status 3 (:data:`slimc.errors.EXIT_NO_ONNX`). ``slimc export`` of such a folder fails
in one line; ``slimc bench`` of it times torch and records why onnxruntime is missing.

The model: a small MLP whose output goes through ``torch.special.i0e``, which neither ONNX
exporter translates (deterministic and cheap)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slimc.errors import EXIT_NO_ONNX, OnnxWarning

CLI = "import sys; from slimc.cli import main; sys.exit(main())"

MODEL = """
import torch, torch.nn as nn
torch.manual_seed(0)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        return torch.special.i0e(self.fc2(torch.relu(self.fc1(x))))

model = Net().eval()
example_inputs = (torch.randn(2, 16),)
"""

GONE = [1, 4, 5, 9, 20, 31]  # fc1 rows the user masks


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("partial")
    (d / "model.py").write_text(textwrap.dedent(MODEL))
    m = torch.ones(32, 1)
    m[GONE] = 0
    torch.save({"fc1.weight": m, "fc1.bias": m[:, 0].clone()}, d / "masks.pth")
    (d / "out").mkdir()
    (d / "out" / "slim.onnx").write_bytes(b"an earlier compile's file")  # must not survive
    proc = _cli(["compile", "model.py", "--masks", "masks.pth", "-o", "out"], d)
    return d, proc


def _reference(d: Path) -> torch.nn.Module:
    """The original rebuilt from model.py, the user's masks applied here (not by slimc)."""
    import runpy

    ref = runpy.run_path(str(d / "model.py"))["model"]
    with torch.no_grad():
        ref.fc1.weight[GONE] = 0
        ref.fc1.bias[GONE] = 0
    return ref.eval()


def test_compile_writes_everything_but_onnx_and_says_why_once(compiled):
    d, proc = compiled
    out = d / "out"
    assert proc.returncode == EXIT_NO_ONNX == 3, proc.stderr[-2000:]
    err = _lines(proc.stderr)
    assert len(err) == 1, proc.stderr  # one line, no exporter or onnxruntime log spam
    assert err[0].startswith("error: no slim.onnx") and "i0e" in err[0] and "report.json" in err[0]
    assert "Traceback" not in proc.stdout + proc.stderr and "[E:" not in proc.stdout + proc.stderr
    assert "wrote" in proc.stdout  # the summary still comes
    for f in ("slim.pt", "masks.pth", "inputs.pt", "layout.json", "model.safetensors", "report.json"):
        assert (out / f).is_file(), f
    assert not (out / "slim.onnx").exists()  # neither a new one nor the earlier compile's
    rep = json.loads((out / "report.json").read_text())
    assert "i0e" in rep["onnx"]["error"] and rep["onnx"]["tried"]
    assert rep["verify"]["ok"] and rep["user_model"]["built"]
    assert rep["params"]["after"] == rep["params"]["before"] - len(GONE) * (16 + 1 + 8)


def test_the_written_outputs_load_and_are_exact(compiled):
    d, _ = compiled
    out = d / "out"
    script = textwrap.dedent(f"""
        import sys, json, runpy, torch, slimc
        sys.path.insert(0, {str(d)!r})
        graph = torch.load({str(out / 'slim.pt')!r}, weights_only=False).eval()
        model = slimc.load({str(out)!r}).eval()
        inputs = torch.load({str(out / 'inputs.pt')!r}, weights_only=True)
        masks = torch.load({str(out / 'masks.pth')!r}, weights_only=True)
        print(json.dumps({{"class": type(model).__name__, "fc1": list(model.fc1.weight.shape),
                          "inputs": [list(t.shape) for t in inputs], "masks": sorted(masks)}}))
        torch.save({{b: (graph(x), model(x)) for b, x in
                    ((b, torch.randn(b, 16, generator=torch.Generator().manual_seed(b))) for b in (1, 2, 5))}},
                   {str(d / 'slim_out.pt')!r})
    """)
    f = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert f.returncode == 0, f.stderr[-2000:]
    got = json.loads(_lines(f.stdout)[-1])
    assert got["class"] == "Net" and got["fc1"] == [32 - len(GONE), 16]
    assert got["inputs"] == [[2, 16]] and "fc1.weight" in got["masks"]
    ref = _reference(d)
    outs = torch.load(d / "slim_out.pt", weights_only=True)
    with torch.no_grad():
        for b, (g, m) in outs.items():
            want = ref(torch.randn(b, 16, generator=torch.Generator().manual_seed(b)))
            assert (g - want).abs().max() <= 1e-5 and (m - want).abs().max() <= 1e-5, b


def test_export_of_the_folder_fails_in_one_line(compiled):
    d, _ = compiled
    proc = _cli(["export", "out", "-o", "again.onnx"], d)
    assert proc.returncode == 2
    err = _lines(proc.stderr)
    assert len(err) == 1 and err[0].startswith("error:") and "i0e" in err[0], proc.stderr
    assert not (d / "again.onnx").exists()


def test_bench_of_the_folder_times_torch_and_says_why_not_ort(compiled):
    d, _ = compiled
    proc = _cli(["bench", "out", "--batch", "1", "--min-time", "0.02", "--runtimes", "torch,ort", "-o", "b"], d)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[E:" not in proc.stdout + proc.stderr
    res = json.loads((d / "b" / "bench.json").read_text())
    res = res[0] if isinstance(res, list) else res
    res = res.get("results", [res])[0] if "rows" not in res else res
    assert any(r["variant"] == "slim" and r["runtime"].startswith("torch") for r in res["rows"])
    assert not any(r["variant"] == "slim" and r["runtime"].startswith("ort") for r in res["rows"])
    assert any(e["variant"] == "slim" and e.get("stage") == "export" and "i0e" in e["error"] for e in res["errors"])


def test_save_api_warns_and_returns_what_it_wrote(tmp_path):
    import runpy

    import slimc

    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    ns = runpy.run_path(str(tmp_path / "model.py"))
    m = torch.ones(32, 1)
    m[GONE] = 0
    res = slimc.compile(ns["model"], {"fc1.weight": m}, ns["example_inputs"])
    with pytest.warns(OnnxWarning, match="slim.onnx not written"):
        paths = res.save(tmp_path / "out")
    assert "slim.onnx" not in paths and {"slim.pt", "masks.pth", "report.json"} <= set(paths)
    assert res.onnx_error and "i0e" in res.onnx_error
    assert json.loads((tmp_path / "out" / "report.json").read_text())["onnx"]["error"] == res.onnx_error
    # the same result saved without ONNX: no warning, no error
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxWarning)
        res.save(tmp_path / "out2", onnx=False)
    assert res.onnx_error is None
