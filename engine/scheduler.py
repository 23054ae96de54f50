"""Cron expressions and the wake-up timer that drives the dispatcher."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from croniter import croniter

from . import clock
from .ids import now_ms
from .storage.base import Batch, EventRecord

if TYPE_CHECKING:
    from .job import Job
    from .runtime import Runtime

log = logging.getLogger("dq")


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` at most `timeout_s`; True if it was set. Unlike
    `asyncio.wait_for` on Python 3.11 (cpython gh-86296), a cancel is never swallowed."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
            return True
    except TimeoutError:
        return False


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
        self._handle: clock.Handle | None = None
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
        self._armed_at = when
        self._handle = clock.current().call_later(max(0.0, (when - now_ms()) / 1000), self._fire)

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


class Cron:
    """Starts cron jobs on schedule; with several processes, each tick starts once.

    The last started tick of each job lives in the storage state (`cron:<job>`);
    starting a tick moves it forward and inserts the execution in one
    compare-and-set transaction. Ticks missed while everything was down run
    once on start (the latest of them), not as a burst. A job seen for the
    first time starts at its next tick.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.jobs = [j for j in runtime.queue.definitions.values() if j.options.cron]

    async def run(self) -> None:
        if not self.jobs:
            return
        await asyncio.gather(*(self._job_loop(job) for job in self.jobs))

    async def _job_loop(self, job: Job) -> None:
        expr = str(job.options.cron)
        while True:
            try:
                delay = await self._tick(job, expr)
            except Exception as exc:
                self.runtime.queue.logger.warning("dq: cron of job %r failed: %s", job.name, exc)
                delay = self.runtime.poll_s
            await asyncio.sleep(delay)

    async def _tick(self, job: Job, expr: str) -> float:
        """Start the due tick if any; returns seconds until the next one."""
        runtime = self.runtime
        key = f"cron:{job.name}"
        state = (await runtime.storage.get_state([key])).get(key)
        now = now_ms()
        now_dt = datetime.fromtimestamp(now / 1000, UTC)
        latest_due = _ms(croniter(expr, now_dt).get_prev(datetime))
        if state is None:
            # First sight of this job: the schedule starts now, nothing to catch up.
            await runtime.committer.commit(Batch(state={key: {"last": latest_due}}, expect={key: None}))
        elif int(state["last"]) < latest_due:
            rec = runtime.new_record(job, None)
            rec.wait_reason = None
            batch = Batch(
                executions=[rec],
                events=[EventRecord(rec.id, job.name, "trigger", {"input": None, "parent_id": None, "cron": expr, "tick": latest_due}, now)],
                state={key: {"last": latest_due}},
                expect={key: state},
            )
            result = await runtime.committer.commit(batch)
            if not result.conflict:
                runtime.kick()
                if runtime.hooks.wanted(job, "trigger"):
                    await runtime.hooks.fire(job, "trigger", rec.id, {"input": None})
        following = _ms(croniter(expr, now_dt).get_next(datetime))
        return max(0.0, (following - now_ms()) / 1000) + 0.001


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)
