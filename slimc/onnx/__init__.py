"""ONNX stage of slimc: export a slim module to one self-contained ``.onnx`` file
(:mod:`~slimc.onnx.export`), check it with ``onnx.checker`` and onnxruntime against the
torch module (:mod:`~slimc.onnx.check`), and read its statistics (:mod:`~slimc.onnx.stats`).

    export_onnx(module, example_inputs, path, dynamic_dims=None, ...) -> OnnxCheck
    check_onnx(path, module, example_inputs, ...)                    -> OnnxCheck
    onnx_stats(path)                                                 -> dict
    ExportError                                                         (one-line message)
"""
from slimc.errors import ExportError
from slimc.onnx.check import OnnxCheck, check_onnx
from slimc.onnx.export import export_onnx
from slimc.onnx.stats import SELECTION_OP_TYPES, onnx_stats

__all__ = ["ExportError", "OnnxCheck", "export_onnx", "check_onnx", "onnx_stats", "SELECTION_OP_TYPES"]
