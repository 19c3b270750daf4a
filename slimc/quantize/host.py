"""What int8 is fast on this CPU: its int8 instruction sets, and the activation / weight types
onnxruntime's int8 kernels run fastest with.

x86's int8 dot products multiply an *unsigned* byte by a signed byte (AVX2 ``vpmaddubsw``,
AVX512-VNNI / AVX-VNNI ``vpdpbusd``, AMX ``tdpbusd``), so uint8 activations with int8 weights
(U8S8) feed them directly, while int8 × int8 costs onnxruntime's kernels extra work — measured
on this project's AVX512-VNNI/AMX host (``benchmarks/quantize_latency.py --types``, results in
``benchmarks/results/quantize_types.*``): a ResNet-50-shaped static QDQ model at batch 8, 2
threads, ran at 0.40× the float time with U8S8 and at 1.11× with S8S8. ARM's ``sdot`` is
signed × signed: S8S8 there. :func:`measure_types` measures it on the machine at hand.
"""
from __future__ import annotations

import platform
from typing import Any

from slimc.bench.machine import cpu_flags, int8_isa  # noqa: F401 - this module's public names too

#: int8 dot products that accumulate u8×s8 into 32 bit without saturating
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")

#: (machine family, instruction sets of which it needs one — empty: none) → the fastest types;
#: the first rule that matches wins
TYPE_RULES: tuple[tuple[str, tuple[str, ...], dict[str, Any], str], ...] = (
    ("x86", VNNI, {"activation": "uint8", "weight": "int8", "reduce_range": False},
     "x86 int8 dot products are u8×s8 (vpdpbusd/tdpbusd): measured 0.37-0.40× float vs 1.11-1.22× for s8s8 "
     "(ResNet-50, batch 8, 2 threads, AVX512-VNNI/AMX; benchmarks/results/quantize_types.md)"),
    ("x86", (), {"activation": "uint8", "weight": "int8", "reduce_range": True},
     "x86 without VNNI: u8×s8 pairs summed in 16 bit (AVX2 vpmaddubsw) saturate with 8-bit weights: "
     "7-bit weights (reduce_range), as onnxruntime advises"),
    ("arm", (), {"activation": "int8", "weight": "int8", "reduce_range": False}, "ARM sdot multiplies signed bytes"),
)


def family() -> str:
    m = platform.machine().lower()
    return "arm" if m.startswith(("arm", "aarch")) else "x86" if m in ("x86_64", "amd64", "i686", "i386") else m


def default_types(flags: set[str] | None = None, machine: str | None = None) -> dict[str, Any]:
    """The activation and weight types of this CPU (or of ``flags`` on a ``machine`` family),
    whether weights keep to 7 bit (``reduce_range``), and why (see the module docstring)."""
    fam = machine or family()
    flags = cpu_flags() if flags is None else flags
    for rule_family, needs, types, why in TYPE_RULES:
        if fam == rule_family and (not needs or any(f in flags for f in needs)):
            return {**types, "why": why}
    return {"activation": "uint8", "weight": "int8", "reduce_range": False, "why": "onnxruntime's default for CPUs"}


def measure_types(float_path: str, calibration: list[dict], inputs: tuple, *, threads: int = 2,
                  repeats: int = 20, warmup: int = 3) -> list[dict[str, Any]]:
    """Quantize ``float_path`` statically (QDQ, per channel) with each (activation, weight) type
    pair, and time each file beside the float one on ``inputs`` (onnxruntime, ``threads``): rows of
    median / min ms, the ratio to float, and how much of the CPUs other processes used meanwhile
    (a measurement taken while they did is not the CPU's). The defaults above come from running
    this: ``python benchmarks/quantize_latency.py --types``."""
    import os
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from slimc.bench.contention import ContentionMeter
    from slimc.bench.ort_timer import time_ort
    from slimc.onnx.quiet import Quiet
    from slimc.quantize.ptq import Reader

    def timed(label: str, path: str) -> dict[str, Any]:
        with ContentionMeter() as cm:
            t = time_ort(path, inputs, threads=threads, repeats=repeats, warmup=warmup)
        return {"types": label, "median_ms": t.median_ms, "min_ms": t.min_ms, "p90_ms": t.p90_ms,
                "repeats": t.repeats, "threads": threads, "other_cpu_busy": cm.other_busy}

    rows = [timed("float", float_path)]
    with tempfile.TemporaryDirectory(prefix=".slimc-types-") as d:
        for act, wt in (("uint8", "int8"), ("int8", "int8")):
            out = os.path.join(d, f"{act}_{wt}.onnx")
            with Quiet():
                quantize_static(float_path, out, Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                                weight_type=QuantType.QInt8)
            rows.append(timed(f"{act}/{wt}", out))
    for r in rows:
        r["ratio_to_float"] = r["median_ms"] / rows[0]["median_ms"]
        r["min_ratio_to_float"] = r["min_ms"] / rows[0]["min_ms"]
    return rows
