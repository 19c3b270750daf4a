"""Timing an ONNX file with onnxruntime (CPU or CUDA execution provider): sessions with
``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL`` and an
explicit provider; a silent fallback from CUDA to CPU is an error, not a measurement."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from slimc.bench.timing import (
    MIN_ADAPTIVE_SAMPLES,
    Repeats,
    Timing,
    batch_of,
    check_warmup,
    resolve_device,
    resolve_threads,
    sample_stats,
    timed_samples,
)

__all__ = ["time_ort"]


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
    min_repeats: int = MIN_ADAPTIVE_SAMPLES,
    threads: int | None = None,
    session_config: dict[str, str] | None = None,
) -> Timing:
    """Time an ONNX model with onnxruntime (CPU or CUDA execution provider).

    Inputs (numpy arrays or torch tensors) are matched positionally to the
    session inputs and cast to the element type the model declares.  On CUDA
    inputs are copied to the device once and outputs are bound to the device
    (IOBinding), so host<->device copies are not timed, as for torch. How many calls
    are timed: :class:`~slimc.bench.timing.Repeats`.
    """
    import onnxruntime as ort

    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        inputs = (inputs,)
    inputs = tuple(x for x in inputs if x is not None)  # absent inputs are not in the file (slimc.onnx)
    check_warmup(warmup)
    policy = Repeats(repeats, min_time_s, min_repeats, max_repeats)
    dev, is_cuda = resolve_device(device)
    device_id = dev.index or 0
    n_threads = resolve_threads(threads)

    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for key, value in (session_config or {}).items():  # e.g. session.disable_quant_qdq for weight-only int8
        so.add_session_config_entry(key, value)

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
    samples = timed_samples(call, policy)

    return Timing(
        runtime="ort-cuda" if is_cuda else "ort-cpu",
        device=dev.type,
        batch=batch_of(list(feeds.values())),
        dtype=dtype_name,
        channels_last=False,
        warmup=int(warmup),
        repeats=len(samples),
        threads=n_threads,
        **sample_stats(samples),
    )
