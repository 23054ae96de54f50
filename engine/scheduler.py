"""Cron ticks and the wake-up timer that drives the dispatcher."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import clock
from .cron import CronSchedule
from .event_schema import EventKind, Trigger
from .ids import now_ms
from .storage.base import Batch, EventRecord, Storage

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
        self.jobs = [j for j in runtime.queue.definitions.values() if j.cron is not None]

    async def run(self) -> None:
        if not self.jobs:
            return
        await asyncio.gather(*(self._job_loop(job) for job in self.jobs))

    async def _job_loop(self, job: Job) -> None:
        schedule = job.cron
        assert schedule is not None
        while True:
            try:
                delay = await self._tick(job, schedule)
            except Exception as exc:
                self.runtime.queue.logger.warning("dq: cron of job %r failed: %s", job.name, exc)
                delay = self.runtime.poll_s
            await asyncio.sleep(delay)

    async def _tick(self, job: Job, schedule: CronSchedule) -> float:
        """Start the due tick if any; returns seconds until the next one."""
        runtime = self.runtime
        key = f"cron:{job.name}"
        state = (await runtime.storage.get_state([key])).get(key)
        now = now_ms()
        latest_due = schedule.prev(now)
        if state is None:
            # First sight of this job: the schedule starts now, nothing to catch up.
            await runtime.committer.commit(Batch(state={key: {"last": latest_due}}, expect={key: None}))
        elif int(state["last"]) < latest_due and await schedule_paused(runtime.storage, job.name):
            # A paused schedule lets its ticks pass: resuming it starts no catch-up run.
            await runtime.committer.commit(Batch(state={key: {"last": latest_due}}, expect={key: state}))
        elif int(state["last"]) < latest_due:
            rec = runtime.new_record(job, None)
            rec.wait_reason = None
            data: Trigger = {"input": None, "parent_id": None, "cron": schedule.describe(), "tick": latest_due}
            batch = Batch(
                executions=[rec],
                events=[EventRecord(rec.id, job.name, EventKind.TRIGGER, dict(data), now)],
                state={key: {"last": latest_due}},
                expect={key: state},
            )
            result = await runtime.committer.commit(batch)
            if not result.conflict:
                runtime.kick()
                if runtime.hooks.wanted(job, "trigger"):
                    await runtime.hooks.fire(job, "trigger", rec.id, {"input": None})
        following = schedule.next(now)
        return max(0.0, (following - now_ms()) / 1000) + 0.001


def next_fires(schedule: CronSchedule, after_ms: int, n: int = 5) -> list[int]:
    """The next `n` ticks of `schedule` after `after_ms` (epoch ms), as `Cron` computes them."""
    out: list[int] = []
    for _ in range(n):
        after_ms = schedule.next(after_ms)
        out.append(after_ms)
    return out


#: State key of a paused schedule: its ticks pass without starting the job.
def schedule_paused_key(job_name: str) -> str:
    return f"cron_paused:{job_name}"


async def schedule_paused(storage: Storage, job_name: str) -> bool:
    key = schedule_paused_key(job_name)
    return bool((await storage.get_state([key])).get(key))


async def set_schedule_paused(storage: Storage, job_name: str, paused: bool) -> None:
    """Pause (or resume) a cron job's schedule in every process sharing `storage`;
    the job itself stays usable (triggers, `start`)."""
    await storage.commit(Batch(state={schedule_paused_key(job_name): True if paused else None}))
