"""Fast test of the benchmark harness (slimc.bench) on a tiny conv net at batch 1."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from slimc.bench import (
    BenchConfig,
    ContentionMeter,
    batched_inputs,
    bench,
    measure_quietly,
    to_markdown,
    write_outputs,
)

ROW_KEYS = {"model", "pruner", "variant", "runtime", "device", "batch", "dtype", "threads",
            "min_ms", "median_ms", "p90_ms", "repeats", "other_cpu_busy"}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))))


def _masks(m: Tiny) -> dict[str, torch.Tensor]:
    w1 = torch.ones_like(m.c1.weight)
    w1[4:] = 0  # half of c1's filters
    w2 = torch.ones_like(m.c2.weight)
    w2[:3] = 0  # three of c2's filters
    return {"c1.weight": w1, "c2.weight": w2}


@pytest.fixture(scope="module")
def result() -> dict:
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    # masked and slim only: each ONNX export costs a few seconds (original: see below)
    r = bench(m, _masks(m), x, batches=(1,), threads=1, min_time_s=0.001, warmup=1,
              min_repeats=2, max_repeats=3, onnx_check=False, name="tiny", pruner="manual",
              variants=("masked", "slim"))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "bench must not modify the model"
    return r


def test_rows(result: dict) -> None:
    rows = result["rows"]
    got = {(r["variant"], r["runtime"]) for r in rows}
    assert got == {(v, rt) for v in ("masked", "slim") for rt in ("torch-eager", "ort-cpu")}
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["batch"] == 1 and r["device"] == "cpu" and r["threads"] == 1
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert 2 <= r["repeats"] <= 3
    assert result["errors"] == []
    assert result["machine"]["torch"] == torch.__version__


def test_sizes_and_speedup(result: dict) -> None:
    p, f = result["params"], result["flops"]
    assert p["original"] == p["masked"] > p["slim"]
    assert f["original"] == f["masked"] > f["slim"] > 0
    assert result["flops_ratio"] == pytest.approx(f["original"] / f["slim"])
    fb = result["file_bytes"]
    # (whole .onnx files of a model this tiny are dominated by graph metadata)
    assert fb["slim"]["onnx_initializer_bytes"] < fb["masked"]["onnx_initializer_bytes"]
    assert fb["slim"]["pt"] < fb["masked"]["pt"]
    sp = result["speedup"]
    assert {e["runtime"] for e in sp} == {"torch-eager", "ort-cpu"}
    for e in sp:
        assert e["batch"] == 1 and e["launch_bound"] is False
        assert e["speedup"] == pytest.approx(e["masked_ms"] / e["slim_ms"])
        assert e["flops_ratio"] == pytest.approx(result["flops_ratio"])


def test_markdown(result: dict) -> None:
    md = to_markdown(result)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| model | pruner | runtime | batch | masked ms | slim ms | speedup | FLOPs ratio")
    assert len(lines) == 2 + len(result["speedup"])
    assert all(ln.startswith("| tiny | manual |") for ln in lines[2:])
    detail = to_markdown([result, result], detail=True)
    assert "| min | median | p90 |" in detail and detail.count("| tiny | slim |") == 4


def test_write_outputs(result: dict, tmp_path) -> None:
    paths = write_outputs([result], tmp_path / "out", "bench")
    for kind in ("json", "md", "png"):
        assert paths[kind].endswith(f"bench.{kind}")
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["results"][0]["rows"] == json.loads(json.dumps(result["rows"]))
    assert "machine" in doc and "loadavg_1m" in doc["machine"]
    assert (tmp_path / "out" / "bench.md").read_text().count("| tiny |") >= 2
    assert (tmp_path / "out" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md", "bench.png"]


def test_original_variant_and_precomputed_slim() -> None:
    m = Tiny().eval()
    slim = Tiny().eval()  # any module stands in for a precomputed slim model
    r = bench(m, _masks(m), torch.randn(2, 3, 8, 8), batches=(1, 2), runtimes=("torch",), slim=slim,
              threads=1, repeats=2, warmup=1, name="tiny")
    got = sorted((row["variant"], row["batch"], row["repeats"]) for row in r["rows"])
    assert got == sorted((v, b, 2) for v in ("original", "masked", "slim") for b in (1, 2))
    assert [e["batch"] for e in r["speedup"]] == [1, 2]
    assert all(e["original_ms"] is not None for e in r["speedup"])
    assert r["file_bytes"]["slim"]["onnx"] is None and "compile_s" not in r


def test_batched_inputs() -> None:
    x = torch.randn(2, 3, 4, 4)
    ids = torch.tensor([[1, 2], [3, 4]])
    a, b = batched_inputs((x, ids), 5, seed=1)
    assert a.shape == (5, 3, 4, 4) and a.dtype == x.dtype
    assert torch.equal(a, batched_inputs((x, ids), 5, seed=1)[0])
    assert b.shape == (5, 2) and b.dtype == ids.dtype  # token ids: redrawn in the example's range
    assert int(b.min()) >= 0 and int(b.max()) <= 4


def test_contention_meter_sees_another_process() -> None:
    """A child process spinning one core while we sleep is other processes' load, and
    at least a third of a 2-core machine (more on a busier one)."""
    import subprocess
    import sys
    import time

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)  # the child is running
        with ContentionMeter() as cm:
            time.sleep(1.0)
    finally:
        spin.wait()
    assert cm.other_busy is not None and cm.other_busy >= min(0.3, 0.9 / (os.cpu_count() or 1))


def test_measure_quietly_retries_while_contended(monkeypatch) -> None:
    import slimc.bench.contention as contention

    loads = iter([0.5, 0.3, 0.05, 0.9])

    class FakeMeter:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.other_busy = next(loads)

    monkeypatch.setattr(contention, "ContentionMeter", FakeMeter)
    said: list[str] = []
    calls = iter(range(10))
    attempts = measure_quietly(lambda: next(calls), retries=5, wait_idle_s=0, label="x", log=said.append)
    assert [(a.result, a.other_busy) for a in attempts] == [(0, 0.5), (1, 0.3), (2, 0.05)]
    assert len(said) == 2 and "50%" in said[0]
    assert len(measure_quietly(lambda: 0, retries=0, wait_idle_s=0)) == 1  # 0.9 busy, no retries left


def test_write_outputs_without_matplotlib(result: dict, tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    said: list[str] = []
    paths = write_outputs([result], tmp_path, "bench", log=said.append)
    assert sorted(paths) == ["json", "md"] and sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]
    assert len(said) == 1 and "matplotlib is not installed" in said[0] and "\n" not in said[0]


def test_bad_arguments() -> None:
    m = Tiny().eval()
    with pytest.raises(ValueError):
        bench(m, _masks(m), torch.randn(1, 3, 8, 8), variants=("dense",))
    with pytest.raises(ValueError):
        bench(m, _masks(m), torch.randn(1, 3, 8, 8), dtype="int8")
    with pytest.raises(TypeError, match="unexpected options"):
        bench(m, _masks(m), torch.randn(1, 3, 8, 8), batch=(1,))
    with pytest.raises(ValueError, match="runtimes"):
        BenchConfig(runtimes=("tvm",))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the exit on a machine without CUDA")
def test_gpu_check_without_cuda_is_one_line() -> None:
    """`make gpu-check` (benchmarks/gpu_check.py) on a CPU machine: one clear line, exit ≠ 0."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA device: "), lines


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda_times_eager_and_graphs() -> None:
    m = Tiny().eval()
    r = bench(m, _masks(m), torch.randn(2, 3, 8, 8), batches=(1,), device="cuda", runtimes=("torch",),
              variants=("masked", "slim"), repeats=5, warmup=2, name="tiny")
    assert {row["runtime"] for row in r["rows"]} == {"torch-eager", "torch-cudagraph"}
    (eager,) = [e for e in r["speedup"] if e["runtime"] == "torch-eager"]
    assert isinstance(eager["launch_bound"], bool) and eager["eager_over_graph_slim"] > 0
    assert eager["device"] == "cuda" and r["errors"] == []
