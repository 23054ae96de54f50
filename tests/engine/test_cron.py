"""Cron: 6 fields put seconds first (node-cron/Quartz), 5 fields as ever, IANA time
zones, and malformed schedules refused when the job is defined."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest

from dq import Queue, create_job

from .test_lifecycle import until


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _schedule(cron: Any) -> Any:
    job = create_job(lambda: None, name="c", cron=cron)
    assert job.cron is not None
    return job.cron


def test_six_fields_put_seconds_first() -> None:
    every_five_minutes = _schedule("0 */5 * * * *")
    assert _iso(every_five_minutes.next(_ms("2026-03-01 12:00:00"))) == "2026-03-01 12:05:00"
    assert _iso(every_five_minutes.prev(_ms("2026-03-01 12:07:30"))) == "2026-03-01 12:05:00"
    at_second_30 = _schedule("30 * * * * *")
    assert _iso(at_second_30.next(_ms("2026-03-01 12:00:00"))) == "2026-03-01 12:00:30"
    assert _iso(at_second_30.next(_ms("2026-03-01 12:00:30"))) == "2026-03-01 12:01:30"


def test_five_fields_are_minute_first() -> None:
    schedule = _schedule("*/15 9 * * *")
    assert _iso(schedule.next(_ms("2026-03-01 09:00:00"))) == "2026-03-01 09:15:00"
    assert _iso(schedule.next(_ms("2026-03-01 09:45:00"))) == "2026-03-02 09:00:00"


def test_time_zone_follows_daylight_saving() -> None:
    paris = _schedule({"expr": "0 9 * * *", "tz": "Europe/Paris"})
    assert _iso(paris.next(_ms("2026-01-15 00:00:00"))) == "2026-01-15 08:00:00"  # UTC+1
    assert _iso(paris.next(_ms("2026-07-15 00:00:00"))) == "2026-07-15 07:00:00"  # UTC+2
    utc = _schedule({"expr": "0 9 * * *"})
    assert _iso(utc.next(_ms("2026-07-15 00:00:00"))) == "2026-07-15 09:00:00"
    seconds = _schedule({"expr": "15 0 9 * * *", "tz": "America/New_York"})
    assert _iso(seconds.next(_ms("2026-01-15 00:00:00"))) == "2026-01-15 14:00:15"  # UTC-5


@pytest.mark.parametrize(
    ("cron", "named"),
    [
        ("* * * *", "4 fields"),
        ("* * * * * * *", "7 fields"),
        ("61 * * * *", "not a valid cron expression"),
        ("0 61 * * * *", "not a valid cron expression"),
        ("every minute", "fields"),
        (5, "expected"),
        ({"expr": "* * * * *", "tz": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
        ({"expr": "* * * * *", "zone": "UTC"}, "unknown keys \\['zone'\\]"),
        ({"tz": "UTC"}, "'expr' is required"),
    ],
)
def test_malformed_schedules_are_refused_when_defined(cron: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        create_job(lambda: None, name="c", cron=cron)


async def test_seconds_first_schedule_ticks_on_its_seconds(make_queue: Callable[..., Queue]) -> None:
    """'*/2 * * * * *' is every two seconds (with seconds last it was: every second of
    even minutes)."""

    @create_job(name="every_two_seconds", cron="*/2 * * * * *")
    async def every_two_seconds() -> None:
        return None

    queue = make_queue([every_two_seconds])
    async with queue:
        await until(lambda: _count(queue, 3), timeout=15)
        executions = await queue.jobs.get_all(job_name="every_two_seconds", order="oldest")
        ticks = []
        for ex in executions:
            trigger = next(e for e in await ex.events() if e.type == "trigger")
            ticks.append(trigger.data["tick"])
    assert all(t % 2000 == 0 for t in ticks), ticks
    # A tick missed under load is coalesced into the next one, never shifted.
    assert all((b - a) > 0 and (b - a) % 2000 == 0 for a, b in pairwise(ticks)), ticks


async def _count(queue: Queue, n: int) -> bool:
    return len(await queue.jobs.get_all(job_name="every_two_seconds")) >= n
