"""Progress of long commands: a rich bar on a terminal, plain lines when piped.

When stdout is not a terminal (``| tee log``, a CI log), the command line (:func:`plain_lines`,
switched on by ``slimc``) prints plain lines on stdout instead of silence: one when a loop
starts, then at most one every :data:`EVERY_S` seconds, and one when it ends (stderr stays
for errors: one line). Otherwise a bar is drawn on stderr where that is a terminal (gone
when done). The Python API prints no lines.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator

EVERY_S = 10.0  # at most one plain line per loop this often (a first and a last line always)
_PLAIN = {"on": False}


def plain_lines(on: bool = True) -> None:
    """Print plain progress lines when stdout is not a terminal (the CLI turns this on)."""
    _PLAIN["on"] = on


def _plain() -> bool:
    from rich.console import Console

    return _PLAIN["on"] and not Console().is_terminal


def _line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def say(text: str) -> None:
    """One status line of a long command (an automatic pruner's step), where lines are printed."""
    if _plain():
        _line(text)


def _elapsed(t0: float) -> str:
    s = time.perf_counter() - t0
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def progress(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """Iterate ``items`` under a progress bar (terminal) or plain lines (piped, CLI)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if _plain():
        yield from _lines(items, description, total)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        for x in items:
            yield x
            bar.advance(task)


def _lines(items: Iterable[Any], description: str, total: int | None) -> Iterator:
    of = f"/{total}" if total is not None else ""
    t0 = last = time.perf_counter()
    _line(f"{description}: 0{of}")
    done = 0
    for x in items:
        yield x
        done += 1
        now = time.perf_counter()
        if now - last >= EVERY_S and done != total:
            _line(f"{description}: {done}{of} ({_elapsed(t0)})")
            last = now
    _line(f"{description}: {done}{of} done ({_elapsed(t0)})")


__all__ = ["progress", "plain_lines", "say", "EVERY_S"]
