"""Timing an ONNX file with onnxruntime (CPU or CUDA execution provider): sessions with
``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL`` and an
explicit provider; a silent fallback from CUDA to CPU is an error, not a measurement."""
from __future__ import annotations

import os
from typing import Any, Callable

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
    warmed_samples,
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


def time_ort(onnx_path: str | os.PathLike, inputs: tuple[Any, ...], *, device: str = "cpu", warmup: int = 10,
             repeats: int | None = None, min_time_s: float = 1.0, max_repeats: int = 200,
             min_repeats: int = MIN_ADAPTIVE_SAMPLES, threads: int | None = None,
             session_config: dict[str, str] | None = None) -> Timing:
    """Time an ONNX model with onnxruntime (CPU or CUDA execution provider).

    Inputs (numpy arrays or torch tensors) are matched positionally to the
    session inputs and cast to the element type the model declares.  On CUDA
    inputs are copied to the device once and outputs are bound to the device
    (IOBinding), so host<->device copies are not timed, as for torch. How many calls
    are timed: :class:`~slimc.bench.timing.Repeats`.
    """
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        inputs = (inputs,)
    inputs = tuple(x for x in inputs if x is not None)  # absent inputs are not in the file (slimc.onnx)
    check_warmup(warmup)
    policy = Repeats(repeats, min_time_s, min_repeats, max_repeats)
    dev, is_cuda = resolve_device(device)
    n_threads = resolve_threads(threads)
    sess = _session(onnx_path, dev, is_cuda, n_threads, session_config)
    feeds = _feeds(sess, inputs, onnx_path)
    samples = warmed_samples(_runner(sess, feeds, is_cuda, dev.index or 0), policy, warmup)
    float_types = [a.dtype for a in feeds.values() if np.issubdtype(a.dtype, np.floating)]
    return Timing.of(samples, runtime="ort-cuda" if is_cuda else "ort-cpu", device=dev.type,
                     batch=batch_of(list(feeds.values())), channels_last=False, warmup=warmup, threads=n_threads,
                     dtype=str(float_types[0]) if float_types else str(next(iter(feeds.values())).dtype))


def session_options(threads: int, session_config: dict[str, str] | None = None) -> Any:
    """``threads`` intra-op threads, one inter-op, sequential, every graph optimization, quiet."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for key, value in (session_config or {}).items():  # e.g. session.disable_quant_qdq for weight-only int8
        so.add_session_config_entry(key, value)
    return so


def _session(onnx_path: str | os.PathLike, dev: torch.device, is_cuda: bool, threads: int,
             session_config: dict[str, str] | None) -> Any:
    """An InferenceSession of :func:`session_options`, on the CUDA execution provider where
    asked — a fallback to CPU is an error."""
    import onnxruntime as ort

    so = session_options(threads, session_config)
    providers: list[Any] = ["CPUExecutionProvider"]
    if is_cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "device='cuda' requested but this onnxruntime build has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
            )
        cuda = {"device_id": dev.index or 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}
        providers.insert(0, ("CUDAExecutionProvider", cuda))
    sess = ort.InferenceSession(os.fspath(onnx_path), sess_options=so, providers=providers)
    if is_cuda and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(
            f"onnxruntime did not enable CUDAExecutionProvider (got {sess.get_providers()}); "
            "refusing to report a CPU measurement as ort-cuda"
        )
    return sess


def _feeds(sess: Any, inputs: tuple[Any, ...], onnx_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``inputs`` by the session's input names, in the element types the file declares."""
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
    return feeds


def _runner(sess: Any, feeds: dict[str, np.ndarray], is_cuda: bool, device_id: int) -> Callable[[], Any]:
    """The call to time: on CUDA, inputs copied to the device once and outputs bound there
    (IOBinding), so no host<->device copy is timed; on CPU, ``sess.run``."""
    if not is_cuda:
        out_names = [o.name for o in sess.get_outputs()]
        return lambda: sess.run(out_names, feeds)
    import onnxruntime as ort

    binding = sess.io_binding()
    on_device = [ort.OrtValue.ortvalue_from_numpy(arr, "cuda", device_id) for arr in feeds.values()]
    for name, ov in zip(feeds, on_device):
        binding.bind_ortvalue_input(name, ov)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", device_id)
    binding.synchronize_inputs()

    def call(_inputs_alive: list = on_device) -> None:  # the bound device copies live as long as the call
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()  # Run() syncs already; be explicit

    return call
