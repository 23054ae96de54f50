"""Fire-and-forget sends queued while a commit runs share one queued batch (fewer
objects waiting, fewer items to group), and their writes keep their order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dq.engine.committer import Committer
from dq.engine.storage.base import Batch, CommitResult, EventRecord, Storage
from dq.engine.storage.memory import MemoryStorage


def _ev(execution_id: str, type: str) -> EventRecord:
    return EventRecord(execution_id, "job", type, {"n": 1}, 0)


def _send(eid: str, type: str, token: int = 1) -> Batch:
    return Batch(events=[_ev(eid, type)], fences={eid: token})


async def test_sends_queued_meanwhile_share_a_batch_unless_they_must_not() -> None:
    groups: list[list[tuple[str, list[str], dict[str, int]]]] = []
    release = asyncio.Event()

    class Slow(MemoryStorage):
        synchronous_commit = False

        async def commit(self, batch: Batch) -> CommitResult:
            if not groups:
                groups.append([])
                await release.wait()
            return CommitResult()

    committer = Committer(Slow(), lambda _events: None)
    seen: list[list[tuple[list[str], dict[str, int]]]] = []
    group_commit = committer._commit_group

    async def recording(items: list[tuple[Batch, asyncio.Future[CommitResult] | None]]) -> None:
        seen.append([([e.type for e in b.events], dict(b.fences)) for b, _ in items])
        await group_commit(items)

    committer._main._commit_group = recording  # type: ignore[method-assign]
    committer.start()
    try:
        first = committer.submit(Batch(state={"a": 1}))
        await asyncio.sleep(0)  # "a" commits, and waits
        committer.send(_send("x", "1"))
        committer.send(_send("y", "2"))  # joins "1"
        committer.send(_send("x", "3", token=2))  # a fresh holder of x: not with "1"
        committer.send(Batch(state={"k": 1}, events=[_ev("z", "4")]))  # state: its own
        committer.send(_send("z", "5"))  # not into a batch with state
        awaited = committer.submit(_send("w", "6"))  # the caller's batch: never extended
        committer.send(_send("w", "7"))
        committer.send(_send("v", "8"))  # joins "7"
        release.set()
        await asyncio.gather(first, awaited)
        await committer.flush()
    finally:
        await committer.aclose()
    items = [item for group in seen[1:] for item in group]
    assert [types for types, _ in items] == [["1", "2"], ["3"], ["4"], ["5"], ["6"], ["7", "8"]]
    assert items[0][1] == {"x": 1, "y": 1} and items[1][1] == {"x": 2}


async def test_merged_sends_are_stored_in_order(make_storage: Callable[[], Storage]) -> None:
    storage = make_storage()
    await storage.open()
    committer = Committer(storage, lambda _events: None)
    committer.start()
    try:
        blocker = committer.submit(Batch(events=[EventRecord(None, "job", "0", {}, 0)]))
        for i in range(1, 6):  # queued while the first commits (or at once, synchronously)
            committer.send(Batch(events=[EventRecord(None, "job", str(i), {"i": i}, 0)]))
        await blocker
        await committer.flush()
    finally:
        await committer.aclose()
    try:
        events = [e for e in await storage.read_events() if e.job_name == "job"]
        assert [e.type for e in events] == [str(i) for i in range(6)]
        assert [e.data for e in events][1:] == [{"i": i} for i in range(1, 6)]
        assert [e.seq for e in events] == sorted(e.seq for e in events)
    finally:
        await storage.aclose()


async def test_a_holders_writes_join_the_queued_send_without_a_batch_of_their_own() -> None:
    """`queued_send` hands out the send waiting last (fenced for the holder) on an
    adapter that commits later; a stale holder, a send with state or an awaited batch
    last in line get None: the caller makes a Batch of its own."""
    release = asyncio.Event()

    class Slow(MemoryStorage):
        synchronous_commit = False

        async def commit(self, batch: Batch) -> CommitResult:
            await release.wait()
            return await super().commit(batch)

    committer = Committer(Slow(), lambda _events: None)
    committer.start()
    try:
        assert committer.queued_send("x", 1) is None  # nothing queued
        first = committer.submit(Batch(events=[_ev("a", "0")], fences={"a": 1}))
        await asyncio.sleep(0)  # it commits, and waits
        assert committer.queued_send("x", 1) is None  # nothing queued behind it
        committer.send(_send("x", "1"))
        tail = committer.queued_send("y", 1)
        assert tail is not None and tail.fences == {"x": 1, "y": 1}
        tail.events.append(_ev("y", "2"))
        assert committer.queued_send("x", 2) is None  # a fresh holder of x: not with x's stale one
        assert committer.queued_send("x", 1) is tail
        awaited = committer.submit(_send("z", "3"))
        assert committer.queued_send("z", 1) is None  # the caller's batch: never extended
        committer.send(Batch(state={"k": 1}))
        assert committer.queued_send("w", 1) is None  # not into a batch with state
        assert committer._main._queue[0][0].events == [_ev("x", "1"), _ev("y", "2")]
        release.set()
        await asyncio.gather(first, awaited)
        await committer.flush()
    finally:
        await committer.aclose()
