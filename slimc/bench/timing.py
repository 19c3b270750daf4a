"""Timing a model correctly: the caller's module is deep-copied before being moved / cast,
warm-up calls precede timing, everything runs under ``torch.inference_mode()`` on an
``eval()`` copy with a fixed intra-op thread count (recorded, the previous one restored),
GC paused. On CUDA the device is synchronized before the clock starts and after every
timed call, and ``cudnn.benchmark`` is on for warm-up *and* timed runs (turning it off
after warm-up would undo the autotuning); :func:`time_torch` can also replay a captured
CUDA graph, because eager GPU time at small inputs is kernel-launch bound.

How many calls are timed is one policy, :class:`Repeats`: exactly ``repeats`` calls, or
adaptive — calls until they cover ``min_time_s`` and number at least ``min_repeats``, at
most ``max_repeats``. Per-call samples give min / median / p90 / mean / std
(:class:`Timing`). The onnxruntime timer is :mod:`slimc.bench.ort_timer`.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from slimc.bench.machine import physical_cores_available
from slimc.errors import describe
from slimc.modes import collector_paused

__all__ = [
    "Timing",
    "Repeats",
    "time_torch",
    "launch_bound",
    "timed_samples",
    "warmed_samples",
    "cpu_timing",
    "fastest_ms",
    "LAUNCH_BOUND_RATIO",
    "MIN_ADAPTIVE_SAMPLES",
]

#: cudagraph median below this fraction of the eager median => launch bound.
LAUNCH_BOUND_RATIO = 0.7
#: default least number of samples when the count is adaptive.
MIN_ADAPTIVE_SAMPLES = 10


@dataclass(frozen=True)
class Repeats:
    """How many calls to time: exactly ``fixed``; else adaptive — calls until they cover
    ``min_time_s`` and number at least ``min_repeats``, at most ``max_repeats``."""

    fixed: int | None = None
    min_time_s: float = 1.0
    min_repeats: int = MIN_ADAPTIVE_SAMPLES
    max_repeats: int = 200

    def __post_init__(self) -> None:
        if self.fixed is not None and self.fixed < 1:
            raise ValueError(f"repeats must be >= 1, got {self.fixed}")
        if self.max_repeats < 1:
            raise ValueError(f"max_repeats must be >= 1, got {self.max_repeats}")
        if self.min_repeats < 1:
            raise ValueError(f"min_repeats must be >= 1, got {self.min_repeats}")
        if self.min_time_s < 0:
            raise ValueError(f"min_time_s must be >= 0, got {self.min_time_s}")

    def enough(self, n: int, total_ns: int) -> bool:
        """Whether ``n`` timed calls taking ``total_ns`` in all are enough."""
        if self.fixed is not None:
            return n >= self.fixed
        return n >= self.max_repeats or (n >= self.min_repeats and total_ns >= self.min_time_s * 1e9)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`time_torch` / :func:`~slimc.bench.ort_timer.time_ort` that say this."""
        return {"repeats": self.fixed, "min_time_s": self.min_time_s, "min_repeats": self.min_repeats,
                "max_repeats": self.max_repeats}


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

    @classmethod
    def of(cls, samples_ns: Sequence[int], *, runtime: str, device: str, batch: int, dtype: str,
           channels_last: bool, warmup: int, threads: int) -> "Timing":
        """The timing of per-call samples (ns) that ``warmup`` untimed calls preceded."""
        return cls(runtime=runtime, device=device, batch=batch, dtype=dtype, channels_last=bool(channels_last),
                   warmup=int(warmup), repeats=len(samples_ns), threads=threads, **sample_stats(samples_ns))

    def summary(self) -> str:
        return (
            f"{self.runtime}[{self.device}] b={self.batch} {self.dtype}"
            f"{' CL' if self.channels_last else ''} t={self.threads}: "
            f"median {self.median_ms:.3f} ms (min {self.min_ms:.3f}, "
            f"p90 {self.p90_ms:.3f}, n={self.repeats})"
        )


def sample_stats(samples_ns: Sequence[int]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- helpers


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def batch_of(inputs: Sequence[Any]) -> int:
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
    # what is garbage now is not collected inside a timed call (in a pause: nothing more to collect)
    if gc.isenabled():
        gc.collect()
    with collector_paused():
        yield


def resolve_threads(threads: int | None) -> int:
    if threads is None:
        return physical_cores_available()
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads


def resolve_device(device: str) -> tuple[torch.device, bool]:
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    return dev, dev.type == "cuda"


def check_warmup(warmup: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


def timed_samples(call: Callable[[], Any], policy: Repeats, sync: Callable[[], None] | None = None) -> list[int]:
    """Per-call wall times in ns of ``call()``, as many as ``policy`` says, GC paused.

    With a ``sync`` function (CUDA) the device is synchronized before the
    first call and after every call, inside the timed region.
    """
    samples: list[int] = []
    total = 0
    clock = time.perf_counter_ns
    with _gc_paused():
        if sync is not None:
            sync()
        while not policy.enough(len(samples), total):
            t0 = clock()
            call()
            if sync is not None:
                sync()
            dt = clock() - t0
            samples.append(dt)
            total += dt
    return samples


def warmed_samples(call: Callable[[], Any], policy: Repeats, warmup: int,
                   sync: Callable[[], None] | None = None) -> list[int]:
    """``warmup`` untimed calls (then the device synchronized), then :func:`timed_samples`."""
    for _ in range(warmup):
        call()
    if sync is not None:
        sync()
    return timed_samples(call, policy, sync)


@contextmanager
def cpu_timing(threads: int) -> Iterator[None]:
    """``threads`` intra-op threads, inference mode, GC paused: where a CPU timing runs."""
    with _torch_threads(threads), torch.inference_mode(), _gc_paused():
        yield


def fastest_ms(module: torch.nn.Module, inputs: tuple, policy: Repeats, warmup: int = 1) -> float:
    """``warmup`` calls, then the fastest of the calls ``policy`` says, in ms: a short block of
    a longer measurement, inside :func:`cpu_timing` (the module as it is: an eval copy)."""
    return min(warmed_samples(lambda: module(*inputs), policy, warmup)) / 1e6


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
    min_repeats: int = MIN_ADAPTIVE_SAMPLES,
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
    channels_last when requested. How many calls are timed: :class:`Repeats`.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    check_warmup(warmup)
    policy = Repeats(repeats, min_time_s, min_repeats, max_repeats)
    dev, is_cuda = resolve_device(device)
    if is_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if cuda_graph and not is_cuda:
        raise ValueError("cuda_graph=True requires a CUDA device")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    n_threads = resolve_threads(threads)

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
                    if cuda_graph:  # warmed up by the capture
                        graph, static_out = _capture_cuda_graph(model, args, warmup, dev)
                        samples = timed_samples(graph.replay, policy, sync)
                    else:
                        samples = warmed_samples(lambda: model(*args), policy, warmup, sync)
            else:
                samples = warmed_samples(lambda: model(*args), policy, warmup)
    finally:
        torch.backends.cudnn.benchmark = prev_cudnn_benchmark
        del graph, static_out

    return Timing.of(samples, runtime="torch-cudagraph" if cuda_graph else "torch-eager", device=dev.type,
                     batch=batch_of(inputs), dtype=_dtype_name(dtype), channels_last=channels_last, warmup=warmup,
                     threads=n_threads)


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
            f"CUDA graph capture failed for {type(model).__name__}: {describe(e)}. "
            "The model probably does host-device syncs, data-dependent control flow or "
            "CPU tensors in forward(); time it with cuda_graph=False instead."
        ) from e
    return graph, static_out
