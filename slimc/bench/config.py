"""What a benchmark measures and how: :class:`BenchConfig`, checked once."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import torch

from slimc.bench.machine import physical_cores_available
from slimc.bench.timing import Repeats

__all__ = ["BenchConfig", "VARIANTS", "RUNTIMES", "DTYPES"]

VARIANTS = ("original", "masked", "slim")
RUNTIMES = ("torch", "ort")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _subset(kind: str, got: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    got = tuple(got)
    bad = [g for g in got if g not in allowed]
    if bad or not got:
        raise ValueError(f"{kind} must be a non-empty subset of {', '.join(allowed)}; got {list(got)}")
    return got


@dataclass
class BenchConfig:
    """The knobs of :func:`slimc.bench.bench`.

    ``variants`` × ``runtimes`` × ``batches`` are timed on ``device`` with ``threads``
    intra-op threads (default: the physical cores available) in ``dtype``; on CUDA
    ``cuda_graphs`` (default on) also replays a captured CUDA graph. How many calls are
    timed is :class:`~slimc.bench.timing.Repeats`: exactly ``repeats``, or until they
    cover ``min_time_s`` and number ``min_repeats``..``max_repeats``, after ``warmup``
    calls. ``retries``: on CPU, a configuration during which other processes used more
    than ``CONTENDED_BUSY`` of the CPUs is measured again after waiting up to
    ``wait_idle_s`` for a quiet CPU. ``workdir``: where the state dicts and ONNX exports
    go (default: a temp folder). ``layers``: also the per-layer view of original against slim
    (:mod:`slimc.bench.layers`) at the first batch, in each CPU runtime.
    """

    batches: Sequence[int] = (1, 8, 64)
    device: str = "cpu"
    runtimes: Sequence[str] = RUNTIMES
    variants: Sequence[str] = VARIANTS
    threads: int | None = None
    dtype: str = "fp32"
    channels_last: bool = False
    cuda_graphs: bool | None = None
    min_time_s: float = 1.0
    warmup: int = 3
    repeats: int | None = None
    min_repeats: int = 5
    max_repeats: int = 1000
    workdir: str | os.PathLike | None = None
    onnx_check: bool = True
    keep_samples: bool = True
    seed: int = 0
    retries: int = 0
    wait_idle_s: float = 60.0
    layers: bool = False
    policy: Repeats = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.variants = _subset("variants", self.variants, VARIANTS)
        self.runtimes = _subset("runtimes", self.runtimes, RUNTIMES)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        dev = torch.device(self.device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={self.device!r} requested but CUDA is not available")
        if self.cuda_graphs is None:
            self.cuda_graphs = dev.type == "cuda"
        if self.cuda_graphs and dev.type != "cuda":
            raise ValueError("cuda_graphs=True needs device='cuda'")
        self.batches = [int(b) for b in self.batches]
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be positive integers, got {self.batches}")
        self.threads = physical_cores_available() if self.threads is None else int(self.threads)
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.policy = Repeats(self.repeats, self.min_time_s, self.min_repeats, self.max_repeats)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self, input_shapes: list[Any]) -> dict:
        """The ``config`` entry of a bench result."""
        return {
            "batches": list(self.batches), "device": self.torch_device.type, "runtimes": list(self.runtimes),
            "variants": list(self.variants), "threads": self.threads, "dtype": self.dtype,
            "channels_last": bool(self.channels_last), "cuda_graphs": bool(self.cuda_graphs),
            "min_time_s": self.min_time_s, "warmup": self.warmup, "repeats": self.repeats,
            "min_repeats": self.min_repeats, "max_repeats": self.max_repeats, "seed": self.seed,
            "retries": self.retries, "input_shapes": input_shapes,
        }

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls) if f.init}
