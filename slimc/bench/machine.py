"""What machine a measurement ran on: CPU model, physical cores available to this process
(affinity, SMT, cgroup quota), load, library versions, GPU. No hostname."""
from __future__ import annotations

import math
import os
import platform
import subprocess
from typing import Any

import numpy as np
import torch

__all__ = ["machine_info", "physical_cores_available", "int8_isa", "cpu_flags"]


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


#: /proc/cpuinfo flags that matter for int8 (flag → what it is)
INT8_FLAGS = {
    "avx2": "AVX2 (vpmaddubsw: u8×s8, 16-bit sums)",
    "avx_vnni": "AVX-VNNI (vpdpbusd on 256 bit)",
    "avx512_vnni": "AVX512-VNNI (vpdpbusd: u8×s8 → s32)",
    "avx512_bf16": "AVX512-BF16",
    "amx_int8": "AMX-INT8 (tdpbusd tiles)",
    "amx_bf16": "AMX-BF16",
    "asimddp": "ARM dot product (sdot/udot)",
    "i8mm": "ARM int8 matrix multiply",
}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo ``flags``, ARM ``Features``; empty where unknown)."""
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()


def int8_isa() -> dict[str, bool]:
    """Which int8 instruction sets this CPU has (empty where unknown)."""
    flags = cpu_flags()
    return {f: f in flags for f in INT8_FLAGS} if flags else {}


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
        # int8 speed depends on these (AVX2, AVX512-VNNI, AVX-VNNI, AMX-INT8; ARM dot product)
        "int8_isa": [f for f, on in int8_isa().items() if on],
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


if __name__ == "__main__":  # pragma: no cover - manual look at this machine
    import json
    import sys

    json.dump(machine_info(), sys.stdout, indent=2)
    print()
