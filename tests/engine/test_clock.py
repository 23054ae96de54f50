"""A clock the tests drive: durable sleeps and flow-control windows ordered by the
engine's clock, not by waiting for wall time.

On the memory adapter, whose storage clock is the engine's: SQL and Redis compare
due times with their server's clock (engine/clock.py), which no test can move.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dq import Execution, create_job, create_memory_storage, create_queue, sleep
from dq.engine import clock
from dq.engine.clock import ManualClock

from .conftest import FAST

HOUR_MS = 3_600_000


async def _status_becomes(ex: Execution, status: str) -> None:
    while True:  # bounded by the caller's wait_for: a hang guard, not a timing assertion
        await ex.refresh()
        if ex.status == status:
            return
        await asyncio.sleep(0.01)


def test_a_manual_clock_fires_timers_in_order_and_never_goes_back() -> None:
    manual = ManualClock(start_ms=1_000)
    fired: list[str] = []
    manual.call_later(2.0, lambda: fired.append("b"))
    manual.call_later(1.0, lambda: fired.append("a"))
    manual.call_later(5.0, lambda: fired.append("late")).cancel()
    manual.advance(1_500)
    assert fired == ["a"] and manual.now_ms() == 2_500
    manual.advance(10_000)
    assert fired == ["a", "b"]
    with pytest.raises(ValueError, match="does not go back"):
        manual.advance(-1)
    with clock.use(manual):
        assert clock.current() is manual
    assert clock.current() is clock.SYSTEM and clock.driven is None


async def test_an_hour_long_durable_sleep_wakes_when_the_clock_says_so() -> None:
    @create_job(name="nap")
    async def nap(data: Any) -> str:
        await sleep("1 hour")
        return "rested"

    with clock.use(ManualClock()) as manual:
        assert isinstance(manual, ManualClock)
        queue = create_queue(jobs=[nap], storage=create_memory_storage(), **FAST)
        async with queue:
            ex = await queue.jobs.nap.start(None)
            await asyncio.wait_for(_status_becomes(ex, "waiting"), 10)
            assert ex.record.run_at == ex.record.created_at + HOUR_MS
            manual.advance(HOUR_MS - 1)
            await asyncio.sleep(0.2)  # a few dispatcher turns: still not due
            await ex.refresh()
            assert ex.status == "waiting"
            manual.advance(1)
            assert await asyncio.wait_for(ex.result(), 10) == "rested"


async def test_a_throttle_window_opens_when_the_clock_passes_it() -> None:
    @create_job(name="hourly", throttle={"duration": "1 hour", "mode": "queue"})
    async def hourly(data: int) -> int:
        return data

    with clock.use(ManualClock()) as manual:
        assert isinstance(manual, ManualClock)
        queue = create_queue(jobs=[hourly], storage=create_memory_storage(), **FAST)
        async with queue:
            first = await queue.jobs.hourly.start(1)
            assert await asyncio.wait_for(first.result(), 10) == 1
            second = await queue.jobs.hourly.start(2)
            await asyncio.sleep(0.2)
            await second.refresh()
            assert second.status == "pending" and (second.record.wait_reason or "").startswith("throttled")
            manual.advance(HOUR_MS)
            assert await asyncio.wait_for(second.result(), 10) == 2
