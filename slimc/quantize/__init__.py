"""Quantization of the (slim) model: NNI's quantizers in torch, onnxruntime's for int8 files.

    from slimc.quantize import QAT, quantize
    res = quantize(compile_result, method="static", data=batches)   # post-training, calibrated
    res.save("out/"); res.report; res(x)                             # int8 ONNX, report, onnxruntime
    q = QAT(model, example_inputs, method="qat", bits=8)            # train q.model, then
    q.export("out/")                                                 # int8 with the trained grids

Methods (:mod:`slimc.quantize.methods`): static, dynamic (onnxruntime's quantizer), weight
(NNI's Naive), qat, dorefa, bnn (torch, exported with their grids). Every quantize checks its
contract (:mod:`slimc.quantize.check`).
"""
from __future__ import annotations

from typing import Any

__all__ = ["QAT", "quantize", "QuantResult", "METHODS"]

_WHERE = {"QAT": "slimc.quantize.qat", "quantize": "slimc.quantize.api", "QuantResult": "slimc.quantize.result",
          "METHODS": "slimc.quantize.methods"}


def __getattr__(name: str) -> Any:
    """Imported on first use: the command line reads its options from this package without torch."""
    if name not in _WHERE:
        raise AttributeError(f"module 'slimc.quantize' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
