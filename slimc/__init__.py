"""slimc — a graph-rewriting compiler that makes pruned PyTorch models physically smaller.

    res = slimc.compile(model, masks, example_inputs)
    res.module, res.masks, res.report, res.save("out/")
"""
from __future__ import annotations

import sys as _sys

from slimc.errors import ConfigError, DataError, LoadError, MaskError, PlanError, SlimcError, TraceError, VerifyError

# passes/ and shape_rules/ are top-level folders installed as slimc.passes / slimc.shape_rules;
# when running from a source tree without installing, map them here.
if "slimc.shape_rules" not in _sys.modules:
    import os as _os

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    for _sub in ("passes", "shape_rules"):
        _here = _os.path.join(_os.path.dirname(__file__), _sub)
        if not _os.path.isdir(_here) and _os.path.isdir(_os.path.join(_root, _sub)):
            __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
            break

from slimc.compiler import CompileResult, compile  # noqa: E402
from slimc.masks import MaskSet, load_masks  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "compile", "CompileResult", "MaskSet", "load_masks",
    "SlimcError", "MaskError", "LoadError", "TraceError", "VerifyError", "PlanError", "ConfigError", "DataError",
]
