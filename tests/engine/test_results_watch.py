"""Waiting for executions that run elsewhere: the first look-up (`_ended_before`)
and the watcher's polling share the work, and every waiter resolves."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

from dq import Queue, create_job
from dq.engine.results import Results
from dq.engine.storage.base import Batch, ExecutionQuery, ExecutionRecord, Storage
from tests.engine.test_claim_history import _job, _stored


async def test_waiters_resolve_for_executions_another_handle_runs(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="unrelated")
    async def unrelated(_: Any) -> None:
        return None

    ran: Counter[str] = Counter()
    here = make_queue([unrelated])  # never claims "two"
    there = make_queue([_job(ran)])  # its own storage handle
    runtime = await here.started()
    before = [_stored(f"b{i}") for i in range(600)]
    await here.storage.commit(Batch(executions=before))
    await there.started()
    await there.runtime.all_settled([r.id for r in before])  # ended before anyone here waits
    during = [_stored(f"d{i}") for i in range(700)]
    await here.storage.commit(Batch(executions=during))  # end while the waiter is here

    done = await runtime.all_settled([r.id for r in [*before, *during]])
    assert [r.status for r in done] == ["completed"] * 1300
    assert [r.output for r in done] == [["ran-a", "ran-b"]] * 1300
    assert ran == Counter({f"{r.input}:{k}": 1 for r in [*before, *during] for k in "ab"})


class _SlowQueries:
    """A storage whose `query` answers (with the records marked ended) only when let go."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.ended: dict[str, ExecutionRecord] = {}
        self.go = asyncio.Event()

    async def query(self, query: ExecutionQuery) -> list[ExecutionRecord]:
        ids: Sequence[str] = query.ids or []
        self.asked.append(list(ids))
        await self.go.wait()
        return [self.ended[i] for i in ids if i in self.ended]


async def test_the_watcher_leaves_ids_to_the_first_look_up_then_polls_them() -> None:
    """The look-up asks, chunk by chunk, for those still waiting; the watcher asks
    for none of the ids the look-up has yet to ask for, then for those not ended."""
    storage = _SlowQueries()
    results = Results(cast(Storage, storage), set(), poll_s=0.01)
    watch = asyncio.create_task(results.watch())
    ids = [f"e{i:04}" for i in range(1200)]
    waiting = asyncio.create_task(results.all_settled(ids))
    try:
        await asyncio.sleep(0.1)  # ten polls while the look-up's first query hangs
        assert storage.asked == [ids[:500]]  # the watcher asked for none of them
        storage.ended = {i: ExecutionRecord(i, "job", "completed", output=i) for i in ids[:700]}
        for i in ids[600:650]:  # ended here meanwhile: not asked for
            results.resolve(storage.ended[i])
        storage.go.set()
        await asyncio.sleep(0.1)
        assert storage.asked[1:3] == [ids[500:600] + ids[650:1000], ids[1000:]] and not waiting.done()
        polled = {i for asked in storage.asked[3:] for i in asked}
        assert polled == set(ids[700:])  # only those still waiting, once looked up
        storage.ended.update({i: ExecutionRecord(i, "job", "completed", output=i) for i in ids[700:]})
        done = await asyncio.wait_for(waiting, 5)
        assert [r.output for r in done] == ids
    finally:
        watch.cancel()
        waiting.cancel()
        await asyncio.gather(watch, waiting, return_exceptions=True)


async def test_waiters_in_line_here_are_not_looked_up_but_still_polled() -> None:
    """Executions parked in this process's line for a slot have not ended: the first
    look-up skips them (a burst under a limit read each back). Should another process
    run one after all, the watcher's poll still finds its end."""
    storage = _SlowQueries()
    storage.go.set()
    parked = {f"p{i}" for i in range(3)}
    results = Results(cast(Storage, storage), set(), poll_s=0.01, parked_here=parked)
    ids = ["p0", "p1", "p2", "elsewhere"]
    waiting = asyncio.create_task(results.all_settled(ids))
    watch: asyncio.Task[None] | None = None
    try:
        await asyncio.sleep(0)  # the look-up ran
        assert storage.asked == [["elsewhere"]]
        results.resolve(ExecutionRecord("p0", "job", "completed", output="here"))  # ended here
        storage.ended = {i: ExecutionRecord(i, "job", "completed", output="there") for i in ("p1", "p2", "elsewhere")}
        watch = asyncio.create_task(results.watch())
        done = await asyncio.wait_for(waiting, 5)
        assert [r.output for r in done] == ["here", "there", "there", "there"]
        assert {i for asked in storage.asked[1:] for i in asked} == {"p1", "p2", "elsewhere"}
    finally:
        for task in (waiting, watch):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (waiting, watch) if t is not None), return_exceptions=True)


async def test_a_waiter_after_the_end_of_an_execution_completed_here_reads_nothing(
    make_queue: Callable[..., Queue],
) -> None:
    """`start()` then `result()` of a job that ended meanwhile, and `all_settled` after
    a `start_many`: answered from the records this process completed, no read."""
    @create_job(name="quick")
    async def quick(n: int) -> int:
        return n * 2

    queue = make_queue([quick])
    runtime = await queue.started()
    executions = await queue.jobs.quick.start_many(range(20))
    await runtime.all_settled([e.id for e in executions])
    storage = queue.storage
    reads: list[str] = []
    for name in ("query", "get_execution"):
        real = getattr(storage, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            reads.append(_name)
            return await _real(*args, **kwargs)

        setattr(storage, name, counted)
    assert [r.output for r in await runtime.all_settled([e.id for e in executions])] == [n * 2 for n in range(20)]
    assert await executions[3].result() == 6
    assert reads == []


async def test_a_failed_execution_retried_elsewhere_is_read_not_remembered(make_queue: Callable[..., Queue]) -> None:
    """Only completed executions are remembered: a failed one may run again (`retry`,
    from any process), so a waiter for it reads storage and sees the new attempt."""
    outcome = {"fail": True}

    @create_job(name="flaky", retry=0)
    async def flaky(_: Any) -> str:
        if outcome["fail"]:
            raise RuntimeError("not yet")
        return "done"

    here = make_queue([flaky])
    ex = await here.jobs.flaky.start(None)
    failed = await here.runtime.all_settled([ex.id])
    assert failed[0].status == "failed"
    outcome["fail"] = False
    there = make_queue([flaky])  # its own storage handle, as another process
    assert await there.lifecycle.retry(ex.id)
    await there.started()
    assert await asyncio.wait_for(ex.result(), 10) == "done"


def test_completed_records_are_forgotten_two_generations_on(monkeypatch: Any) -> None:
    """Between one and two generations of completed records are kept: memory stays
    bounded, and forgetting the oldest costs no scan."""
    monkeypatch.setattr("dq.engine.results.REMEMBERED", 4)
    results = Results(cast(Storage, _SlowQueries()), set(), poll_s=1)
    for i in range(10):
        results.resolve(ExecutionRecord(f"e{i}", "job", "completed", output=i))
    results.resolve(ExecutionRecord("f", "job", "failed"))
    kept = [i for i in range(10) if results.completed_lately(f"e{i}") is not None]
    assert kept == [4, 5, 6, 7, 8, 9]
    assert results.completed_lately("f") is None
