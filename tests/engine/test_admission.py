"""Woken admission: a released slot goes to the next waiter at once (no poll), in
priority then arrival order; rate starts are reserved per waiter; 1,000 concurrent
starts queue up and complete, with and without limits, on every adapter.

Every queue here polls once every ten minutes: a waiter that were admitted by a
poll (or a safety-net re-check) would hold the test past its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dq import Queue, create_job, run
from dq.engine.storage.base import Batch, CommitResult, Storage

from .conftest import live_peer, slot_state
from .test_lifecycle import status_is, until

SLOW_POLL = {"poll_interval": "10 minutes"}


async def test_a_released_slot_admits_the_next_waiter_without_a_poll(make_queue: Callable[..., Queue]) -> None:
    gate = asyncio.Event()
    order: list[int] = []

    @create_job(name="single", concurrency=1, retry=0)
    async def single(data: int) -> int:
        order.append(data)
        if data == 0:
            await run("gate", gate.wait)
        return data

    queue = make_queue([single], **SLOW_POLL)
    async with queue:
        job: Any = queue.jobs.single
        first = await job.start(0)
        await until(lambda: order == [0])
        waiters = [await job.start(i) for i in range(1, 5)]
        await until(lambda: all_pending(waiters))
        gate.set()
        assert [await e.result() for e in (first, *waiters)] == [0, 1, 2, 3, 4]
        assert order == [0, 1, 2, 3, 4]  # first come, first served
        for e in waiters:
            await e.refresh()
            assert e.status == "completed"


async def test_a_refused_new_execution_is_created_as_a_waiter(make_queue: Callable[..., Queue]) -> None:
    """Admission is decided in the write that creates the execution (on a storage whose
    commits are round trips): refused, it is stored pending with its reason, never
    claimed (no start, no lease, token 0)."""
    gate = asyncio.Event()

    @create_job(name="single", concurrency=1, retry=0)
    async def single(data: int) -> int:
        if data == 0:
            await run("gate", gate.wait)
        return data

    queue = make_queue([single], **SLOW_POLL)
    async with queue:
        job: Any = queue.jobs.single
        first = await job.start(0)
        second = await job.start(1)
        if queue.storage.synchronous_commit:  # admitted as it runs, just after start() returned
            await until(lambda: status_is(second, "pending"))
        stored = await queue.storage.get_execution(second.id)
        assert stored is not None and stored.status == "pending" and stored.worker_id is None
        assert stored.wait_reason is not None and "waiting for a slot" in stored.wait_reason
        if not queue.storage.synchronous_commit:  # decided in the write that created it: never claimed
            assert (stored.token, stored.started_at) == (0, None)
        assert [ev.type for ev in await second.events()] == ["trigger", "queued"]
        gate.set()
        assert [await first.result(), await second.result()] == [0, 1]
        assert [ev.type for ev in await second.events()] == ["trigger", "queued", "start", "success"]


async def all_pending(executions: list[Any]) -> bool:
    for e in executions:
        if not await status_is(e, "pending"):
            return False
    return True


async def test_waiters_are_admitted_by_priority_then_arrival(make_queue: Callable[..., Queue]) -> None:
    gate = asyncio.Event()
    order: list[str] = []

    def job(name: str, priority: int) -> Any:
        @create_job(name=name, priority=priority, retry=0)
        async def handler(data: str) -> str:
            order.append(data)
            if data == "blocker":
                await run("gate", gate.wait)
            return data

        return handler

    # The queue's concurrency is one limit shared by both jobs.
    queue = make_queue([job("low", 0), job("high", 5)], concurrency=1, **SLOW_POLL)
    async with queue:
        low: Any = queue.jobs.low
        high: Any = queue.jobs.high
        blocker = await low.start("blocker")
        await until(lambda: order == ["blocker"])
        started = [await low.start("low-1"), await high.start("high-1"), await low.start("low-2"), await high.start("high-2")]
        await until(lambda: all_pending(started))
        gate.set()
        for e in (blocker, *started):
            await e.result()
    assert order == ["blocker", "high-1", "high-2", "low-1", "low-2"]


async def test_a_step_slot_is_handed_to_the_waiting_step(make_queue: Callable[..., Queue]) -> None:
    gates = {i: asyncio.Event() for i in range(3)}
    inside: list[int] = []
    peak = [0, 0]

    async def critical(i: int) -> int:
        inside.append(i)
        peak[0] += 1
        peak[1] = max(peak)
        try:
            await gates[i].wait()
        finally:
            peak[0] -= 1
        return i

    @create_job(name="writer", retry=0)
    async def writer(data: int) -> int:
        return int(await run("db", lambda: critical(data), concurrency=1))

    queue = make_queue([writer], **SLOW_POLL)
    async with queue:
        job: Any = queue.jobs.writer
        first = await job.start(0)
        await until(lambda: inside == [0])
        second = await job.start(1)
        third = await job.start(2)
        await asyncio.sleep(0.2)
        assert inside == [0]  # the other two wait for the slot
        gates[0].set()
        await until(lambda: len(inside) == 2)
        gates[1].set()
        gates[2].set()
        assert [await e.result() for e in (first, second, third)] == [0, 1, 2]
    assert inside == [0, 1, 2] and peak[1] == 1


async def test_a_step_slot_goes_back_in_the_transaction_that_stores_the_step(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    """The slot of a step whose function returned is given back (and handed to the
    waiting step) by the write that stores the step, not by one of its own before it:
    a generation of a step limit costs one transaction, not two. (With another live
    process, so the key is shared: alone, the queue keeps it in memory.)"""
    gate = asyncio.Event()
    writes: list[Batch] = []

    async def critical(i: int) -> int:
        if i == 0:
            await gate.wait()
        return i

    @create_job(name="writer", retry=0)
    async def writer(data: int) -> int:
        return int(await run("db", lambda: critical(data), concurrency=1))

    queue = make_queue([writer], **SLOW_POLL)
    async with live_peer(make_storage()), queue:
        storage = queue.storage
        commit = storage.commit

        async def recording(batch: Batch) -> CommitResult:
            writes.append(batch)
            return await commit(batch)

        storage.commit = recording  # type: ignore[method-assign]
        job: Any = queue.jobs.writer
        key = "slots:step:writer:db"

        async def line() -> tuple[int, int]:
            st = (await storage.get_state([key])).get(key) or {}
            return len(st.get("holders", ())), st.get("n", 0)  # the line's rows: slot_lines.py

        first = await job.start(0)
        await until(lambda: _is(line(), (1, 0)))  # it holds the slot
        second = await job.start(1)
        await until(lambda: _is(line(), (1, 1)))  # the second waits for it
        gate.set()
        assert [await e.result() for e in (first, second)] == [0, 1]
    if storage.synchronous_commit:  # memory: a commit is a call, there is no transaction to share
        return
    done = [b for b in writes if any(s.execution_id == first.id and s.status == "completed" for s in b.steps)]
    assert len(done) == 1
    handed = done[0].state.get(key)
    assert handed is not None and [h.split("|")[0] for h in handed["holders"]] == [second.id]


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_a_rate_window_wakes_each_waiter_at_its_own_start(make_queue: Callable[..., Queue]) -> None:
    starts: list[float] = []
    loop_time = asyncio.get_running_loop().time

    @create_job(name="rated", concurrency="2 per 300ms", retry=0)
    async def rated(data: int) -> int:
        starts.append(loop_time())
        return data

    queue = make_queue([rated], **SLOW_POLL)
    async with queue:
        executions = await queue.jobs.rated.start_many(range(6))
        assert [await e.result() for e in executions] == list(range(6))
        state = await queue.storage.list_state("rate:")
    # Six starts were reserved, two per window: the waiters were woken by their own
    # reservation (a poll every ten minutes would not have run them).
    reserved = sorted(at for value in state.values() for at, _holder in value["starts"])
    assert len(reserved) == 6 and len(starts) == 6
    for i in range(2, 6):
        assert reserved[i] - reserved[i - 2] >= 300


async def test_a_thousand_concurrent_runs_complete_with_and_without_limits(make_queue: Callable[..., Queue]) -> None:
    async def noop() -> None:
        return None

    @create_job(name="free", retry=0)
    async def free(data: int) -> int:
        await run("noop", noop)
        return data

    @create_job(name="limited", concurrency=10, retry=0)
    async def limited(data: int) -> int:
        await run("noop", noop)
        return data

    @create_job(name="keyed", concurrency=lambda d: {"id": str(d % 10), "limit": 1}, retry=0)
    async def keyed(data: int) -> int:
        await run("noop", noop)
        return data

    @create_job(name="stepped", retry=0)
    async def stepped(data: int) -> int:
        await run("noop", noop, concurrency=10)
        return data

    queue = make_queue([free, limited, keyed, stepped])
    async with queue:
        for name in ("free", "limited", "keyed", "stepped"):
            job: Any = queue.jobs[name]
            results = await asyncio.gather(*(job.run(i) for i in range(1000)))
            assert results == list(range(1000)), name
        # No limit's state is left behind: every slot was given back.
        leftovers = await slot_state(queue)
        assert leftovers == {}, leftovers


async def test_a_thousand_concurrent_starts_under_a_queue_limit_complete(make_queue: Callable[..., Queue]) -> None:
    running = [0, 0]

    @create_job(name="queued", retry=0)
    async def queued(data: int) -> int:
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(0)
        running[0] -= 1
        return data

    queue = make_queue([queued], concurrency=10, **SLOW_POLL)
    async with queue:
        job: Any = queue.jobs.queued
        executions = await asyncio.gather(*(job.start(i) for i in range(1000)))
        assert [await e.result() for e in executions] == list(range(1000))
        assert await slot_state(queue) == {}
    assert 1 <= running[1] <= 10


async def test_a_limit_function_that_raises_fails_the_execution_not_the_start(make_queue: Callable[..., Queue]) -> None:
    """Admission at creation needs the limit's key; when the user's function raises,
    the execution is still stored and fails with that error as it runs (as a
    resumed one would), and the other starts of the burst are unaffected."""

    def key(data: int) -> dict[str, Any]:
        if data == 3:
            raise ValueError("no key for 3")
        return {"id": str(data % 2), "limit": 1}

    @create_job(name="keyed", concurrency=key, retry=0)
    async def keyed(data: int) -> int:
        return data

    queue = make_queue([keyed], **SLOW_POLL)
    async with queue:
        job: Any = queue.jobs.keyed
        executions = await asyncio.gather(*(job.start(i) for i in range(6)))
        for i, e in enumerate(executions):
            if i == 3:
                with pytest.raises(Exception, match="no key for 3"):
                    await e.result()
            else:
                assert await e.result() == i
