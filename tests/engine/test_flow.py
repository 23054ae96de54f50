"""Flow control: concurrency (slots, per key, rates), step concurrency, throttle, debounce, priority."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from dq import CancelledError, Queue, create_job, run
from dq.engine.context import current

from .test_lifecycle import status_is, until


class Gauge:
    """Counts how many run at once, and the most ever seen."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.starts: list[float] = []

    async def hold(self, seconds: float = 0.05) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.starts.append(time.monotonic())
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


async def test_job_concurrency_limit(make_queue: Callable[..., Queue]) -> None:
    gauge = Gauge()

    @create_job(name="limited", concurrency=2)
    async def limited(data: int) -> int:
        await run("work", gauge.hold)
        return data

    queue = make_queue([limited])
    async with queue:
        executions = await queue.jobs.limited.start_many(range(8))
        assert [await e.result() for e in executions] == list(range(8))
        waits = [e for e in await queue.storage.read_events(0, limit=10_000) if e.type == "queued"]
    assert gauge.peak == 2
    assert waits and "concurrency 2 for limited" in waits[0].data["reason"]


async def test_per_key_concurrency_from_input(make_queue: Callable[..., Queue]) -> None:
    gauges = {"a": Gauge(), "b": Gauge()}

    @create_job(name="per_user", concurrency=lambda data: {"id": data["user"], "limit": 1})
    async def per_user(data: dict[str, str]) -> None:
        await run("work", lambda: gauges[data["user"]].hold(0.05))

    queue = make_queue([per_user])
    async with queue:
        executions = await queue.jobs.per_user.start_many([{"user": u} for u in "ababab"])
        for e in executions:
            await e.result()
    assert gauges["a"].peak == 1 and gauges["b"].peak == 1
    assert len(gauges["a"].starts) == 3


async def test_rolling_rate_limit(make_queue: Callable[..., Queue]) -> None:
    # A handler starts a commit round trip (or a few, under contention) after
    # its admission, so the window is checked on the admission times the limiter
    # stored (read back by each handler: its own start is in the window then).
    gauge = Gauge()
    admitted: Counter[int] = Counter()

    @create_job(name="rated", concurrency="2 per 400ms")
    async def rated(data: int) -> None:
        gauge.starts.append(time.monotonic())
        for value in (await queue.storage.list_state("rate:")).values():
            admitted.update(Counter(t for t, _holder in value["starts"]) - admitted)  # keeps the most seen

    queue = make_queue([rated])
    async with queue:
        for e in await queue.jobs.rated.start_many(range(5)):
            await e.result()
    assert len(gauge.starts) == 5
    times = sorted(admitted.elements())
    assert len(times) == 5, times
    for i in range(2, len(times)):
        assert times[i] - times[i - 2] >= 400, times


async def test_step_concurrency_across_executions(make_queue: Callable[..., Queue]) -> None:
    gauge = Gauge()

    @create_job(name="writer")
    async def writer(data: int) -> None:
        await run("db-write", gauge.hold, concurrency=1)

    queue = make_queue([writer])
    async with queue:
        for e in await queue.jobs.writer.start_many(range(5)):
            await e.result()
    assert gauge.peak == 1 and len(gauge.starts) == 5


async def test_throttle_queue_and_discard(make_queue: Callable[..., Queue]) -> None:
    # Checked on the admission times the throttle stored (see test_rolling_rate_limit).
    admitted: dict[str, int] = {}

    @create_job(name="queued", throttle={"duration": "300ms", "mode": "queue"})
    async def queued(data: int) -> None:
        me = current().id
        for value in (await queue.storage.list_state("throttle:")).values():
            admitted.update((holder, at) for at, holder in value["starts"] if holder == me)

    @create_job(name="dropped", throttle="1 hour")  # discard is the default mode
    async def dropped(data: int) -> int:
        return data

    queue = make_queue([queued, dropped])
    async with queue:
        for e in await queue.jobs.queued.start_many(range(3)):
            await e.result()
        first = await queue.jobs.dropped.start(1)
        assert await first.result() == 1
        second = await queue.jobs.dropped.start(2)
        with pytest.raises(CancelledError):
            await second.result()
        await second.refresh()
    times = sorted(admitted.values())
    assert len(times) == 3, admitted
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 300 for g in gaps), gaps
    assert second.status == "cancelled"


async def test_debounce_trailing_runs_once_with_the_latest_input(make_queue: Callable[..., Queue]) -> None:
    """Each trigger is its own execution; it cancels the pending one it supersedes
    (reason `debounced`), and only the last input runs."""
    seen: list[int] = []
    cancelled: list[tuple[str, str | None]] = []

    # Windows of seconds: five sequential starts on a loaded machine's PostgreSQL can
    # take longer than a fraction of one, and the test is about order, not timing.
    @create_job(name="save", debounce="2s", on_cancel=lambda _d, reason: cancelled.append((_d, reason)))
    async def save(data: int) -> int:
        seen.append(data)
        return data

    queue = make_queue([save])
    async with queue:
        executions = [await queue.jobs.save.start(i) for i in range(5)]
        assert len({e.id for e in executions}) == 5
        assert [e.input for e in executions] == [0, 1, 2, 3, 4]
        assert await executions[-1].result() == 4
        for e in executions[:-1]:
            with pytest.raises(CancelledError) as info:
                await e.result()
            assert info.value.reason == "debounced"
            await e.refresh()
            assert e.status == "cancelled"
            cancel = [ev for ev in await e.events() if ev.type == "cancel"]
            assert [ev.data["reason"] for ev in cancel] == ["debounced"]
    assert seen == [4]
    assert sorted(cancelled) == [(i, "debounced") for i in range(4)]


async def test_throttle_discards_by_default(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="once", throttle="1 hour")
    async def once(data: int) -> int:
        return data

    queue = make_queue([once])
    async with queue:
        assert await queue.jobs.once.run(1) == 1
        late = await queue.jobs.once.start(2)
        with pytest.raises(CancelledError) as info:
            await late.result()
        assert info.value.reason is not None and info.value.reason.startswith("discarded by throttle")


async def test_debounce_timeout_bounds_a_stream(make_queue: Callable[..., Queue]) -> None:
    seen: list[int] = []

    @create_job(name="stream", debounce={"duration": "150ms", "timeout": "400ms"})
    async def stream(data: int) -> None:
        seen.append(data)

    queue = make_queue([stream])
    async with queue:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 1.0:  # triggers every 50 ms: never quiet for 150 ms
            await queue.jobs.stream.start(i)
            i += 1
            await asyncio.sleep(0.05)
        await until(lambda: len(seen) >= 2, timeout=5)
    assert seen[0] < i - 1  # the stream ran before it ended, thanks to the timeout


async def test_debounce_leading(make_queue: Callable[..., Queue]) -> None:
    """The first trigger runs at once; those within the window behave as trailing
    (the last one runs when the window closes); after a quiet window, leading again."""
    seen: list[int] = []

    @create_job(name="lead", debounce={"duration": "2s", "mode": "leading"})
    async def lead(data: int) -> None:
        seen.append(data)

    queue = make_queue([lead])
    async with queue:
        first = await queue.jobs.lead.start(0)
        await first.result()
        others = [await queue.jobs.lead.start(i) for i in (1, 2, 3)]
        assert len({first.id, *(o.id for o in others)}) == 4
        await others[-1].result()
        for o in others[:-1]:
            await o.refresh()
            assert o.status == "cancelled"
        assert seen == [0, 3]
        await asyncio.sleep(2.2)
        later = await queue.jobs.lead.start(9)
        await later.result()
        assert seen == [0, 3, 9]
        # The leading start was due at once, the trailing one when the window closed.
        for ex, held in ((first, False), (others[-1], True), (later, False)):
            rec = await queue.storage.get_execution(ex.id)
            assert rec is not None and (rec.run_at > rec.created_at) is held


async def test_priority_when_slots_are_scarce(make_queue: Callable[..., Queue]) -> None:
    order: list[str] = []
    gate = asyncio.Event()

    @create_job(name="blocker", concurrency=1)
    async def blocker(data: Any) -> None:
        await run("block", gate.wait)

    @create_job(name="low", priority=0, concurrency=1)
    async def low(data: Any) -> None:
        order.append("low")

    @create_job(name="high", priority=10, concurrency=1)
    async def high(data: Any) -> None:
        order.append("high")

    queue = make_queue([blocker, low, high], concurrency=1)
    async with queue:
        b = await queue.jobs.blocker.start(None)
        await until(lambda: status_is(b, "running"))
        lows = [await queue.jobs.low.start(i) for i in range(2)]
        highs = [await queue.jobs.high.start(i) for i in range(2)]
        gate.set()
        for e in [*lows, *highs]:
            await e.result()
    assert order == ["high", "high", "low", "low"]
