"""Keep exporters quiet: capture their logs, warnings and raw stdout/stderr (fd level),
so a CLI prints clean output; keep the warnings worth showing."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings as _warnings
from typing import Any, Iterator

from slimc.errors import one_line


#: Loggers whose handlers are swapped for a capturing handler during export.
_QUIET_LOGGER_PREFIXES = ("torch", "onnxscript", "onnx_ir", "onnx", "onnxruntime")


#: Warning / log messages that are pure noise for slimc users.
_NOISE_PATTERNS = (
    re.compile(r"torchvision is not installed"),
    re.compile(r"legacy TorchScript-based ONNX export"),
    re.compile(r"treespec", re.IGNORECASE),
    re.compile(r"The feature will be removed"),
)


def _is_noise(msg: str) -> bool:
    return any(p.search(msg) for p in _NOISE_PATTERNS)


class _CaptureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - trivial
        self.records.append(record)


@contextlib.contextmanager
def _redirect_fds(sink) -> Iterator[None]:
    """Redirect OS-level fds 1 and 2 (C++ prints, StreamHandlers) into ``sink``."""
    saved: list[tuple[int, int]] = []
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            except OSError:
                pass
    except Exception:  # pragma: no cover - exotic environments
        pass
    try:
        yield
    finally:
        for fd, dup in reversed(saved):
            try:
                os.dup2(dup, fd)
            finally:
                os.close(dup)


class Quiet:
    """Silence exporter output; collect warnings and WARNING+ log records."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self._handler = _CaptureHandler()
        self._stack = contextlib.ExitStack()
        self._saved_loggers: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
        self._caught: list[_warnings.WarningMessage] = []

    def __enter__(self) -> "Quiet":
        st = self._stack
        try:
            sink = st.enter_context(tempfile.TemporaryFile(mode="w+b"))
            st.enter_context(_redirect_fds(sink))
        except Exception:  # pragma: no cover
            pass
        st.enter_context(contextlib.redirect_stdout(io.StringIO()))
        st.enter_context(contextlib.redirect_stderr(io.StringIO()))
        self._caught = st.enter_context(_warnings.catch_warnings(record=True))
        _warnings.simplefilter("always")
        self._swap_loggers()
        st.callback(self._restore_loggers)
        return self

    def _swap_loggers(self) -> None:
        manager = logging.root.manager
        for name, lg in list(manager.loggerDict.items()):
            if not isinstance(lg, logging.Logger):
                continue
            if not any(name == p or name.startswith(p + ".") for p in _QUIET_LOGGER_PREFIXES):
                continue
            if lg.handlers or name in _QUIET_LOGGER_PREFIXES:
                self._saved_loggers.append((lg, list(lg.handlers), lg.propagate))
                lg.handlers = [self._handler]
                lg.propagate = False
        for name in _QUIET_LOGGER_PREFIXES:  # loggers created later propagate to these
            lg = logging.getLogger(name)
            if not any(lg is s[0] for s in self._saved_loggers):
                self._saved_loggers.append((lg, list(lg.handlers), lg.propagate))
                lg.handlers = [self._handler]
                lg.propagate = False

    def _restore_loggers(self) -> None:
        for lg, handlers, propagate in reversed(self._saved_loggers):
            lg.handlers = handlers
            lg.propagate = propagate
        self._saved_loggers.clear()

    def __exit__(self, *exc: Any) -> bool:
        self._stack.__exit__(*exc)
        seen: set[str] = set()
        for w in self._caught:
            if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
                continue
            msg = one_line(f"{w.category.__name__}: {w.message}")
            if not _is_noise(msg) and msg not in seen:
                seen.add(msg)
                self.warnings.append(msg)
        for rec in self._handler.records:
            try:
                text = rec.getMessage()
            except Exception:  # pragma: no cover
                text = str(rec.msg)
            msg = one_line(f"{rec.name}: {text}")
            if not _is_noise(msg) and msg not in seen:
                seen.add(msg)
                self.warnings.append(msg)
        return False
