"""Latency-measurement harness for original / masked / slim models.

The point of this module is to measure latency *correctly*:

* the module is deep-copied before being moved / cast, so the caller's module is
  never mutated or moved;
* warm-up runs precede timing; everything runs under ``torch.inference_mode()``
  on an ``eval()`` copy;
* on CUDA the device is synchronized before the clock starts and after every
  timed call (host timestamps with ``time.perf_counter_ns``), and
  ``torch.backends.cudnn.benchmark`` is enabled for warm-up *and* the timed
  runs (turning it off after warm-up would make cuDNN fall back to heuristic
  algorithm choice, undoing the autotuning); the previous value is restored;
* the intra-op thread count is fixed (default: physical cores available to this
  process, honouring CPU affinity and a cgroup CPU quota), recorded in the
  result, and the previous ``torch`` thread count is restored afterwards;
* ONNX Runtime sessions use ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL`` and an explicit provider; a
  silent fallback from CUDA to CPU is an error, not a measurement;
* per-call samples are kept; min / median / p90 / mean / std are computed over
  them.  With ``repeats=None`` the number of samples is adaptive: at least 10
  samples and at least ``min_time_s`` of timed calls, at most ``max_repeats``.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "Timing",
    "machine_info",
    "physical_cores_available",
    "time_torch",
    "time_ort",
    "launch_bound",
    "LAUNCH_BOUND_RATIO",
    "MIN_ADAPTIVE_SAMPLES",
]

#: cudagraph median below this fraction of the eager median => launch bound.
LAUNCH_BOUND_RATIO = 0.7
#: minimum number of samples when ``repeats`` is None.
MIN_ADAPTIVE_SAMPLES = 10


# --------------------------------------------------------------------------- result


@dataclass
class Timing:
    runtime: str  # "torch-eager", "torch-cudagraph", "ort-cpu", "ort-cuda"
    device: str  # "cpu" / "cuda"
    batch: int
    dtype: str
    channels_last: bool
    warmup: int
    repeats: int
    threads: int
    min_ms: float
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["samples_ms"] = [float(x) for x in self.samples_ms]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Timing":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> str:
        return (
            f"{self.runtime}[{self.device}] b={self.batch} {self.dtype}"
            f"{' CL' if self.channels_last else ''} t={self.threads}: "
            f"median {self.median_ms:.3f} ms (min {self.min_ms:.3f}, "
            f"p90 {self.p90_ms:.3f}, n={self.repeats})"
        )


def _stats(samples_ns: Sequence[int]) -> dict[str, Any]:
    if not samples_ns:
        raise ValueError("no timing samples were collected")
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return dict(
        min_ms=float(ms.min()),
        median_ms=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        # sample standard deviation; 0 for a single sample
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        samples_ms=[float(x) for x in ms],
    )


def launch_bound(eager: Timing, graph: Timing) -> bool:
    """True when the CUDA-graph median is < 0.7x the eager median.

    A large speed-up from replaying a captured graph means the eager time is
    dominated by kernel-launch (CPU/dispatcher) overhead rather than GPU work,
    so removing channels cannot show up in eager latency.
    """
    if eager.median_ms <= 0 or graph.median_ms <= 0:
        raise ValueError("launch_bound needs positive median latencies")
    return bool(graph.median_ms < LAUNCH_BOUND_RATIO * eager.median_ms)


# --------------------------------------------------------------------------- machine


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 cfs), or None."""
    v2 = _read("/sys/fs/cgroup/cpu.max")
    if v2:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return int(parts[0]) / int(parts[1])
            except (ValueError, ZeroDivisionError):
                return None
        return None
    q = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or _read("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us")
    p = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us") or _read("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us")
    try:
        if q and p and int(q) > 0:
            return int(q) / int(p)
    except (ValueError, ZeroDivisionError):
        pass
    return None


def physical_cores_available() -> int:
    """Physical cores (not SMT siblings) this process may run on.

    Uses CPU affinity and the sysfs topology; capped by a cgroup CPU quota.
    """
    cpus = _available_cpus()
    cores: set[tuple[str, str]] = set()
    for c in cpus:
        core = _read(f"/sys/devices/system/cpu/cpu{c}/topology/core_id")
        pkg = _read(f"/sys/devices/system/cpu/cpu{c}/topology/physical_package_id")
        if core is None:
            cores.add(("cpu", str(c)))  # no topology info: count logical cpu
        else:
            cores.add((pkg or "0", core))
    n = max(1, len(cores))
    quota = _cgroup_cpu_quota()
    if quota is not None and quota > 0:
        n = min(n, max(1, math.floor(quota)))
    return n


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo")
    if info:
        for line in info.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model", "Model") and val.strip():
                return val.strip()
    return platform.processor() or platform.machine() or "unknown"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def machine_info() -> dict:
    """Description of the machine and software stack (no hostname)."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(_available_cpus()),
        "physical_cores_available": physical_cores_available(),
        "cgroup_cpu_quota": _cgroup_cpu_quota(),
        # load when the info was taken: a busy machine invalidates CPU timings
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "onnxruntime": None,
        "ort_providers": None,
        "cuda": None,
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = list(ort.get_available_providers())
    except Exception:  # pragma: no cover - ort is a dependency
        pass
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info["cuda"] = {
            "device_name": torch.cuda.get_device_name(idx),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(idx))),
            "total_memory_gib": round(props.total_memory / 2**30, 2),
            "device_count": torch.cuda.device_count(),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver": _nvidia_driver(),
        }
    return info


# --------------------------------------------------------------------------- helpers


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _batch_of(inputs: Sequence[Any]) -> int:
    for x in inputs:
        shape = getattr(x, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) >= 1 else 1
    return 1


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _resolve_threads(threads: int | None) -> int:
    if threads is None:
        return physical_cores_available()
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads


def _device(device: str) -> tuple[torch.device, bool]:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    return dev, dev.type == "cuda"


def _check_counts(warmup: int, repeats: int | None, min_time_s: float, max_repeats: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if max_repeats < 1:
        raise ValueError(f"max_repeats must be >= 1, got {max_repeats}")
    if min_time_s < 0:
        raise ValueError(f"min_time_s must be >= 0, got {min_time_s}")


def _timed_loop(
    call: Callable[[], Any],
    sync: Callable[[], None] | None,
    repeats: int | None,
    min_time_s: float,
    max_repeats: int,
) -> list[int]:
    """Per-call wall times in ns.

    With a ``sync`` function (CUDA) the device is synchronized before the
    first call and after every call, inside the timed region.
    """
    if repeats is not None:
        target_n, min_n, min_total = int(repeats), int(repeats), 0
    else:
        target_n = int(max_repeats)
        min_n = min(MIN_ADAPTIVE_SAMPLES, target_n)
        min_total = int(min_time_s * 1e9)
    samples: list[int] = []
    total = 0
    clock = time.perf_counter_ns
    with _gc_paused():
        if sync is not None:
            sync()
        while len(samples) < target_n:
            t0 = clock()
            call()
            if sync is not None:
                sync()
            dt = clock() - t0
            samples.append(dt)
            total += dt
            if repeats is None and len(samples) >= min_n and total >= min_total:
                break
    return samples


# --------------------------------------------------------------------------- torch


def _prepare_inputs(
    inputs: Sequence[Any], dev: torch.device, dtype: torch.dtype, channels_last: bool
) -> tuple[Any, ...]:
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            x = x.detach().to(dev)
            if x.is_floating_point() and x.dtype != dtype:
                x = x.to(dtype)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            else:
                x = x.contiguous()
        out.append(x)
    return tuple(out)


def time_torch(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int | None = None,
    min_time_s: float = 1.0,
    max_repeats: int = 200,
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    cuda_graph: bool = False,
) -> Timing:
    """Time ``module(*inputs)`` with PyTorch (eager, or CUDA-graph replay).

    The caller's module and inputs are never modified: the module is
    deep-copied, put in ``eval()`` mode, cast to ``dtype`` (floating params /
    buffers only), optionally converted to channels_last and moved to
    ``device``.  Floating inputs are cast to ``dtype``; 4-D inputs are made
    channels_last when requested.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    _check_counts(warmup, repeats, min_time_s, max_repeats)
    dev, is_cuda = _device(device)
    if is_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if cuda_graph and not is_cuda:
        raise ValueError("cuda_graph=True requires a CUDA device")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    n_threads = _resolve_threads(threads)

    model = copy.deepcopy(module)
    model.eval()
    model = model.to(device=dev, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    args = _prepare_inputs(inputs, dev, dtype, channels_last)

    sync: Callable[[], None] | None = None
    if is_cuda:
        def sync() -> None:
            torch.cuda.synchronize(dev)

    prev_cudnn_benchmark = torch.backends.cudnn.benchmark
    graph = None
    static_out = None
    try:
        with _torch_threads(n_threads), torch.inference_mode():
            if is_cuda:
                torch.backends.cudnn.benchmark = True
                with torch.cuda.device(dev):
                    if cuda_graph:
                        graph, static_out = _capture_cuda_graph(model, args, warmup, dev)
                        call = graph.replay
                    else:
                        def call() -> Any:
                            return model(*args)

                        for _ in range(warmup):
                            call()
                        sync()
                    samples = _timed_loop(call, sync, repeats, min_time_s, max_repeats)
            else:
                def call() -> Any:
                    return model(*args)

                for _ in range(warmup):
                    call()
                samples = _timed_loop(call, None, repeats, min_time_s, max_repeats)
    finally:
        torch.backends.cudnn.benchmark = prev_cudnn_benchmark
        del graph, static_out

    return Timing(
        runtime="torch-cudagraph" if cuda_graph else "torch-eager",
        device=dev.type,
        batch=_batch_of(inputs),
        dtype=_dtype_name(dtype),
        channels_last=bool(channels_last),
        warmup=int(warmup),
        repeats=len(samples),
        threads=n_threads,
        **_stats(samples),
    )


def _capture_cuda_graph(
    model: torch.nn.Module, args: tuple[Any, ...], warmup: int, dev: torch.device
) -> tuple["torch.cuda.CUDAGraph", Any]:
    """Warm up on a side stream and capture ``model(*args)`` into a CUDA graph
    (the recipe from the PyTorch CUDA-graphs docs).  Inputs stay at fixed
    addresses (``args`` are the static inputs)."""
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    try:
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 3)):  # >= 3 iterations, as in the docs
                model(*args)
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.cuda.synchronize(dev)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(*args)
        torch.cuda.synchronize(dev)
        # one replay to make sure the captured graph is runnable
        graph.replay()
        torch.cuda.synchronize(dev)
    except Exception as e:
        # leave the device usable for the next measurement
        try:
            torch.cuda.synchronize(dev)
        except Exception:
            pass
        raise RuntimeError(
            f"CUDA graph capture failed for {type(model).__name__}: {type(e).__name__}: {e}. "
            "The model probably does host-device syncs, data-dependent control flow or "
            "CPU tensors in forward(); time it with cuda_graph=False instead."
        ) from e
    return graph, static_out


# --------------------------------------------------------------------------- onnxruntime

_ORT_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:
            raise TypeError("bfloat16 tensors cannot be fed to onnxruntime from numpy; cast to float32")
        return x.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(np.asarray(x))


def time_ort(
    onnx_path: str | os.PathLike,
    inputs: tuple[Any, ...],
    *,
    device: str = "cpu",
    warmup: int = 10,
    repeats: int | None = None,
    min_time_s: float = 1.0,
    max_repeats: int = 200,
    threads: int | None = None,
) -> Timing:
    """Time an ONNX model with onnxruntime (CPU or CUDA execution provider).

    Inputs (numpy arrays or torch tensors) are matched positionally to the
    session inputs and cast to the element type the model declares.  On CUDA
    inputs are copied to the device once and outputs are bound to the device
    (IOBinding), so host<->device copies are not timed, as for torch.
    """
    import onnxruntime as ort

    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        inputs = (inputs,)
    inputs = tuple(inputs)
    _check_counts(warmup, repeats, min_time_s, max_repeats)
    dev, is_cuda = _device(device)
    device_id = dev.index or 0
    n_threads = _resolve_threads(threads)

    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3

    if is_cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "device='cuda' requested but this onnxruntime build has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
            )
        providers: list[Any] = [
            ("CUDAExecutionProvider", {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}),
            "CPUExecutionProvider",
        ]
    else:
        providers = ["CPUExecutionProvider"]

    sess = ort.InferenceSession(os.fspath(onnx_path), sess_options=so, providers=providers)
    if is_cuda and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(
            f"onnxruntime did not enable CUDAExecutionProvider (got {sess.get_providers()}); "
            "refusing to report a CPU measurement as ort-cuda"
        )

    sess_inputs = sess.get_inputs()
    if len(inputs) != len(sess_inputs):
        raise ValueError(
            f"{onnx_path}: model has {len(sess_inputs)} inputs "
            f"({[i.name for i in sess_inputs]}), got {len(inputs)}"
        )
    feeds: dict[str, np.ndarray] = {}
    for meta, x in zip(sess_inputs, inputs):
        arr = _to_numpy(x)
        want = _ORT_NUMPY_TYPES.get(meta.type)
        if want is not None and arr.dtype != want:
            arr = arr.astype(want)
        feeds[meta.name] = np.ascontiguousarray(arr)
    float_types = [a.dtype for a in feeds.values() if np.issubdtype(a.dtype, np.floating)]
    dtype_name = str(float_types[0]) if float_types else str(next(iter(feeds.values())).dtype)

    if is_cuda:
        binding = sess.io_binding()
        keep_alive = []
        for name, arr in feeds.items():
            ov = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", device_id)
            keep_alive.append(ov)
            binding.bind_ortvalue_input(name, ov)
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cuda", device_id)
        binding.synchronize_inputs()

        def call() -> Any:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()  # Run() syncs already; be explicit

    else:
        out_names = [o.name for o in sess.get_outputs()]

        def call() -> Any:
            return sess.run(out_names, feeds)

    for _ in range(warmup):
        call()
    samples = _timed_loop(call, None, repeats, min_time_s, max_repeats)

    return Timing(
        runtime="ort-cuda" if is_cuda else "ort-cpu",
        device=dev.type,
        batch=_batch_of(list(feeds.values())),
        dtype=dtype_name,
        channels_last=False,
        warmup=int(warmup),
        repeats=len(samples),
        threads=n_threads,
        **_stats(samples),
    )


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    import json

    json.dump(machine_info(), sys.stdout, indent=2)
    print()
