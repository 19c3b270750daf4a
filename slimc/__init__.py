"""slimc — a graph-rewriting compiler that makes pruned PyTorch models physically smaller.

    res = slimc.compile(model, masks, example_inputs)
    res.module, res.model, res.masks, res.report, res.save("out/")
    slimc.load("out/")
"""
from __future__ import annotations

from slimc.errors import ConfigError, DataError, LoadError, MaskError, PlanError, SlimcError, TraceError, VerifyError
from slimc.compiler import CompileResult, compile
from slimc.masks import MaskSet, load_masks
from slimc.saved import load

__version__ = "0.1.0"
__all__ = [
    "compile", "CompileResult", "load", "MaskSet", "load_masks",
    "SlimcError", "MaskError", "LoadError", "TraceError", "VerifyError", "PlanError", "ConfigError", "DataError",
]
