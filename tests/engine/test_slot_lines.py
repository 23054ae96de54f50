"""A slot's line is stored a row per waiter (`slot_lines.py`): a take or a release
writes the small head and the rows that change, never the whole line, on every
adapter; a line read back is the line written; a head written before this layout
(its line inline) is read as it is and moved into rows by the next write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from dq import Queue, create_job, run
from dq.engine import slot_lines
from dq.engine.limits import Limit
from dq.engine.slot_requests import Request as SlotRequest
from dq.engine.slot_requests import Round, copy_state, decide, leave, state_key
from dq.engine.storage.base import Batch, Storage
from dq.engine.storage.conditions import lock_keys
from dq.engine.storage.memory import MemoryStorage

from .conftest import live_peer
from .test_admission import _is
from .test_lifecycle import status_is, until

KEY = state_key(Limit("resize", 1))
LINE = KEY + slot_lines.LINE


def _record(storage: Storage) -> list[Batch]:
    """Every batch the storage commits from now on."""
    seen: list[Batch] = []
    if storage.synchronous_commit:
        now = storage.commit_now

        def commit_now(batch: Batch) -> Any:
            seen.append(batch)
            return now(batch)

        storage.commit_now = commit_now  # type: ignore[method-assign]
    else:
        commit = storage.commit

        async def recording(batch: Batch) -> Any:
            seen.append(batch)
            return await commit(batch)

        storage.commit = recording  # type: ignore[method-assign]
    return seen


async def test_each_waiter_costs_two_row_writes_and_the_head_stays_small(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    gate = asyncio.Event()
    order: list[int] = []

    @create_job(name="resize", concurrency=1)
    async def resize(n: int) -> None:
        if n == 0:
            await run("block", gate.wait)
        order.append(n)

    queue = make_queue([resize])
    writes = _record(queue.storage)
    # Another live process: the key is shared, its line stored (alone, it is kept in memory).
    async with live_peer(make_storage()), queue:
        first = await queue.jobs.resize.start(0)
        await until(lambda: status_is(first, "running"))
        backlog = [await queue.jobs.resize.start(n) for n in range(1, 41)]

        async def line() -> list[str]:
            state = await slot_lines.read(queue.storage.get_state, queue.storage.list_state, [KEY])
            return [w[2] for w in (state.get(KEY) or {}).get("waiters", [])]

        await until(lambda: _is(line(), [e.id for e in backlog]))  # in line, in order
        gate.set()
        for e in [first, *backlog]:
            await e.result()
        assert await queue.storage.list_state(LINE) == {}
    assert order == list(range(41))
    heads = [b.state[KEY] for b in writes if b.state.get(KEY) is not None]
    assert heads and all("waiters" not in h and len(json.dumps(h)) < 300 for h in heads)
    rows = [(k, v) for b in writes for k, v in b.state.items() if k.startswith(LINE)]
    # Each of the 40 put in line once and taken out once: O(1) per waiter, not O(line).
    assert sorted(k for k, v in rows if v is not None) == sorted(LINE + e.id for e in backlog)
    assert sorted(k for k, v in rows if v is None) == sorted(LINE + e.id for e in backlog)


async def test_a_head_with_its_line_inline_is_read_and_moved_into_rows() -> None:
    storage = MemoryStorage()
    limit = Limit("resize", 1)
    old = {
        "limit": 1,
        "holders": ["a"],
        "waiters": [[0, 2, "b"], [0, 3, "c"]],
    }  # written before rows
    storage.commit_now(Batch(state={KEY: old}))
    before = await slot_lines.read(storage.get_state, storage.list_state, [KEY])
    assert before == {KEY: old}
    work = {KEY: copy_state(before[KEY])}
    rnd = Round(1_000)
    assert not decide(SlotRequest("d", (0, 4), (limit,)), work, rnd, far_ms=30_000).ok
    leave(work, KEY, "a", rnd)  # b gets the slot
    batch = Batch()
    slot_lines.write(batch, {KEY: work[KEY]}, before, [KEY], rnd)
    assert batch.expect == {KEY: old}  # the stored head, as it is
    assert batch.state[LINE + "c"] == [0, 3, "c"] and batch.state[LINE + "d"] == [0, 4, "d"]
    storage.commit_now(batch)
    stored = await storage.get_state([KEY])
    assert (
        "waiters" not in stored[KEY] and stored[KEY]["holders"] == ["b"] and stored[KEY]["n"] == 2
    )
    after = await slot_lines.read(storage.get_state, storage.list_state, [KEY])
    assert after[KEY]["waiters"] == [[0, 3, "c"], [0, 4, "d"]]


async def test_a_line_read_after_its_head_changed_loses_its_compare_and_set() -> None:
    storage = MemoryStorage()
    limit = Limit("resize", 1)
    rnd = Round(1_000)
    work: dict[str, Any] = {KEY: None}
    for i, holder in enumerate(["a", "b", "c"]):
        decide(SlotRequest(holder, (0, i), (limit,)), work, rnd, far_ms=30_000)
    batch = Batch()
    slot_lines.write(batch, {KEY: work[KEY]}, {}, [KEY], rnd)
    storage.commit_now(batch)
    # A reader takes the head; before it reads the line, another writer changes it.
    head = (await storage.get_state([KEY]))[KEY]
    seen = await slot_lines.read(storage.get_state, storage.list_state, [KEY])
    work2 = {KEY: copy_state(seen[KEY])}
    rnd2 = Round(1_001)
    leave(work2, KEY, "a", rnd2)
    other = Batch()
    slot_lines.write(other, {KEY: work2[KEY]}, seen, [KEY], rnd2)
    assert not storage.commit_now(other).conflict
    # A round decided on the first head (with the newer line) expects that head: it loses.
    stale = {KEY: {**head, "waiters": [[0, 2, "c"]]}}
    work3 = {KEY: copy_state(stale[KEY])}
    rnd3 = Round(1_002)
    leave(work3, KEY, "a", rnd3)
    late = Batch()
    slot_lines.write(late, {KEY: work3[KEY]}, stale, [KEY], rnd3)
    assert storage.commit_now(late).conflict


class _Resize:
    """A job of `concurrency=2` whose executions block on `gate`, counting how many run at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = self.peak = 0

        @create_job(name="resize", concurrency=2, retry=0)
        async def resize(n: int) -> int:
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await run("block", self.gate.wait)
            finally:
                self.running -= 1
            return n

        self.job = resize


async def _line(queue: Queue) -> list[str]:
    """The key's line: stored, or in the queue's memory while its process keeps the key."""
    kept = queue.runtime.flow.ledger.kept
    if KEY in kept:
        st = kept[KEY] or {}
    else:
        st = (await slot_lines.read(queue.storage.get_state, queue.storage.list_state, [KEY])).get(KEY) or {}
    return [w[2] for w in st.get("waiters", [])]


async def test_a_bulk_start_is_admitted_in_one_round(make_queue: Callable[..., Queue]) -> None:
    r = _Resize()
    queue = make_queue([r.job])
    async with queue:
        ledger = queue.runtime.flow.ledger
        before = ledger.rounds
        executions = await queue.jobs.resize.start_many(range(30))
        if not queue.storage.synchronous_commit:  # memory admits as the dispatcher claims, in rounds
            assert ledger.rounds - before == 1  # not one decision and one write per execution
        await until(lambda: _is(_line(queue), [e.id for e in executions[2:]]))  # in creation order
        r.gate.set()
        assert [await e.result() for e in executions] == list(range(30))
    assert r.peak == 2


async def test_concurrent_starts_are_decided_in_one_round_not_one_each(make_queue: Callable[..., Queue]) -> None:
    """`gather` of `start()` calls under a limit: the first is decided at once, the ones
    that come in the same turn of the loop together in one round (one decision pass
    and one write for them all, not one each); the limit holds and the line keeps
    their order."""
    r = _Resize()
    queue = make_queue([r.job], poll_interval="10 minutes")
    async with queue:
        job: Any = queue.jobs.resize
        ledger = queue.runtime.flow.ledger
        before = ledger.rounds
        executions = await asyncio.gather(*(job.start(i) for i in range(30)))
        if ledger.at_once:  # memory decides in rounds anyway
            assert ledger.rounds - before <= 2  # it was 30: a decision and a write each
        await until(lambda: _is(_line(queue), [e.id for e in executions[2:]]))
        await until(lambda: r.running == 2)
        r.gate.set()
        assert [await e.result() for e in executions] == list(range(30))
    assert r.peak == 2


def test_a_commit_locks_the_slot_head_not_each_row_of_its_line() -> None:
    """PostgreSQL serialises compare-and-sets on one advisory lock per state key: a
    waiter's row is written only beside its slot's head, whose lock orders them."""
    head = KEY
    rows = {LINE + h: [0, i, h] for i, h in enumerate(("e1", "e2"))}
    assert lock_keys({head: None}, {head: {"n": 2}, **rows}) == [head]
    # A row without its head in the batch (never written so) keeps its own lock.
    assert lock_keys({}, {LINE + "e3": None}) == [LINE + "e3"]
    # A limit whose own key contains the separator is a head like any other.
    odd = "slots:a|w|b"
    assert lock_keys({odd: None}, {odd: {}, odd + "|w|e1": [0, 1, "e1"], "rate:x": 1}) == ["rate:x", odd]
    assert lock_keys({"throttle:t": None}, {"throttle:t": 1}) == ["throttle:t"]
