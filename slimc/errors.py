"""User-facing errors. Each carries a one-line message naming the culprit and the fix.

The CLI prints ``str(err)`` and exits 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import re


class SlimcError(Exception):
    """Base class for every error slimc reports to a user."""

    exit_code = 2


class MaskError(SlimcError):
    """A mask names no parameter, has the wrong shape, or is not binary."""


class LoadError(SlimcError):
    """A model or mask file cannot be read, or does not define what slimc needs."""


class WriteError(SlimcError):
    """An output cannot be written (the disk full, no permission); what the command wrote is undone."""


class TraceError(SlimcError):
    """The model cannot be captured as a graph."""


class VerifyError(SlimcError):
    """The slim model does not compute what the masked model computes."""


class PlanError(SlimcError):
    """The masks ask for something that cannot be built (e.g. a layer with no channel left)."""


#: Exit status of ``slimc compile`` when everything but ``slim.onnx`` was written (the torch
#: outputs, masks, the user's class, report.json with the reason under ``onnx.error``):
#: neither success (0) nor a failed compile that wrote nothing (2), nor an internal error (1).
EXIT_NO_ONNX = 3


class OnnxWarning(UserWarning):
    """``CompileResult.save`` wrote every torch output but no ONNX file (the reason is in the
    report, under ``onnx.error``)."""


class ExportError(SlimcError):
    """The model cannot be exported to ONNX, or the export does not match the torch module."""

    def __init__(self, message: str):
        super().__init__(one_line(message, limit=1000))


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: str, limit: int = 300) -> str:
    """``text`` as one line: colour codes dropped, lines joined, white space folded, at most ``limit`` chars."""
    text = _ANSI_RE.sub("", str(text))
    text = re.sub(r"\s+", " ", " ".join(part.strip() for part in text.splitlines() if part.strip())).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def describe(exc: BaseException, limit: int = 300, *, innermost: bool = False) -> str:
    """``Type: first line of the message`` of ``exc`` (or of its innermost ``__cause__``:
    exporters wrap the real error in verbose layers), at most ``limit`` chars."""
    root = exc
    if innermost:
        seen = {id(root)}
        while root.__cause__ is not None and id(root.__cause__) not in seen:
            root = root.__cause__
            seen.add(id(root))
    line = _first_line(str(root), limit)
    if not line and root is not exc:
        line = _first_line(str(exc), limit)
    name = type(root).__name__
    return f"{name}: {line}" if line else name


def with_cause(exc: BaseException, limit: int = 300) -> str:
    """:func:`describe` of ``exc``, and of the error that caused it where that says something
    else (``ModuleNotFoundError: Could not import module 'Qwen2ForCausalLM'`` hides the library
    that failed to import behind it): the innermost ``__cause__``, else ``__context__``."""
    root, seen = exc, {id(exc)}
    while True:
        nxt = root.__cause__ if root.__cause__ is not None else (
            None if root.__suppress_context__ else root.__context__)
        if nxt is None or id(nxt) in seen:
            break
        root = nxt
        seen.add(id(root))
    outer = describe(exc, limit)
    if root is exc:
        return outer
    inner = describe(root, limit)
    return outer if inner in outer else f"{outer} (caused by {inner})"


def _first_line(text: str, limit: int) -> str:
    for line in _ANSI_RE.sub("", text).splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."
    return ""


class ConfigError(SlimcError, ValueError):
    """A pruner option or config list is wrong (unknown criterion or key, a name matching no module)."""


class BudgetError(ConfigError):
    """A budget the model cannot reach: every prunable layer at its limit still costs more."""


class DataError(SlimcError):
    """A data-driven pruner or the sensitivity analysis lacks the data, loss or evaluation it needs."""


class DamagedOutput(LoadError):
    """A file of a ``slimc compile`` output folder is missing or does not read: the folder was
    edited or cut short after the compile wrote it."""

    def __init__(self, path, cause: BaseException | None = None):
        what = f"cannot read '{path}' ({describe(cause, 160)})" if cause is not None else f"'{path}' is missing"
        super().__init__(f"{what}: the `slimc compile` output was edited or cut short; compile again")
