"""Other processes on the CPUs: how busy they keep them, waiting until they are quiet, and
measuring again while they interfere (a 2-thread timing on a 2-core machine is worthless
while another process holds a core)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

__all__ = ["CONTENDED_BUSY", "ContentionMeter", "Attempt", "cpu_busy_fraction", "wait_for_quiet_cpu",
           "measure_quietly"]

#: other processes using more than this fraction of all CPUs during a CPU timing.
CONTENDED_BUSY = 0.10

T = TypeVar("T")


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def cpu_busy_fraction(interval_s: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``interval_s`` (from /proc/stat; None if unknown).

    Call it while this process is idle: on a 2-core machine, 0.5 means another
    process keeps one core busy, which makes multi-threaded CPU timings worthless.
    """
    a = _cpu_times()
    time.sleep(interval_s)
    b = _cpu_times()
    if a is None or b is None or b[0] <= a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


class ContentionMeter:
    """CPU time used by *other* processes while a measurement runs.

    ``other_busy`` = (busy jiffies of all CPUs − this process's CPU time) / all
    jiffies over the window, from /proc/stat and ``os.times()``; None where
    /proc/stat is unreadable.  0.5 on a 2-core machine: another process held a
    whole core, and a 2-thread timing of this process is not trustworthy.
    """

    def __init__(self) -> None:
        self.other_busy: float | None = None

    def __enter__(self) -> "ContentionMeter":
        self._a = _cpu_times()
        t = os.times()
        self._own = t.user + t.system
        return self

    def __exit__(self, *exc: Any) -> None:
        b = _cpu_times()
        t = os.times()
        own_s = t.user + t.system - self._own
        if self._a is None or b is None or b[0] <= self._a[0]:
            return
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        total = b[0] - self._a[0]
        busy = total - (b[1] - self._a[1])
        other = (busy - own_s * hz) / total
        self.other_busy = round(min(1.0, max(0.0, other)), 3)


def wait_for_quiet_cpu(max_wait_s: float = 120.0, busy_below: float = 0.15, interval_s: float = 2.0,
                       log: Callable[[str], None] | None = None) -> float | None:
    """Wait (up to ``max_wait_s``) until other processes leave the CPUs idle.

    Returns the last busy fraction measured (None when /proc/stat is unreadable).
    """
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy_fraction(interval_s)
    while busy is not None and busy >= busy_below and time.monotonic() < deadline:
        if log:
            log(f"waiting for a quiet CPU: {busy:.0%} busy by other processes")
        busy = cpu_busy_fraction(interval_s)
    return busy


@dataclass
class Attempt(Generic[T]):
    """One run of a measurement and the share of the CPUs other processes used meanwhile."""

    result: T
    other_busy: float | None


def measure_quietly(measure: Callable[[], T], *, retries: int, wait_idle_s: float, label: str = "",
                    log: Callable[[str], None] | None = None) -> list[Attempt[T]]:
    """Run ``measure()`` under a :class:`ContentionMeter`; while other processes used more
    than ``CONTENDED_BUSY`` of the CPUs, wait (up to ``wait_idle_s``) for a quiet CPU and
    run it again, at most ``retries`` more times. Returns every attempt, in order: the
    caller keeps the least contended one, or the minimum over all of them."""
    say = log or (lambda _m: None)
    attempts: list[Attempt[T]] = []
    for n in range(1 + max(0, int(retries))):
        if n:
            say(f"{label}: other processes used {attempts[-1].other_busy:.0%} of the CPUs; measuring again")
            if wait_idle_s > 0:
                wait_for_quiet_cpu(wait_idle_s, log=say)
        with ContentionMeter() as cm:
            result = measure()
        attempts.append(Attempt(result, cm.other_busy))
        if (cm.other_busy or 0.0) <= CONTENDED_BUSY:
            break
    return attempts
