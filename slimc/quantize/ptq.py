"""Post-training int8 through onnxruntime's quantizer, on the float file of the (slim) graph.

* ``static`` — ``quantize_static``: QDQ format, per-channel weights (``--per-tensor``: one
  scale), activation/weight types fast on this CPU (:mod:`slimc.quantize.host`), activation
  ranges calibrated on the user's batches (MinMax, Entropy or Percentile). On transformers
  only Conv/MatMul/Gemm are quantized: LayerNorm, Softmax, GELU and the residual adds stay
  float (``all_ops=True`` quantizes every op onnxruntime can).
* ``dynamic`` — ``quantize_dynamic``: int8 MatMul/Gemm weights, activations quantized at run
  time (no calibration), and int8 embedding tables (a quarter of the file for BERT/GPT-2 sizes);
  the default on transformers.

Which layers: a config list selects modules (op_types / op_names / exclude), mapped to the
file's nodes by the exporter's record of the module each node comes from.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np
import torch

from slimc.errors import ConfigError, DataError, describe
from slimc.onnx.quiet import Quiet

CALIBRATIONS = ("minmax", "entropy", "percentile")
#: what static quantizes on a transformer unless all_ops: the matrix products
TRANSFORMER_OPS = ("Conv", "MatMul", "Gemm")
#: dynamic: int8 MatMul/Gemm weights, and int8 embedding tables (Gather, dequantized after the lookup)
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")
#: ops that make a graph a transformer block for the defaults
TRANSFORMER_MARKS = ("Softmax", "LayerNormalization")


class Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds (dicts of numpy arrays)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


def is_transformer(model: Any) -> bool:
    return any(n.op_type in TRANSFORMER_MARKS for n in model.graph.node)


def input_specs(model: Any) -> list[tuple[str, list, int]]:
    """(name, dims — an int or None where dynamic —, ONNX element type) of each real input."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out.append((i.name, dims, t.elem_type))
    return out


def to_feeds(model: Any, batches: Sequence[tuple], where: str) -> list[dict[str, np.ndarray]]:
    """Torch batches → feeds for ``model``, checked: the number of inputs, their dtype, and every
    dim the file fixes. A wrong batch is one line naming it."""
    from onnx import helper

    specs = input_specs(model)
    out = []
    for k, b in enumerate(batches):
        tensors = [x for x in b if x is not None]
        if len(tensors) != len(specs):
            raise DataError(f"{where}: batch {k} gives {len(tensors)} input(s) but the model takes {len(specs)}")
        feed = {}
        for j, ((name, dims, et), x) in enumerate(zip(specs, tensors)):
            if not isinstance(x, torch.Tensor):
                raise DataError(f"{where}: batch {k}, input {j} is a {type(x).__name__}, not a tensor")
            want = helper.tensor_dtype_to_np_dtype(et)
            arr = x.detach().cpu().numpy()
            if arr.dtype != want:
                raise DataError(f"{where}: batch {k}, input {j} is {x.dtype} but the model takes "
                                f"{np.dtype(want).name}: yield tensors like example_inputs")
            shown = "(" + ", ".join("N" if i == 0 and d is None else "*" if d is None else str(d)
                                    for i, d in enumerate(dims)) + ")"
            if arr.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, arr.shape)):
                raise DataError(f"{where}: batch {k}, input {j} has shape {tuple(arr.shape)} but the model takes "
                                f"{shown}: yield batches shaped like example_inputs")
            feed[name] = arr
        out.append(feed)
    return out


def _types(activation: str, weight: str):
    from onnxruntime.quantization import QuantType

    pick = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    return pick[activation], pick[weight]


def _calibration(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration '{name}': use {', '.join(CALIBRATIONS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _run(fn, *args: Any, **kw: Any) -> Any:
    """onnxruntime's quantizer between two temp files, quietly (it logs advice we follow)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix=".slimc-ptq-") as d:
        src, dst = os.path.join(d, "float.onnx"), os.path.join(d, "int8.onnx")
        onnx.save(args[0], src)
        try:
            with Quiet():
                fn(src, dst, *args[1:], **kw)
        except (DataError, ConfigError):
            raise
        except Exception as e:
            raise ConfigError(f"onnxruntime's quantizer failed: {describe(e, 240, innermost=True)}") from e
        return onnx.load(dst)


def static(model: Any, feeds: list[dict], *, per_channel: bool, calibrate: str, activation: str, weight: str,
           op_types: Sequence[str] | None, nodes: Sequence[str] | None, exclude: Sequence[str],
           reduce_range: bool = False) -> Any:
    from onnxruntime.quantization import QuantFormat, quantize_static

    act, wt = _types(activation, weight)
    extra = {"CalibPercentile": 99.999} if calibrate == "percentile" else {}
    return _run(quantize_static, model, Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                reduce_range=reduce_range, activation_type=act, weight_type=wt, calibrate_method=_calibration(calibrate),
                op_types_to_quantize=list(op_types) if op_types else None, nodes_to_quantize=list(nodes or []),
                nodes_to_exclude=list(exclude), extra_options=extra)


def dynamic(model: Any, *, per_channel: bool, weight: str, nodes: Sequence[str] | None,
            exclude: Sequence[str], reduce_range: bool = False) -> Any:
    from onnxruntime.quantization import quantize_dynamic

    _, wt = _types("uint8", weight)
    return _run(quantize_dynamic, model, per_channel=per_channel, reduce_range=reduce_range, weight_type=wt,
                op_types_to_quantize=list(DYNAMIC_OPS),
                nodes_to_quantize=list(nodes or []), nodes_to_exclude=list(exclude))


def op_types_for(model: Any, all_ops: bool) -> tuple[list[str] | None, str | None]:
    """Static's op types (None: every op onnxruntime quantizes) and the reason others stay float."""
    if is_transformer(model) and not all_ops:
        return list(TRANSFORMER_OPS), ("transformer: LayerNorm, Softmax, GELU and residual adds stay float "
                                       "(all_ops / --all-ops quantizes them)")
    return None, None
