"""A paused schedule lets its ticks pass in every process, and resuming starts no catch-up burst."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dq import Queue, create_job
from dq.engine.cron import parse_cron
from dq.engine.scheduler import next_fires, schedule_paused, set_schedule_paused

from .test_lifecycle import until


async def test_paused_schedule_starts_nothing_until_resumed(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="every_second", cron="* * * * * *")
    async def every_second() -> None:
        return None

    queue = make_queue([every_second])
    async with queue:
        await set_schedule_paused(queue.storage, "every_second", True)
        assert await schedule_paused(queue.storage, "every_second")
        await asyncio.sleep(2.5)  # two ticks or more pass while paused
        assert await queue.jobs.get_all(job_name="every_second") == []
        await set_schedule_paused(queue.storage, "every_second", False)
        await until(lambda: _count(queue))
        await asyncio.sleep(0.3)
        assert len(await queue.jobs.get_all(job_name="every_second")) == 1  # no burst for the paused ticks


async def _count(queue: Queue) -> int:
    return len(await queue.jobs.get_all(job_name="every_second"))


def test_next_fires_are_the_schedules_next_ticks() -> None:
    # 2026-01-01 00:00:30 UTC; every 15 minutes
    start = 1767225630000
    assert next_fires(parse_cron("*/15 * * * *"), start, 3) == [start - 30_000 + 15 * 60_000 * i for i in (1, 2, 3)]
