"""The event log (one per transition and step) and the in-process event bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from dq import JobError, Queue, create_job, create_memory_storage, run, sleep
from dq.engine.events import EventBus
from dq.engine.sources import source_version
from dq.engine.storage.base import Batch, EventRecord


async def test_event_log_of_a_workflow(make_queue: Callable[..., Queue]) -> None:
    flaky = {"n": 0}

    def sometimes() -> int:
        flaky["n"] += 1
        if flaky["n"] == 1:
            raise RuntimeError("first time")
        return 7

    @create_job(name="traced", retry=1, backoff=0)
    async def traced(data: Any) -> int:
        await sleep(1)
        return await run("flaky", sometimes, retry=0)

    queue = make_queue([traced])
    async with queue:
        ex = await queue.jobs.traced.start(None)
        assert await ex.result() == 7
        events = await ex.events()
    types = [e.type for e in events]
    assert types == [
        "trigger", "start", "sleep", "wake", "step_start", "step_failure", "error", "retry",
        "start", "step_start", "step_success", "success",
    ]  # fmt: skip
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.execution_id == ex.id and e.job_name == "traced" for e in events)
    failure = events[types.index("step_failure")].data
    assert failure["key"] == "flaky" and failure["error"]["message"] == "first time"
    assert events[types.index("retry")].data["attempt"] == 2
    source = source_version(traced.handler)
    assert source is not None
    assert events[8].data == {"attempt": 2, "resumed": False, "worker": queue.runtime.worker_id,
                              "source": source.fingerprint}  # fmt: skip


async def test_bus_delivers_every_event_in_order(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="chatty")
    async def chatty(data: int) -> int:
        for i in range(3):
            await run(f"s{i}", lambda i=i: i)
        return data

    @create_job(name="broken", retry=0)
    async def broken(data: Any) -> None:
        raise RuntimeError("x")

    queue = make_queue([chatty, broken])
    received: list[EventRecord] = []
    async with queue:
        async with queue.bus.subscribe() as sub:

            async def collect() -> None:
                async for ev in sub:
                    received.append(ev)
                    if sum(e.type in ("success", "failure") for e in received) == 4:
                        return

            collector = asyncio.create_task(collect())
            executions = [await queue.jobs.chatty.start(i) for i in range(3)]
            with pytest.raises(JobError):
                await queue.jobs.broken.run(None)
            for ex in executions:
                await ex.result()
            await asyncio.wait_for(collector, 10)
        stored = await queue.storage.read_events(0, limit=10_000)
    assert [e.seq for e in received] == [e.seq for e in stored]
    assert [e.type for e in received] == [e.type for e in stored]


async def test_subscribers_that_arrive_together_get_each_event_once(make_queue: Callable[..., Queue]) -> None:
    # The dashboard's hub and a node subscribe as the server starts: both used to find no
    # tail while the first read the last seq, each started one, and every event came twice.
    @create_job(name="brief")
    async def brief(data: int) -> int:
        return await run("only", lambda: data)

    queue = make_queue([brief])
    async with queue:
        async with contextlib.AsyncExitStack() as stack:
            subs = await asyncio.gather(*(stack.enter_async_context(queue.bus.subscribe()) for _ in range(3)))
            await queue.jobs.brief.run(1)
            stored = [e.seq for e in await queue.storage.read_events(0, limit=10_000)]

            async def collect(sub: Any) -> list[int]:
                seen: list[int] = []
                async for ev in sub:
                    seen.append(ev.seq)
                    if ev.seq == stored[-1]:
                        return seen
                return seen

            got = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in subs)), 10)
            await asyncio.sleep(0.3)  # a second tail would deliver the same seqs again by now
            extra = [s.queue.qsize() for s in subs]
    assert got == [stored] * 3
    assert extra == [0, 0, 0]


async def test_the_bus_delivers_local_commits_without_reading_them_back(make_queue: Callable[..., Queue]) -> None:
    # The dashboard subscribes on a loaded server: reading every committed event back from
    # storage cost the engine more than rendering the pages did.
    @create_job(name="steps")
    async def steps(data: int) -> int:
        for i in range(5):
            await run(f"s{i}", lambda i=i: i)
        return data

    queue = make_queue([steps])
    async with queue:
        async with queue.bus.subscribe() as sub:
            storage = queue.storage
            reads = 0
            read_events = storage.read_events

            async def counted(*args: Any, **kwargs: Any) -> list[EventRecord]:
                nonlocal reads
                reads += 1
                return await read_events(*args, **kwargs)

            storage.read_events = counted  # type: ignore[method-assign]
            try:
                await asyncio.gather(*(queue.jobs.steps.run(i) for i in range(20)))
            finally:
                storage.read_events = read_events  # type: ignore[method-assign]
            stored = await storage.read_events(0, limit=10_000)
            got: list[EventRecord] = []
            while len(got) < len(stored):
                got.append(await asyncio.wait_for(sub.queue.get(), 5))  # type: ignore[arg-type]
    assert [e.seq for e in got] == [e.seq for e in stored]
    assert [(e.type, e.execution_id) for e in got] == [(e.type, e.execution_id) for e in stored]
    assert len(stored) > 200 and reads <= 10, (len(stored), reads)  # polls only (every 0.5 s)


async def test_the_bus_reads_what_another_writer_committed_before_a_local_commit(make_queue: Callable[..., Queue]) -> None:
    # Events this process did not commit (another process, or a lane whose result comes
    # later) leave a gap before the next local commit: the tail reads them, in order.
    @create_job(name="one")
    async def one(data: int) -> int:
        return await run("only", lambda: data)

    queue = make_queue([one])
    async with queue:
        async with queue.bus.subscribe() as sub:
            await queue.jobs.one.run(1)
            foreign = EventRecord(None, "one", "foreign", {"by": "another process"}, at=1)
            await queue.storage.commit(Batch(events=[foreign]))
            await queue.jobs.one.run(2)
            stored = await queue.storage.read_events(0, limit=10_000)
            got: list[EventRecord] = []
            while len(got) < len(stored):
                got.append(await asyncio.wait_for(sub.queue.get(), 5))  # type: ignore[arg-type]
            await asyncio.sleep(0.6)  # a poll: nothing is delivered twice
            assert sub.queue.empty()
    assert [e.seq for e in got] == [e.seq for e in stored]
    assert [e.type for e in got].count("foreign") == 1


async def test_commits_reporting_out_of_order_are_delivered_in_order_without_a_read() -> None:
    # Two group-commit lanes: the later seqs' result can come first. They wait for the
    # earlier ones instead of sending the tail to storage.
    storage = create_memory_storage()
    bus = EventBus(storage)
    reads = 0
    read_events = storage.read_events

    async def counted(*args: Any, **kwargs: Any) -> list[EventRecord]:
        nonlocal reads
        reads += 1
        return await read_events(*args, **kwargs)

    storage.read_events = counted  # type: ignore[method-assign]
    try:
        async with bus.subscribe() as sub:
            first = await storage.commit(Batch(events=[EventRecord(None, None, "a"), EventRecord(None, None, "b")]))
            second = await storage.commit(Batch(events=[EventRecord(None, None, "c")]))
            bus.notify(second.events)
            assert sub.queue.empty()  # held: the seqs before it have not reported
            bus.notify(first.events)
            got = [sub.queue.get_nowait() for _ in range(3)]
            assert reads == 0
    finally:
        await bus.aclose()
    assert [e.type for e in got] == ["a", "b", "c"]
    assert [e.seq for e in got] == [1, 2, 3]


async def test_a_follower_gets_each_delivery_as_one_list_in_order() -> None:
    # The dashboard's hub follows the bus with a sink: one call per commit, not a queue
    # hop per event; commits reporting out of order still arrive in seq order.
    storage = create_memory_storage()
    bus = EventBus(storage)
    calls: list[list[int]] = []
    try:
        async with bus.subscribe() as sub, bus.follow(lambda evs: calls.append([e.seq for e in evs])) as base:
            assert base == 0
            first = await storage.commit(Batch(events=[EventRecord(None, None, "a"), EventRecord(None, None, "b")]))
            second = await storage.commit(Batch(events=[EventRecord(None, None, "c")]))
            third = await storage.commit(Batch(events=[EventRecord(None, None, "d"), EventRecord(None, None, "e"),
                                                       EventRecord(None, None, "f")]))  # fmt: skip
            bus.notify(second.events)
            assert calls == []  # held: the seqs before it have not reported
            bus.notify(first.events)
            assert calls == [[1, 2, 3]]  # the run that closed the gap, in one call
            bus.notify(third.events)
            assert calls == [[1, 2, 3], [4, 5, 6]]
            bus.notify(first.events)  # delivered already: nothing again
            # another writer's events (never notified here) reach the follower from the log
            await storage.commit(Batch(events=[EventRecord(None, None, "foreign")]))
            await asyncio.wait_for(_until(lambda: len(calls) == 3), 5)
            got = [sub.queue.get_nowait() for _ in range(7)]
        assert calls == [[1, 2, 3], [4, 5, 6], [7]]
        assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6, 7]  # the per-event subscriber alike
    finally:
        await bus.aclose()


async def test_a_follower_that_raises_stops_neither_the_commit_nor_the_others() -> None:
    storage = create_memory_storage()
    bus = EventBus(storage)
    seen: list[int] = []

    def broken(events: list[EventRecord]) -> None:
        raise RuntimeError("a bug in a follower")

    try:
        async with bus.follow(broken), bus.follow(lambda evs: seen.extend(e.seq for e in evs)):
            result = await storage.commit(Batch(events=[EventRecord(None, None, "a")]))
            bus.notify(result.events)
        assert seen == [1]
    finally:
        await bus.aclose()


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)
