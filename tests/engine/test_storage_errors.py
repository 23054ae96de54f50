"""What the runtime does when its storage fails under a running execution, on every
adapter: an unreachable store (a connection error) is waited out without failing
the job; a store that lost dq's data (StorageLostError) stops the queue loudly.
The failures are injected into the adapter's commit; tests/faults/ has the real
ones (a PostgreSQL restart, a Redis FLUSHDB).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import pytest

from dq import Queue, create_job, run
from dq.engine.errors import StorageLostError
from dq.engine.storage.base import Batch, CommitResult, Storage

from .conftest import slot_state
from .test_lifecycle import until


class Failing:
    """Makes the storage's commits raise `error` while `failures` is above zero."""

    def __init__(self, storage: Storage, error: Callable[[], Exception]) -> None:
        self.failures = 0
        self.raised = 0
        self.error = error
        if storage.synchronous_commit:  # memory: the committer calls commit_now directly
            commit_now = storage.commit_now

            def failing_now(batch: Batch) -> CommitResult:
                self._maybe_fail()
                result: CommitResult = commit_now(batch)
                return result

            storage.commit_now = failing_now  # type: ignore[method-assign]
        commit = storage.commit

        async def failing(batch: Batch) -> CommitResult:
            self._maybe_fail()
            return await commit(batch)

        storage.commit = failing  # type: ignore[method-assign]

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.raised += 1
            raise self.error()


async def test_unreachable_storage_releases_and_resumes_without_a_retry(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    ran: collections.Counter[str] = collections.Counter()
    storage = make_storage()
    failing = [Failing(storage, lambda: ConnectionResetError("connection reset by peer"))]

    def step(name: str) -> str:
        ran[name] += 1
        if name == "two" and ran[name] == 1:
            failing[0].failures = 3  # the commit of this step's record, and what follows
        return name

    @create_job(name="outage", retry=0)
    async def outage(data: Any) -> list[str]:
        return [await run(n, lambda n=n: step(n)) for n in ("one", "two", "three")]

    queue = make_queue([outage], storage=storage)
    async with queue:
        ex = await queue.jobs.outage.start(None)
        assert await asyncio.wait_for(ex.result(), 20) == ["one", "two", "three"]
        await ex.refresh()
        events = [e.type for e in await ex.events()]
    assert failing[0].raised == 3
    # Step two's record was lost with the failed commit: it ran again, once; the others once.
    assert ran == {"one": 1, "two": 2, "three": 1}
    assert (ex.status, ex.retry_count, ex.error) == ("completed", 0, None)
    assert "released" in events and "error" not in events and "failure" not in events


async def test_lost_storage_stops_the_queue_and_fails_waiters(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    gate = asyncio.Event()
    attempts: list[int] = []

    @create_job(name="doomed", retry=3, backoff=0)
    async def doomed(data: Any) -> str:
        attempts.append(1)
        await run("wait", gate.wait)
        await run("after", lambda: attempts.append(2))
        return "done"

    storage = make_storage()
    failing = Failing(storage, lambda: StorageLostError("dq's data is gone (test)"))
    queue = make_queue([doomed], storage=storage)
    await queue.start()
    ex = await queue.jobs.doomed.start(None)
    waiter = asyncio.ensure_future(ex.result())
    await until(lambda: attempts == [1])
    failing.failures = 10**9
    gate.set()  # the step's record commit fails: storage lost
    with pytest.raises(StorageLostError, match="gone"):
        await asyncio.wait_for(waiter, 10)
    with pytest.raises(StorageLostError):
        await queue.jobs.doomed.start(None)
    with pytest.raises(StorageLostError):
        await queue.jobs.get_all()
    assert attempts == [1]  # no retry, no further step
    assert queue.runtime.fatal_error is not None


async def test_a_step_slot_whose_hand_over_was_not_written_stays_with_its_holder(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    """A limited step's slot goes back in the write that stores the step. When that
    write fails (as a crash before it would), nothing of it is stored: the holder
    keeps the slot, resumes, runs the step again and then hands the slot on; the
    other execution's step waits meanwhile, and the limit holds throughout."""
    storage = make_storage()
    failing = Failing(storage, lambda: ConnectionResetError("connection reset by peer"))
    ran: collections.Counter[int] = collections.Counter()
    inside = [0, 0]  # now, peak

    async def write(n: int) -> int:
        ran[n] += 1
        inside[0] += 1
        inside[1] = max(inside)
        try:
            await asyncio.sleep(0.02)
        finally:
            inside[0] -= 1
        if sum(ran.values()) == 1:
            # The first writer's step and its slot's hand-over are queued after this:
            # their shared commit fails, and so does each on its own.
            failing.failures = 3
        return n

    @create_job(name="writer", retry=0)
    async def writer(data: int) -> int:
        return int(await run("db", lambda: write(data), concurrency=1))

    queue = make_queue([writer], storage=storage)
    async with queue:
        executions = [await queue.jobs.writer.start(i) for i in range(2)]
        assert [await asyncio.wait_for(e.result(), 20) for e in executions] == [0, 1]
        assert await slot_state(queue) == {}
    assert failing.raised == 3
    assert sorted(ran.values()) == [1, 2] and inside[1] == 1  # the holder's step ran again, once
