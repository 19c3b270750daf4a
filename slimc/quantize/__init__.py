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

from slimc.quantize.api import quantize
from slimc.quantize.methods import METHODS
from slimc.quantize.qat import QAT
from slimc.quantize.result import QuantResult

__all__ = ["QAT", "quantize", "QuantResult", "METHODS"]
