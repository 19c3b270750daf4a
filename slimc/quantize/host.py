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

#: (machine family, an instruction set it has or None) → the fastest types, first match wins
TYPE_RULES: tuple[tuple[str, str | None, dict[str, str], str], ...] = (
    ("x86", None, {"activation": "uint8", "weight": "int8"},
     "x86 int8 dot products are u8×s8 (vpmaddubsw/vpdpbusd/tdpbusd): measured 0.40× float vs 1.11× for s8s8 "
     "(ResNet-50, batch 8, 2 threads, AVX512-VNNI/AMX)"),
    ("arm", None, {"activation": "int8", "weight": "int8"}, "ARM sdot multiplies signed bytes"),
)


def family() -> str:
    m = platform.machine().lower()
    return "arm" if m.startswith(("arm", "aarch")) else "x86" if m in ("x86_64", "amd64", "i686", "i386") else m


def default_types() -> dict[str, str]:
    """The activation and weight types of this CPU (see the module docstring), and why."""
    fam, flags = family(), cpu_flags()
    for rule_family, needs, types, why in TYPE_RULES:
        if fam == rule_family and (needs is None or needs in flags):
            return {**types, "why": why}
    return {"activation": "uint8", "weight": "int8", "why": "onnxruntime's default for CPUs"}


def measure_types(float_path: str, batches: list[dict], feed: dict, *, threads: int = 2,
                  repeats: int = 10) -> list[dict[str, Any]]:
    """Quantize ``float_path`` statically with each (activation, weight) type pair and time it
    beside the float model on ``feed``: rows of median ms and the ratio to float. The defaults
    above come from running this (benchmarks/quantize_latency.py --types)."""
    import os
    import tempfile
    import time

    import numpy as np
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from slimc.onnx.quiet import Quiet
    from slimc.quantize.ptq import Reader

    def timed(path: str) -> float:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            s.run(None, feed)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            s.run(None, feed)
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts)) * 1e3

    rows = [{"types": "float", "ms": timed(float_path)}]
    with tempfile.TemporaryDirectory(prefix=".slimc-types-") as d:
        for act, wt in (("uint8", "int8"), ("int8", "int8")):
            out = os.path.join(d, f"{act}_{wt}.onnx")
            with Quiet():
                quantize_static(float_path, out, Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                                weight_type=QuantType.QInt8)
            rows.append({"types": f"{act}/{wt}", "ms": timed(out)})
    for r in rows:
        r["ratio_to_float"] = r["ms"] / rows[0]["ms"]
    return rows
