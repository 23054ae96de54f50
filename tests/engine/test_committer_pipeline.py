"""Pipelined group commit (`Storage.commit_pipeline` > 1): the next group commits
while the previous one is in flight only when it touches nothing that one touches
(its batches' own fenced executions; an execution's writes keep their order, others'
may pass them); anything else waits until nothing is in flight, and nothing queued
after it passes it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from dq import Queue, create_job, run
from dq.engine.commit_groups import Item, own, take_beside
from dq.engine.committer import Committer
from dq.engine.storage.base import Batch, CommitResult, EventRecord, ExecutionUpdate, Storage
from dq.engine.storage.memory import MemoryStorage
from dq.engine.storage.sql import SqlStorage


class Gated(MemoryStorage):
    """Each commit waits until the test lets it end; records which are in flight."""

    synchronous_commit = False

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.commit_pipeline = depth
        self.flying: list[str] = []
        self.started: list[str] = []
        self.most = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.all_land = False

    async def commit(self, batch: Batch) -> CommitResult:
        name = "+".join(sorted({ev.type for ev in batch.events} | set(batch.state)))
        self.started.append(name)
        self.flying.append(name)
        self.most = max(self.most, len(self.flying))
        gate = self.gates.setdefault(name, asyncio.Event())
        if not self.all_land:
            await gate.wait()
        self.flying.remove(name)
        return CommitResult(applied=[True] * len(batch.updates))

    def land(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()

    def land_all(self) -> None:
        """Let every commit end (before closing: `aclose` flushes)."""
        self.all_land = True
        for gate in self.gates.values():
            gate.set()


def _step(eid: str, name: str) -> Batch:
    """A step's batch: its event, fenced by its own execution."""
    return Batch(events=[EventRecord(eid, "job", name, {}, 0)], fences={eid: 1})


async def _turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def _committer(depth: int) -> AsyncIterator[tuple[Committer, Gated]]:
    """A started committer over a `Gated` storage; at the end every commit may end
    (`aclose` flushes) and it is closed."""
    storage = Gated(depth)
    committer = Committer(storage, lambda _events: None)
    committer.start()
    await _turns()
    try:
        yield committer, storage
    finally:
        storage.land_all()
        await committer.aclose()


async def test_a_group_of_other_executions_commits_while_one_is_in_flight() -> None:
    async with _committer(2) as (committer, storage):
        a = committer.submit(_step("e1", "a"))
        await _turns()
        b = committer.submit(_step("e2", "b"))
        await _turns()
        assert storage.flying == ["a", "b"]
        storage.land("b")
        assert (await b).applied == []
        assert not a.done()
        storage.land("a")
        await a


async def test_a_write_of_an_execution_in_flight_waits_for_its_group() -> None:
    async with _committer(2) as (committer, storage):
        a = committer.submit(_step("e1", "a"))
        await _turns()
        again = committer.submit(_step("e1", "again"))  # e.g. an event sent right after the step
        other = committer.submit(_step("e2", "other"))  # another execution's: need not wait behind it
        await _turns()
        assert storage.flying == ["a", "other"]
        storage.land("other")
        await other
        await _turns()
        assert storage.flying == ["a"]  # "again" still waits for "a"
        storage.land("a")
        await a
        await _turns()
        assert storage.flying == ["again"]
        storage.land("again")
        await again


@pytest.mark.parametrize(
    "shared",
    [
        Batch(state={"slots:k": {"holders": []}}),  # a compare-and-set's key: a round's decision
        Batch(events=[EventRecord("e3", "job", "shared", {}, 0)], fences={"e2": 1}),  # another execution's event
        Batch(updates=[ExecutionUpdate("e3", {"status": "pending"})], events=[EventRecord("e2", "job", "shared", {}, 0)], fences={"e2": 1}),
    ],
    ids=["state", "unfenced-event", "unfenced-update"],
)
async def test_a_write_that_may_touch_anything_goes_alone(shared: Batch) -> None:
    async with _committer(2) as (committer, storage):
        a = committer.submit(_step("e1", "a"))
        await _turns()
        s = committer.submit(shared)
        later = committer.submit(_step("e4", "later"))  # queued after it: does not pass it
        await _turns()
        assert storage.flying == ["a"]  # waits for the group in flight
        storage.land("a")
        await a
        await _turns()
        assert len(storage.flying) == 1 and "later" in storage.flying[0]  # they share the next group
        name = storage.flying[0]
        beside = committer.submit(_step("e5", "beside"))
        await _turns()
        assert storage.flying == [name]  # nothing goes beside it
        storage.land(name)
        await asyncio.gather(s, later)
        await _turns()
        assert storage.flying == ["beside"]
        storage.land("beside")
        await beside


def test_beside_a_group_in_flight_writes_of_other_executions_pass_a_blocked_one() -> None:
    """An execution's writes keep their order; another's need not wait behind them."""
    queue: list[Item] = [(_step("e1", "e1-second"), None), (_step("e2", "e2"), None), (_step("e1", "e1-third"), None), (_step("e3", "e3"), None)]
    group, rest, touched = take_beside(queue, {"e1"})
    assert [b.events[0].type for b, _ in group] == ["e2", "e3"]
    assert [b.events[0].type for b, _ in rest] == ["e1-second", "e1-third"]
    assert touched == {"e2", "e3"}
    # Behind one left for its own execution, a later write of another execution it touches waits too.
    both = Batch(events=[EventRecord("e1", "job", "e1+e4", {}, 0), EventRecord("e4", "job", "e1+e4", {}, 0)], fences={"e1": 1, "e4": 1})
    queue = [(both, None), (_step("e4", "e4"), None), (_step("e5", "e5"), None)]
    group, rest, _ = take_beside(queue, {"e1"})
    assert [b.events[0].type for b, _ in group] == ["e5"] and len(rest) == 2
    # A write that may touch anything ends the scan: nothing after it passes it.
    shared = Batch(state={"slots:k": None})
    queue = [(_step("e2", "e2"), None), (shared, None), (_step("e3", "e3"), None)]
    group, rest, _ = take_beside(queue, {"e1"})
    assert [b.events[0].type for b, _ in group] == ["e2"] and len(rest) == 2


async def test_depth_one_commits_one_group_at_a_time() -> None:
    async with _committer(1) as (committer, storage):
        a = committer.submit(_step("e1", "a"))
        await _turns()
        b = committer.submit(_step("e2", "b"))
        await _turns()
        assert storage.flying == ["a"]
        storage.land("a")
        storage.land("b")
        await asyncio.gather(a, b)
        assert storage.most == 1


async def test_flush_waits_for_every_group_in_flight() -> None:
    async with _committer(2) as (committer, storage):
        committer.send(_step("e1", "a"))
        await _turns()
        committer.send(_step("e2", "b"))
        flushed = asyncio.ensure_future(committer.flush())
        await _turns()
        storage.land("a")
        await _turns()
        assert not flushed.done()  # "b" still in flight
        storage.land("b")
        await flushed


@pytest.mark.parametrize("kind", ["postgres"])
async def test_on_postgresql_groups_overlap_and_each_execution_keeps_its_order(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    """Real transactions two at a time: every execution's events are stored in the
    order it wrote them, each once, and every job completes with its steps' outputs."""
    storage = make_storage()
    assert storage.commit_pipeline == 2
    commit = storage.commit
    flying, most, calls = [0], [0], [0]
    overlapped = asyncio.Event()

    async def counting(batch: Batch) -> CommitResult:
        if batch.creates_only():  # the inserts' lane: beside the main one anyway
            return await commit(batch)
        flying[0] += 1
        most[0] = max(most[0], flying[0])
        if flying[0] >= 2:
            overlapped.set()
        try:
            if own(batch) is not None and not calls[0]:  # one slow group: the next wave's writes queue meanwhile
                calls[0] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(overlapped.wait(), 5)
            return await commit(batch)
        finally:
            flying[0] -= 1

    storage.commit = counting  # type: ignore[method-assign]

    @create_job(name="three")
    async def three(n: int) -> int:
        total = 0
        for i in range(3):
            total += await run(f"s{i}", lambda i=i: n + i)
        return total

    queue = make_queue([three], storage=storage)
    async with queue:
        runtime = await queue.started()
        executions = []
        for wave in range(8):  # waves a commit apart: executions at different steps write at once
            executions += await queue.jobs.three.start_many(list(range(wave * 50, wave * 50 + 50)))
            await asyncio.sleep(0.004)
        done = await runtime.all_settled([e.id for e in executions])
    assert [r.output for r in done] == [3 * n + 3 for n in range(400)]
    assert most[0] >= 2  # two of the main lane's groups were in flight at once
    check = make_storage()
    await check.open()
    try:
        for execution in executions[::20]:
            events = await check.read_events(execution_id=execution.id)
            seqs = [ev.seq for ev in events]
            assert seqs == sorted(set(seqs))
            kinds = [ev.type for ev in events]
            assert kinds[0] == "trigger" and kinds[1] == "start" and kinds[-1] == "success", kinds
            step_kinds = [k for k in kinds if k.startswith("step_")]
            assert len(step_kinds) == 6 and step_kinds[::2] == ["step_start"] * 3, kinds
    finally:
        await check.aclose()


def test_a_small_postgresql_pool_commits_one_group_at_a_time() -> None:
    """A second group must not wait in a pool of a few connections for the one a read needs."""
    assert SqlStorage.postgres("postgresql://u@h/db", max_connections=3).commit_pipeline == 1
    assert SqlStorage.postgres("postgresql://u@h/db", max_connections=4).commit_pipeline == 2
