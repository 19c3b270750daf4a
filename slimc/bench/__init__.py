"""Bench stage of slimc: original / masked / slim latency × torch / onnxruntime.

    from slimc.bench import bench, bench_spec, to_markdown, write_outputs
    r = bench(model, masks, example_inputs, batches=(1, 8, 64), device="cpu")
    write_outputs([r], "results", "mymodel")

Files: :mod:`~slimc.bench.run` (``bench()``: its steps), :mod:`~slimc.bench.config`
(``BenchConfig``), :mod:`~slimc.bench.timing` (timing torch correctly; the one repeat
policy, ``Repeats``), :mod:`~slimc.bench.ort_timer` (onnxruntime),
:mod:`~slimc.bench.machine` (what machine), :mod:`~slimc.bench.layers` (where the time goes,
layer by layer), :mod:`~slimc.bench.contention` (other
processes on the CPUs), :mod:`~slimc.bench.report` (JSON / markdown / PNG) and
:mod:`~slimc.bench.plots`.
"""
from slimc.bench.config import DTYPES, RUNTIMES, VARIANTS, BenchConfig
from slimc.bench.contention import CONTENDED_BUSY, ContentionMeter, cpu_busy_fraction, measure_quietly, wait_for_quiet_cpu
from slimc.bench.machine import machine_info, physical_cores_available
from slimc.bench.report import machine_markdown, to_markdown, write_outputs
from slimc.bench.run import NOISY_RATIO, batched_inputs, bench, bench_spec

__all__ = [
    "bench", "bench_spec", "BenchConfig", "batched_inputs", "to_markdown", "write_outputs", "machine_markdown",
    "machine_info", "physical_cores_available", "cpu_busy_fraction", "wait_for_quiet_cpu", "measure_quietly",
    "ContentionMeter", "CONTENDED_BUSY", "NOISY_RATIO", "VARIANTS", "RUNTIMES", "DTYPES",
]
