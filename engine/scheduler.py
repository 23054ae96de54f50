"""Cron expressions and the wake-up timer that drives the dispatcher."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable

from croniter import croniter

from .ids import now_ms


def check_cron(expr: object) -> None:
    if not isinstance(expr, str) or not croniter.is_valid(expr):
        raise ValueError(
            f"cron: {expr!r} is not a valid cron expression "
            "(5 fields, or 6 with seconds last: '*/5 * * * *')"
        )
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron: {expr!r} must have 5 fields (or 6 with a seconds field)")


class Timer:
    """Calls `wake()` at the earliest registered time; one asyncio timer handle at a time."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: int | None = None

    def at(self, when_ms: int) -> None:
        heapq.heappush(self._heap, when_ms)
        if self._armed_at is None or when_ms < self._armed_at:
            self._arm()

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = None
        if not self._heap:
            return
        when = self._heap[0]
        loop = asyncio.get_running_loop()
        self._armed_at = when
        self._handle = loop.call_later(max(0.0, (when - now_ms()) / 1000), self._fire)

    def _fire(self) -> None:
        now = now_ms()
        while self._heap and self._heap[0] <= now:
            heapq.heappop(self._heap)
        self._handle = None
        self._armed_at = None
        self._wake()
        self._arm()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._heap.clear()
