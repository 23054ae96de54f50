"""Group commit of chained compare-and-sets: a batch that expects exactly what an
earlier batch of the group writes (the admission ledger's next round, decided on the
one before) shares its transaction; if the first loses, so does the second."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dq.engine.commit_groups import take_group
from dq.engine.committer import Committer
from dq.engine.storage.base import Batch, CommitResult, Storage
from dq.engine.storage.memory import MemoryStorage


def _cas(key: str, before: Any, after: Any) -> Batch:
    return Batch(state={key: after}, expect={key: before})


def test_a_batch_expecting_what_an_earlier_one_writes_joins_its_group() -> None:
    queue: list[tuple[Batch, Any]] = [(_cas("k", None, 1), None), (_cas("k", 1, 2), None), (_cas("k", 2, 3), None)]
    group, rest = take_group(queue)
    assert len(group) == 3 and rest == []


def test_a_batch_expecting_anything_else_of_a_written_key_starts_a_new_group() -> None:
    queue: list[tuple[Batch, Any]] = [(_cas("k", None, 1), None), (_cas("k", 7, 2), None)]
    group, rest = take_group(queue)
    assert len(group) == 1 and len(rest) == 1
    # A blind write of a key an earlier batch expects must not join either.
    queue = [(_cas("k", None, 1), None), (Batch(state={"k": 5}), None)]
    group, rest = take_group(queue)
    assert len(group) == 1 and len(rest) == 1


async def _commit_together(storage: Storage, batches: list[Batch]) -> tuple[list[CommitResult], int]:
    """Queue `batches` at once; the results and how many storage transactions they took."""
    calls = [0]
    commit = storage.commit

    async def counting(batch: Batch) -> CommitResult:
        calls[0] += 1
        return await commit(batch)

    storage.commit = counting  # type: ignore[method-assign]
    committer = Committer(storage, lambda _events: None)
    committer.start()
    try:
        futures = [committer.submit(b) for b in batches]
        results = [await f for f in futures]
    finally:
        await committer.aclose()
        storage.commit = commit  # type: ignore[method-assign]
    return results, calls[0]


async def test_chained_compare_and_sets_commit_in_one_transaction(make_storage: Callable[[], Storage]) -> None:
    storage = make_storage()
    await storage.open()
    try:
        results, transactions = await _commit_together(storage, [_cas("slots:x", None, {"n": 1}), _cas("slots:x", {"n": 1}, {"n": 2})])
        assert [r.conflict for r in results] == [False, False]
        assert (await storage.get_state(["slots:x"]))["slots:x"] == {"n": 2}
        if not storage.synchronous_commit:
            assert transactions == 1
        # The first expects what is no longer there: neither applies.
        results, _ = await _commit_together(storage, [_cas("slots:x", None, {"n": 9}), _cas("slots:x", {"n": 9}, {"n": 10})])
        assert [r.conflict for r in results] == [True, True]
        assert (await storage.get_state(["slots:x"]))["slots:x"] == {"n": 2}
    finally:
        await storage.aclose()


async def test_what_a_commit_wakes_joins_the_writes_queued_meanwhile() -> None:
    """A writer woken by a commit queues its next write a loop turn or two later (a
    slot handed on starts its holder in the second turn): that write joins the next
    group with the ones queued while the commit ran, instead of waiting for the
    transaction after (limited jobs' chains would otherwise alternate out of phase)."""
    groups: list[list[str]] = []
    release = asyncio.Event()

    class Slow(MemoryStorage):
        synchronous_commit = False

        async def commit(self, batch: Batch) -> CommitResult:
            groups.append(sorted(batch.state))
            if len(groups) == 1:
                await release.wait()
            return CommitResult()

    committer = Committer(Slow(), lambda _events: None)
    committer.start()
    try:
        first = committer.submit(Batch(state={"a": 1}))
        await asyncio.sleep(0)
        meanwhile = committer.submit(Batch(state={"b": 1}))  # queued while "a" commits

        async def woken() -> None:
            await first
            await asyncio.sleep(0)  # a second turn, as a handed-over slot's holder starts
            await committer.submit(Batch(state={"c": 1}))

        task = asyncio.create_task(woken())
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(task, meanwhile)
    finally:
        await committer.aclose()
    assert groups == [["a"], ["b", "c"]]
