"""A synchronous adapter's queued writes (`Committer.queued`) and `Results.all_settled`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dq import create_job
from dq.engine.committer import Committer
from dq.engine.queue import Queue
from dq.engine.storage.base import Batch, EventRecord, ExecutionRecord
from dq.engine.storage.memory import MemoryStorage


def _running(eid: str, token: int) -> ExecutionRecord:
    return ExecutionRecord(eid, "j", "running", token=token, worker_id="w")


async def test_a_stale_and_a_fresh_holder_never_share_a_queued_batch() -> None:
    storage = MemoryStorage()
    await storage.open()
    storage.commit_now(Batch(executions=[_running("e1", 2)]))
    committer = Committer(storage, lambda _events: None)
    stale = committer.queued("e1", 1)
    assert stale is not None
    stale.events.append(EventRecord("e1", "j", "log", {"who": "stale"}, 1))
    fresh = committer.queued("e1", 2)  # the stale holder's writes are committed (and refused) first
    assert fresh is not None and fresh is not stale
    fresh.events.append(EventRecord("e1", "j", "log", {"who": "fresh"}, 2))
    result = committer.commit_queued()
    assert "e1" not in result.refused
    assert [e.data["who"] for e in await storage.read_events(execution_id="e1")] == ["fresh"]


async def test_queued_writes_commit_with_the_next_commit_of_their_execution() -> None:
    storage = MemoryStorage()
    await storage.open()
    storage.commit_now(Batch(executions=[_running("e1", 1)]))
    committer = Committer(storage, lambda _events: None)
    queued = committer.queued("e1", 1)
    assert queued is not None and committer.queued("e1", 1) is queued  # one batch, joined
    queued.events.append(EventRecord("e1", "j", "first", {}, 1))
    committer.send(Batch(events=[EventRecord("e1", "j", "second", {}, 2)], fences={"e1": 1}))
    result = committer.commit_now(Batch(events=[EventRecord("e1", "j", "third", {}, 3)], fences={"e1": 1}))
    assert [e.type for e in result.events] == ["first", "second", "third"]
    assert [e.seq for e in result.events] == [1, 2, 3]
    assert committer.queued("e1", 1) is not queued  # committed: a new one


async def test_all_settled_returns_each_final_record_in_the_order_asked(make_queue: Callable[..., Queue]) -> None:
    release = asyncio.Event()

    @create_job(name="echo", retry=0)
    async def echo(data: Any) -> Any:
        if data == "wait":
            await release.wait()
        return data

    queue = make_queue([echo])
    async with queue:
        runtime = await queue.started()
        done = await queue.jobs.echo.start("early")
        assert await done.result() == "early"  # ended before anyone waits for it
        waiting = await queue.jobs.echo.start("wait")
        pending = asyncio.ensure_future(runtime.all_settled([waiting.id, done.id, waiting.id]))
        await asyncio.sleep(0.05)
        assert not pending.done()
        release.set()
        records = await pending
        assert [r.output for r in records] == ["wait", "early", "wait"]
        assert all(r.status == "completed" for r in records)
        assert await runtime.all_settled([]) == []
