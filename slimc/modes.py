"""Modes switched for a while and put back: train/eval — every module's own flag, not only
the root's (a user may keep a frozen BatchNorm in eval inside a model in training) — and
Python's cyclic garbage collector (timing)."""
from __future__ import annotations

import contextlib
import functools
import gc
from typing import Callable, Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``module`` in eval mode; restore each one's own flag afterwards."""
    training = [m for m in module.modules() if m.training]
    if training:  # (a model already in eval, the usual case, is not touched)
        module.eval()
    try:
        yield module
    finally:
        for m in training:
            m.training = True


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic collector off for a while (as ``timeit`` does), back on if it was: a
    full collection of a process with torch loaded takes 0.1–0.3 s, and must not land inside
    a timed call."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def collector_paused_in(fn: Callable) -> Callable:
    """``fn`` run with the cyclic collector paused (:func:`collector_paused`). For a call that
    makes many short-lived objects (a compile: graphs, module copies, plans): collections
    during it would promote them to the old generations, and the full collections that
    follow (0.1–0.3 s each) come more often. The cycles it leaves are collected after it."""
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        with collector_paused():
            return fn(*args, **kwargs)

    return paused


__all__ = ["collector_paused", "collector_paused_in", "eval_mode"]
