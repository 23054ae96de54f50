"""Pipelined group commit (`Storage.commit_pipeline` > 1): the next group commits
while the previous one is in flight only when it touches nothing that one touches
(its batches' own fenced executions); anything else waits until nothing is in
flight, and nothing queued after it passes it."""

from __future__ import annotations

import asyncio

import pytest

from dq.engine.committer import Committer
from dq.engine.storage.base import Batch, CommitResult, EventRecord, ExecutionUpdate
from dq.engine.storage.memory import MemoryStorage


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
        self.open = False

    async def commit(self, batch: Batch) -> CommitResult:
        name = "+".join(sorted({ev.type for ev in batch.events} | set(batch.state)))
        self.started.append(name)
        self.flying.append(name)
        self.most = max(self.most, len(self.flying))
        gate = self.gates.setdefault(name, asyncio.Event())
        if not self.open:
            await gate.wait()
        self.flying.remove(name)
        return CommitResult(applied=[True] * len(batch.updates))

    def land(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()

    def land_all(self) -> None:
        """Let every commit end (before closing: `aclose` flushes)."""
        self.open = True
        for gate in self.gates.values():
            gate.set()


def _step(eid: str, name: str) -> Batch:
    """A step's batch: its event, fenced by its own execution."""
    return Batch(events=[EventRecord(eid, "job", name, {}, 0)], fences={eid: 1})


async def _turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _committer(depth: int) -> tuple[Committer, Gated]:
    storage = Gated(depth)
    committer = Committer(storage, lambda _events: None)
    committer.start()
    await _turns()
    return committer, storage


async def test_a_group_of_other_executions_commits_while_one_is_in_flight() -> None:
    committer, storage = await _committer(2)
    try:
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
    finally:
        storage.land_all()
        await committer.aclose()


async def test_a_write_of_an_execution_in_flight_waits_for_its_group() -> None:
    committer, storage = await _committer(2)
    try:
        a = committer.submit(_step("e1", "a"))
        await _turns()
        again = committer.submit(_step("e1", "again"))  # e.g. an event sent right after the step
        other = committer.submit(_step("e2", "other"))  # queued after it: does not pass it
        await _turns()
        assert storage.flying == ["a"]
        storage.land("a")
        await a
        await _turns()
        assert storage.started == ["a", "again+other"]
        storage.land("again+other")
        await asyncio.gather(again, other)
    finally:
        storage.land_all()
        await committer.aclose()


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
    committer, storage = await _committer(2)
    try:
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
    finally:
        storage.land_all()
        await committer.aclose()


async def test_depth_one_commits_one_group_at_a_time() -> None:
    committer, storage = await _committer(1)
    try:
        a = committer.submit(_step("e1", "a"))
        await _turns()
        b = committer.submit(_step("e2", "b"))
        await _turns()
        assert storage.flying == ["a"]
        storage.land("a")
        storage.land("b")
        await asyncio.gather(a, b)
        assert storage.most == 1
    finally:
        storage.land_all()
        await committer.aclose()


async def test_flush_waits_for_every_group_in_flight() -> None:
    committer, storage = await _committer(2)
    try:
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
    finally:
        storage.land_all()
        await committer.aclose()
