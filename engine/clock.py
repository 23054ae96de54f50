"""The engine's clock: wall time by default, a clock the tests drive when they only
need the order of things (a durable sleep of an hour, a throttle window).

Every time the engine decides by (`ids.now_ms`: run_at, windows, deadlines of
flow control and waits) and every wake-up the scheduler arms (`scheduler.Timer`)
go through `current()`. The storage clock is the store's own: SQL and Redis
adapters compare leases and due times with the server's time, so a driven
clock steers them only through what the engine writes; the memory adapter
uses this clock for everything.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Handle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Handle:
        """Call `callback` (on the event loop) once `delay_s` of this clock passed."""


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Handle:
        return asyncio.get_running_loop().call_later(delay_s, callback)


class _ManualHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time that moves only when told (`advance`); timers due by then fire, in order."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = start_ms if start_ms is not None else SystemClock().now_ms()
        self._timers: list[tuple[int, int, _ManualHandle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Handle:
        handle = _ManualHandle()
        when = self._now + max(0, round(delay_s * 1000))
        heapq.heappush(self._timers, (when, next(self._seq), handle, callback))
        return handle

    def advance(self, ms: int) -> None:
        """Move time forward by `ms` and fire the timers that became due."""
        if ms < 0:
            raise ValueError(f"a clock does not go back: advance({ms})")
        self._now += ms
        while self._timers and self._timers[0][0] <= self._now:
            _when, _seq, handle, callback = heapq.heappop(self._timers)
            if not handle.cancelled:
                callback()


SYSTEM = SystemClock()
_current: Clock = SYSTEM
#: The clock in use when it is not the system's: `ids.now_ms`, called many times per
#: step, tests this one global instead of dispatching through `current()`.
driven: Clock | None = None


def current() -> Clock:
    return _current


@contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Run the engine on `clock` inside the block (tests)."""
    global _current, driven
    previous = _current
    _current, driven = clock, (None if clock is SYSTEM else clock)
    try:
        yield clock
    finally:
        _current, driven = previous, (None if previous is SYSTEM else previous)
