"""User-facing errors. Each carries a one-line message naming the culprit and the fix.

The CLI prints ``str(err)`` and exits 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations


class SlimcError(Exception):
    """Base class for every error slimc reports to a user."""

    exit_code = 2


class MaskError(SlimcError):
    """A mask names no parameter, has the wrong shape, or is not binary."""


class LoadError(SlimcError):
    """A model or mask file cannot be read, or does not define what slimc needs."""


class TraceError(SlimcError):
    """The model cannot be captured as a graph."""


class VerifyError(SlimcError):
    """The slim model does not compute what the masked model computes."""


class PlanError(SlimcError):
    """The masks ask for something that cannot be built (e.g. a layer with no channel left)."""


class ConfigError(SlimcError, ValueError):
    """A pruner option or config list is wrong (unknown criterion or key, a name matching no module)."""


class DataError(SlimcError):
    """A data-driven pruner or the sensitivity analysis lacks the data, loss or evaluation it needs."""
