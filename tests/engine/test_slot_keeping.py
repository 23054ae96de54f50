"""A lone process keeps its concurrency keys in memory (`slot_keeping.py`): no slot
write per take and release; another process makes it give them back, and waits in
line meanwhile; a crashed keeper's marker is dropped once its heartbeat is stale;
closing gives the keys back. On every adapter: two processes on one memory store are
two runtimes on the same object."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from dq import Queue, create_job, run
from dq.engine import slot_lines
from dq.engine.ids import new_id, now_ms
from dq.engine.limits import Limit
from dq.engine.slot_requests import state_key
from dq.engine.storage.base import Batch, ExecutionRecord, Storage
from dq.engine.why import explain

from .test_lifecycle import status_is, until
from .test_slot_lines import _record

KEY = state_key(Limit("resize", 1))


def _slot_writes(batches: list[Batch]) -> list[Batch]:
    return [b for b in batches if any(k.startswith("slots:") for k in b.state)]


async def test_a_lone_process_writes_no_slot_state_per_job(make_queue: Callable[..., Queue]) -> None:
    running = [0, 0]

    @create_job(name="resize", retry=0)
    async def resize(n: int) -> int:
        running[0] += 1
        running[1] = max(running)
        await run("noop", _pause)
        running[0] -= 1
        return n

    queue = make_queue([resize], concurrency=2)
    writes = _record(queue.storage)
    async with queue:
        job: Any = queue.jobs.resize
        first = [await job.start(n) for n in range(5)]
        await until(lambda: _kept(queue, "slots:queue:resize"))
        rest = [await job.start(n) for n in range(5, 100)]
        rest += await asyncio.gather(*(job.start(n) for n in range(100, 200)))
        assert [await e.result() for e in [*first, *rest]] == list(range(200))
    # Taken once (a marker that fills the key for any other process), given back once at
    # close; shared, each start and each end wrote the key: 400 writes.
    marks = [b.state["slots:queue:resize"] for b in _slot_writes(writes)]
    assert len(marks) <= 5 + 2, len(marks)
    assert any(m is not None and m["holders"] == ["@" + queue.runtime.worker_id] * 2 for m in marks)
    assert 1 <= running[1] <= 2


async def test_another_process_makes_the_keeper_give_the_key_back(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    gate = asyncio.Event()
    order: list[int] = []
    running = [0, 0]

    def define() -> Any:
        @create_job(name="resize", concurrency=1, retry=0)
        async def resize(n: int) -> int:
            running[0] += 1
            running[1] = max(running)
            if n == 0:
                await run("block", gate.wait)
            order.append(n)
            running[0] -= 1
            return n

        return resize

    a = make_queue([define()])
    async with a:
        first = await a.jobs.resize.start(0)
        await until(lambda: status_is(first, "running"))
        await until(a.runtime.flow.peers.is_alone)
        mine = [await a.jobs.resize.start(n) for n in (1, 2)]
        await until(lambda: _kept(a, KEY))
        stored = (await a.storage.get_state([KEY]))[KEY]
        assert stored["holders"] == ["@" + a.runtime.worker_id]  # full for anyone else
        b = make_queue([define()])
        async with b:
            theirs = await b.jobs.resize.start(3)
            # Within about a second of seeing B's heartbeat, A writes the key as shared:
            # its holder, its line, and B's execution behind them, in arrival order.
            await until(lambda: _shared(a, KEY))
            line = await slot_lines.read(a.storage.get_state, a.storage.list_state, [KEY])
            assert line[KEY]["holders"] == [first.id]
            assert [w[2] for w in line[KEY]["waiters"]] == [e.id for e in [*mine, theirs]]
            gate.set()
            assert [await e.result() for e in [first, *mine]] == [0, 1, 2]
            assert await theirs.result() == 3
    assert order == [0, 1, 2, 3]
    assert running[1] == 1


async def test_a_crashed_keepers_marker_is_dropped_once_its_heartbeat_is_stale(
    make_queue: Callable[..., Queue],
) -> None:
    @create_job(name="resize", concurrency=1, retry=0)
    async def resize(n: int) -> int:
        return n

    queue = make_queue([resize])
    async with queue:
        # A process that kept the key and died: its marker, and no fresh heartbeat.
        await queue.storage.commit(Batch(state={KEY: {"limit": 1, "holders": ["@gone:1:ABC"], "waiters": []}}))
        execution = await queue.jobs.resize.start(7)
        assert await execution.result() == 7


async def test_closing_gives_the_kept_keys_back(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    gate = asyncio.Event()

    @create_job(name="resize", concurrency=1, retry=0)
    async def resize(n: int) -> int:
        if n == 0:
            await run("block", gate.wait)
        return n

    queue = make_queue([resize])
    async with queue:
        first = await queue.jobs.resize.start(0)
        await until(lambda: status_is(first, "running"))
        await until(queue.runtime.flow.peers.is_alone)  # it has looked for other processes
        waiting = await queue.jobs.resize.start(1)
        await until(lambda: _kept(queue, KEY))
        why = await explain(queue, await queue.storage.get_execution(waiting.id), 0)  # type: ignore[arg-type]
        assert why is not None and [h.execution_id for h in why.holders] == [first.id]
        gate.set()
        assert await first.result() == 0
    # Closed: no marker left; the waiter (granted meanwhile, or due) runs on in the next process.
    storage = make_storage()
    await storage.open()
    try:
        state = await slot_lines.read(storage.get_state, storage.list_state, [KEY])
        assert not any(str(h).startswith("@") for h in (state.get(KEY) or {}).get("holders", []))
    finally:
        await storage.aclose()
    again = make_queue([resize])
    async with again:
        try:
            await until(lambda: _status(again, waiting.id, "completed"))
        except AssertionError:
            raise AssertionError(await again.storage.get_execution(waiting.id)) from None


async def _pause() -> None:
    await asyncio.sleep(0)


async def _status(queue: Queue, execution_id: str, status: str) -> bool:
    rec = await queue.storage.get_execution(execution_id)
    return rec is not None and rec.status == status


async def _kept(queue: Queue, key: str) -> bool:
    return key in queue.runtime.flow.ledger.kept


async def _shared(queue: Queue, key: str) -> bool:
    """Given back: no longer kept in memory, and the write that says so committed (the
    ledger lets go of the key as it sends that write)."""
    if key in queue.runtime.flow.ledger.kept:
        return False
    line = await slot_lines.read(queue.storage.get_state, queue.storage.list_state, [key])
    return not any(h.startswith("@") for h in line.get(key, {}).get("holders", []))


async def test_why_names_the_process_that_keeps_the_key(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="resize", concurrency=1, retry=0)
    async def resize(n: int) -> int:
        return n

    queue = make_queue([resize])
    async with queue:
        await queue.storage.commit(Batch(state={KEY: {"limit": 1, "holders": ["@other:7:XYZ"], "waiters": []}}))
        now = now_ms()
        rec = ExecutionRecord(new_id(), "resize", "pending", input=1, created_at=now, run_at=now + 60_000,
                              wait_reason="waiting for a slot: concurrency 1 for resize")  # fmt: skip
        why = await explain(queue, rec, now)
    assert why is not None and why.kind == "concurrency" and why.key == "resize"
    assert "kept in the memory of process other:7:XYZ" in why.text


async def test_starts_on_a_kept_key_with_room_are_admitted_as_they_are_created(make_queue: Callable[..., Queue]) -> None:
    """With the key kept and room in it, a start (one, or a bulk start's) is admitted in
    this process's memory as it is created: its record is the only write, with no
    admission round and no gate as it begins to run. Past the room, the rest are
    decided by the ledger (put in line). On every adapter, memory included."""
    gate = asyncio.Event()

    @create_job(name="resize", concurrency=3, retry=0)
    async def resize(n: int) -> int:
        await run("block", gate.wait)
        return n

    queue = make_queue([resize])
    async with queue:
        job: Any = queue.jobs.resize
        gate.set()
        assert await (await job.start(-1)).result() == -1
        await until(lambda: _kept(queue, KEY))
        gate.clear()
        flow, ledger = queue.runtime.flow, queue.runtime.flow.ledger
        asked: list[str] = []
        for obj, name in ((ledger, "request"), (ledger, "request_many"), (flow, "admit")):
            setattr(obj, name, _counted(getattr(obj, name), asked, name))
        first = await job.start(0)
        more = await job.start_many([1, 2])
        assert asked == []
        assert ledger.kept[KEY]["holders"] == [first.id, *(e.id for e in more)]
        rest = await job.start_many([3, 4])
        await until(lambda: bool(asked))  # no room: decided by the ledger (as they run, on memory)
        gate.set()
        assert [await e.result() for e in [first, *more, *rest]] == [0, 1, 2, 3, 4]


async def test_a_start_that_is_not_stored_gives_its_kept_slot_back(make_queue: Callable[..., Queue]) -> None:
    """A start admitted in memory on a kept key whose creating write fails raises to its
    caller and gives the slot back at once, and nothing of it is stored."""

    @create_job(name="resize", concurrency=1, retry=0)
    async def resize(n: int) -> int:
        return n

    queue = make_queue([resize], poll_interval="10 minutes")
    async with queue:
        job: Any = queue.jobs.resize
        assert await (await job.start(0)).result() == 0
        await until(lambda: _kept(queue, KEY))
        committer = queue.runtime.committer
        commit = committer.commit

        async def failing(batch: Batch) -> Any:
            raise RuntimeError("the creating write failed")

        committer.commit = failing  # type: ignore[method-assign]
        try:
            with pytest.raises(RuntimeError, match="the creating write failed"):
                await job.start(1)
        finally:
            committer.commit = commit  # type: ignore[method-assign]
        ledger = queue.runtime.flow.ledger
        # Given back by itself, not found dead later by a newcomer's look at the holders.
        await until(lambda: KEY in ledger.kept and not (ledger.kept[KEY] or {}).get("holders"), timeout=2)
        assert await asyncio.wait_for((await job.start(2)).result(), 10) == 2
        stored = sorted(r.input for r in await queue.jobs.get_all(job_name="resize"))
        assert stored == [0, 2]  # nothing of the failed start was written


def _counted(fn: Callable[..., Any], calls: list[str], name: str) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return fn(*args, **kwargs)

    return counted


async def test_a_burst_on_a_kept_key_hands_slots_to_waiters_just_created(make_queue: Callable[..., Queue]) -> None:
    """With the key kept, a burst's first starts are admitted at once and the rest put in
    line by a round whose write creates them: a release's hand-over to one of them is
    written after that write, never beside it. (On PostgreSQL new executions otherwise
    commit in a lane of their own; here those commits are slowed, and a hand-over that
    overtook its waiter's insert would leave it to the safety net, ten minutes away.)"""

    @create_job(name="resize", concurrency=3, retry=0)
    async def resize(n: int) -> int:
        await run("noop", _pause)
        return n

    queue = make_queue([resize], poll_interval="10 minutes")
    commit = queue.storage.commit

    async def slow_inserts(batch: Batch) -> Any:
        if len(batch.executions) > 1 and batch.creates_only():
            await asyncio.sleep(0.2)
        return await commit(batch)

    queue.storage.commit = slow_inserts  # type: ignore[method-assign]
    async with queue:
        job: Any = queue.jobs.resize
        assert await (await job.start(-1)).result() == -1
        await until(lambda: _kept(queue, KEY))
        for burst in range(3):
            executions = await asyncio.gather(*(job.start(burst * 100 + n) for n in range(100)))
            done = await asyncio.wait_for(queue.runtime.all_settled([e.id for e in executions]), 60)
            assert [r.output for r in done] == [burst * 100 + n for n in range(100)]
