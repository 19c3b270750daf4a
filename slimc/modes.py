"""Train/eval mode, switched for a while and put back: every module's own flag, not only
the root's (a user may keep a frozen BatchNorm in eval inside a model in training)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``module`` in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


__all__ = ["eval_mode"]
