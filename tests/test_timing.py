"""Fast tests for the latency harness (slimc.bench.timing, ort_timer) and plots (slimc.bench.plots)."""

from __future__ import annotations

import json
import socket
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from slimc.bench.machine import machine_info, physical_cores_available
from slimc.bench.ort_timer import time_ort
from slimc.bench.plots import plot_latency
from slimc.bench.timing import Repeats, Timing, launch_bound, time_torch

has_cuda = torch.cuda.is_available()


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _check_stats(t: Timing) -> None:
    assert 0 < t.min_ms <= t.median_ms <= t.p90_ms
    assert t.min_ms <= t.mean_ms <= max(t.samples_ms)
    assert t.std_ms >= 0
    assert len(t.samples_ms) == t.repeats
    assert min(t.samples_ms) == pytest.approx(t.min_ms)


def test_time_torch_fixed_repeats_leaves_caller_untouched() -> None:
    torch.manual_seed(0)
    model = TinyConv().train()  # caller's mode must survive too
    before = _snapshot(model)
    x = torch.randn(2, 3, 16, 16)
    x_before = x.clone()

    prev_threads = torch.get_num_threads()
    other = 1 if prev_threads != 1 else 2
    t = time_torch(model, (x,), warmup=2, repeats=12, threads=other)

    assert torch.get_num_threads() == prev_threads
    assert t.runtime == "torch-eager" and t.device == "cpu"
    assert t.repeats == 12 and len(t.samples_ms) == 12
    assert t.threads == other and t.warmup == 2
    assert t.batch == 2 and t.dtype == "float32" and t.channels_last is False
    _check_stats(t)

    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:  # incl. BN running stats: the copy ran in eval mode
        assert torch.equal(before[k], after[k]), k
    assert model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(x, x_before)

    d = t.to_dict()
    json.dumps(d)
    assert d["median_ms"] == t.median_ms and len(d["samples_ms"]) == 12
    assert Timing.from_dict(d) == t


def test_time_torch_adaptive_bf16_channels_last() -> None:
    model = TinyConv()
    w0 = model.body[0].weight
    before = _snapshot(model)
    x = torch.randn(1, 3, 16, 16)
    prev_threads = torch.get_num_threads()

    t = time_torch(model, (x,), warmup=1, min_time_s=0.02, max_repeats=40,
                   dtype=torch.bfloat16, channels_last=True)

    assert torch.get_num_threads() == prev_threads
    assert 10 <= t.repeats <= 40
    assert t.repeats == 40 or sum(t.samples_ms) >= 20.0 - 1e-6
    assert t.dtype == "bfloat16" and t.channels_last is True
    assert t.threads == physical_cores_available()
    _check_stats(t)
    # caller's module is neither cast nor converted to channels_last
    assert model.body[0].weight is w0
    assert w0.dtype == torch.float32 and w0.is_contiguous()
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_time_torch_adaptive_respects_max_repeats() -> None:
    t = time_torch(nn.Linear(4, 4), (torch.randn(3, 4),), warmup=0, min_time_s=10.0, max_repeats=15)
    assert t.repeats == 15
    _check_stats(t)


def test_repeats_policy() -> None:
    fixed = Repeats(fixed=3, min_time_s=100.0)
    assert [fixed.enough(n, 0) for n in (2, 3)] == [False, True]
    adaptive = Repeats(min_time_s=0.5, min_repeats=4, max_repeats=8)
    assert not adaptive.enough(3, 10**9)  # fewer than min_repeats
    assert not adaptive.enough(4, 10**8)  # less than min_time_s
    assert adaptive.enough(4, 5 * 10**8) and adaptive.enough(8, 0)  # both met / the cap
    assert adaptive.kwargs() == {"repeats": None, "min_time_s": 0.5, "min_repeats": 4, "max_repeats": 8}
    with pytest.raises(ValueError):
        Repeats(min_repeats=0)


def test_time_torch_rejects_bad_args() -> None:
    m, x = nn.Linear(2, 2), (torch.randn(1, 2),)
    with pytest.raises(ValueError):
        time_torch(m, x, cuda_graph=True)  # CPU + cuda graph
    with pytest.raises(ValueError):
        time_torch(m, x, repeats=0)
    with pytest.raises(ValueError):
        time_torch(m, x, threads=0)


def _export_linear(tmp_path) -> tuple[str, torch.Tensor, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    path = str(tmp_path / "lin.onnx")
    # The TorchScript exporter takes ~0.2 s here, the dynamo one ~3 s (first
    # call); this test is about time_ort, not the exporter, so prefer the fast
    # one and fall back to dynamo where the TorchScript exporter is gone.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
    except Exception:
        torch.onnx.export(model, (x,), path, dynamo=True)
    return path, x, model


def test_time_ort_cpu(tmp_path) -> None:
    path, x, _ = _export_linear(tmp_path)
    t = time_ort(path, (x,), warmup=2, repeats=11, threads=1)
    assert t.runtime == "ort-cpu" and t.device == "cpu"
    assert t.repeats == 11 and t.threads == 1 and t.batch == 4 and t.dtype == "float32"
    _check_stats(t)
    # numpy inputs and the adaptive mode
    t2 = time_ort(path, (x.numpy(),), warmup=1, min_time_s=0.01, max_repeats=30)
    assert 10 <= t2.repeats <= 30
    _check_stats(t2)


def test_launch_bound() -> None:
    def mk(median: float, runtime: str) -> Timing:
        return Timing(runtime, "cuda", 1, "float32", False, 1, 1, 1,
                      median, median, median, median, 0.0, [median])

    assert launch_bound(mk(1.0, "torch-eager"), mk(0.5, "torch-cudagraph"))
    assert not launch_bound(mk(1.0, "torch-eager"), mk(0.7, "torch-cudagraph"))
    assert not launch_bound(mk(1.0, "torch-eager"), mk(0.95, "torch-cudagraph"))


def test_machine_info_is_hostname_free() -> None:
    info = machine_info()
    assert info["cpu_model"] and info["torch"] == torch.__version__
    assert info["onnxruntime"]
    assert info["physical_cores_available"] >= 1
    blob = json.dumps(info)
    host = socket.gethostname()
    if len(host) >= 6:  # avoid false hits for tiny hostnames
        assert host not in blob


def test_plot_latency_writes_png(tmp_path) -> None:
    rows = []
    for runtime, batch in [("torch-eager", 1), ("torch-eager", 8), ("ort-cpu", 1)]:
        for model, base in [("vgg11", 3.0), ("resnet18", 2.0)]:
            for variant, f in [("original", 1.0), ("masked", 1.02), ("slim", 0.55)]:
                med = base * f * batch ** 0.5
                rows.append(dict(model=model, variant=variant, runtime=runtime, batch=batch,
                                 median_ms=med, p90_ms=med * 1.1, min_ms=med * 0.9))
    rows.pop()  # a missing (model, variant) must not break the plot
    out = tmp_path / "sub" / "latency.png"
    ret = plot_latency(rows, out)
    assert ret == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["latency.png"]  # no temp left
    with pytest.raises(ValueError):
        plot_latency([], tmp_path / "empty.png")


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda, reason="needs CUDA")
def test_cuda_eager_and_graph(tmp_path) -> None:
    model = TinyConv()
    before = _snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    prev_bench = torch.backends.cudnn.benchmark

    eager = time_torch(model, (x,), device="cuda", warmup=3, repeats=20)
    graph = time_torch(model, (x,), device="cuda", warmup=3, repeats=20, cuda_graph=True)
    bf16 = time_torch(model, (x,), device="cuda", warmup=3, repeats=10, cuda_graph=True,
                      dtype=torch.bfloat16, channels_last=True)

    assert torch.backends.cudnn.benchmark == prev_bench
    assert eager.runtime == "torch-eager" and eager.device == "cuda"
    assert graph.runtime == "torch-cudagraph" and graph.device == "cuda"
    assert bf16.dtype == "bfloat16" and bf16.channels_last
    for t in (eager, graph, bf16):
        _check_stats(t)
    assert isinstance(launch_bound(eager, graph), bool)
    # caller's module stays on CPU, unchanged
    assert all(p.device.type == "cpu" for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    assert "device_name" in machine_info()["cuda"]

    # a forward pass with a host sync cannot be captured: clear error
    class Syncs(nn.Module):
        def forward(self, x):
            if x.sum().item() > 0:  # .item() syncs
                return x * 2
            return x

    with pytest.raises(RuntimeError, match="CUDA graph capture failed"):
        time_torch(Syncs(), (x,), device="cuda", warmup=1, repeats=2, cuda_graph=True)

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        path, xl, _ = _export_linear(tmp_path)
        t = time_ort(path, (xl,), device="cuda", warmup=2, repeats=10)
        assert t.runtime == "ort-cuda" and t.device == "cuda"
        _check_stats(t)
