"""SQLite's commit runs start to end without suspending (sql_sqlite._SyncIO): a
small one on the event loop's thread, a large one (or one that must wait for
another process's write) as one call in aiosqlite's thread; atomic when it fails
half-way, with WAL checkpoints of its own, and still one writer at a time across
processes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from dq.engine.ids import now_ms
from dq.engine.storage.base import Batch, EventRecord, ExecutionRecord, StepRecord
from dq.engine.storage.sql import SqlStorage
from dq.engine.storage.sql_sqlite import SqliteStorage, _run_to_end

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def storage(tmp_path: Path) -> Any:
    s = SqlStorage.sqlite(str(tmp_path / "dq.db"))
    await s.open()
    assert isinstance(s, SqliteStorage)
    yield s
    await s.aclose()


def _batch(eid: str, *, event: str = "created") -> Batch:
    now = now_ms()
    return Batch(
        executions=[ExecutionRecord(eid, "job", "running", token=1, created_at=now, run_at=now)],
        steps=[StepRecord(eid, "s", "s", "run", "completed", output=1, started_at=now, completed_at=now)],
        events=[EventRecord(eid, "job", event, {}, now)],
        state={f"k:{eid}": 1},
    )


async def _nothing_of(storage: SqliteStorage, eid: str) -> bool:
    return (
        await storage.get_execution(eid) is None
        and await storage.get_steps(eid) == []
        and await storage.get_state([f"k:{eid}"]) == {}
        and await storage.read_events(execution_id=eid) == []
    )


async def test_a_commit_failing_half_way_leaves_nothing_written(storage: SqliteStorage) -> None:
    # The events go in last, after the execution, step and state rows of the same batch.
    async with storage.engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.type = 'refused'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    with pytest.raises(DBAPIError, match="refused by the test"):
        await storage.commit(_batch("e1", event="refused"))
    assert await _nothing_of(storage, "e1")
    # The writer connection is left clean: the next commit goes through.
    result = await storage.commit(_batch("e2"))
    assert [ev.seq for ev in result.events] == [1]
    assert (await storage.get_execution("e2")) is not None


async def test_a_duplicate_execution_is_refused_and_rolled_back(storage: SqliteStorage) -> None:
    await storage.commit(_batch("e1"))
    batch = _batch("e1")
    batch.state = {"k:other": 1}
    with pytest.raises(ValueError, match="already exists"):
        await storage.commit(batch)
    assert await storage.get_state(["k:other"]) == {}


def test_run_to_end_refuses_a_coroutine_that_suspends() -> None:
    async def suspends() -> int:
        await asyncio.sleep(0)
        return 1

    async def finishes() -> int:
        return 2

    assert _run_to_end(finishes()) == 2
    with pytest.raises(RuntimeError, match="suspended"):
        _run_to_end(suspends())


async def test_a_commit_that_would_suspend_is_rolled_back(
    storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = storage._read_touched

    async def suspending_read(*args: Any) -> Any:
        out = await read(*args)
        await asyncio.sleep(0)  # would need the event loop, which is not in this thread
        return out

    monkeypatch.setattr(storage, "_read_touched", suspending_read)
    with pytest.raises(RuntimeError, match="suspended"):
        await storage.commit(_batch("e1"))
    monkeypatch.undo()
    assert await _nothing_of(storage, "e1")
    await storage.commit(_batch("e2"))
    assert (await storage.get_execution("e2")) is not None


async def _driver_calls(storage: SqliteStorage, writes: Callable[[], Awaitable[Any]]) -> int:
    """How many callables `writes` queued to aiosqlite's thread (hops there and back)."""
    _, driver = await storage._writer()
    queue, calls = driver._tx, []

    class Counting:
        def put_nowait(self, item: Any) -> None:
            calls.append(item)
            queue.put_nowait(item)

    driver._tx = Counting()
    try:
        await writes()
    finally:
        driver._tx = queue
    return len(calls)


async def test_a_small_commit_runs_on_the_loop_a_large_one_in_one_call_on_the_driver_thread(
    storage: SqliteStorage,
) -> None:
    async def small() -> None:
        for i in range(3):
            await storage.commit(_batch(f"e{i}"))

    now = now_ms()
    ids = [f"big{i:03}" for i in range(120)]
    big = Batch(
        executions=[ExecutionRecord(i, "job", "pending", created_at=now, run_at=now) for i in ids],
        events=[EventRecord(i, "job", "created", {}, now) for i in ids],
    )

    async def large() -> None:
        await storage.commit(big)

    assert await _driver_calls(storage, small) == 0
    assert await _driver_calls(storage, large) == 1
    assert len(await storage.read_events(limit=1000)) == 3 + 120


def _count_checkpoints(storage: SqliteStorage) -> list[int]:
    """A list that grows by one each time the storage starts a WAL checkpoint."""
    runs: list[int] = []
    checkpoint = storage._checkpoint

    async def counted() -> None:
        runs.append(1)
        await checkpoint()

    storage._checkpoint = counted  # type: ignore[method-assign]
    return runs


async def test_the_wal_is_checkpointed_beside_the_writes(storage: SqliteStorage) -> None:
    """The write connection checkpoints nothing itself (inline, it would stall the loop):
    a PASSIVE checkpoint runs in the driver's thread every hundred commits, as the writer's turn."""
    runs = _count_checkpoints(storage)
    for i in range(250):
        await storage.commit(_batch(f"e{i}"))
        await asyncio.sleep(0)  # an inline commit does not suspend: the loop turns between them, as in a queue
    await asyncio.sleep(0.1)
    assert len(runs) == 2
    check = sqlite3.connect(storage.path)
    try:
        busy, frames, done = check.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        check.close()
    # What is left in the WAL is what came after the last checkpoint's start: about 50
    # commits' pages, not 250 (the WAL file is reused from its start once checkpointed).
    assert busy == 0 and frames == done and frames < 200 * 5, frames


async def test_writes_besides_commits_count_towards_a_checkpoint(storage: SqliteStorage) -> None:
    """An idle process still writes (heartbeats, lease renewals): its WAL is checkpointed too."""
    runs = _count_checkpoints(storage)
    for i in range(100):
        await storage.heartbeat("w1", {"n": i})
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    assert len(runs) == 1


async def test_a_claim_is_one_call_and_filters_by_any_number_of_jobs(storage: SqliteStorage) -> None:
    now = now_ms()
    jobs = ["a", "b", "c", "d"]
    await storage.commit(Batch(executions=[
        ExecutionRecord(f"{job}{i}", job, "pending", created_at=now, run_at=now - i) for job in jobs for i in range(2)
    ]))  # fmt: skip
    claimed: list[list[str]] = []

    async def claims() -> None:
        for names, others in ((["a"], []), (["a", "b", "c"], ["b"]), (None, ["c"]), (None, [])):
            recs = await storage.claim("w", limit=10, lease_ms=60_000, job_names=names, exclude_jobs=others)
            claimed.append([r.id for r in recs])

    assert await _driver_calls(storage, claims) == 4
    # Oldest run_at first (ids sort the ties), each execution claimed once.
    assert claimed == [["a1", "a0"], ["c1", "c0"], ["b1", "d1", "b0", "d0"], []]
    rec = await storage.get_execution("d0")
    assert rec is not None and rec.status == "running" and rec.worker_id == "w" and rec.token == 1
    assert rec.lease_until is not None and rec.lease_until >= now + 60_000


async def test_a_commit_waits_for_another_connections_write_off_the_loop(
    storage: SqliteStorage,
) -> None:
    other = sqlite3.connect(storage.path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO state (key, value) VALUES ('other', '1')")
        commit = asyncio.ensure_future(storage.commit(_batch("e1")))
        # The commit waits in SQLite's busy handler, in the driver's thread: the
        # event loop keeps running meanwhile.
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert not commit.done()
        other.execute("COMMIT")
        result = await commit
    finally:
        other.close()
    assert [ev.seq for ev in result.events] == [1]
    assert await storage.get_state(["other", "k:e1"]) == {"other": 1, "k:e1": 1}


_WRITER = """
import asyncio, sys
from dq.engine.ids import now_ms
from dq.engine.storage.base import Batch, EventRecord
from dq.engine.storage.sql import SqlStorage

async def main(path: str, name: str, n: int) -> None:
    s = SqlStorage.sqlite(path)
    await s.open()
    done = 0
    while done < n:
        v = (await s.get_state(["counter"]))["counter"]
        result = await s.commit(Batch(
            events=[EventRecord(None, None, name, {"i": done}, now_ms())],
            state={"counter": v + 1}, expect={"counter": v},
        ))
        done += not result.conflict
    await s.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.slow
async def test_writers_in_several_processes_still_serialise(storage: SqliteStorage) -> None:
    n = 60
    await storage.commit(Batch(state={"counter": 0}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = (sys.executable, "-c", _WRITER, storage.path)
    procs = [
        await asyncio.create_subprocess_exec(*args, f"p{i}", str(n), env=env, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    mine = 0
    while mine < n:  # this process writes too, meanwhile
        v = (await storage.get_state(["counter"]))["counter"]
        result = await storage.commit(Batch(
            events=[EventRecord(None, None, "here", {"i": mine}, now_ms())],
            state={"counter": v + 1}, expect={"counter": v},
        ))  # fmt: skip
        mine += not result.conflict
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    # Every compare-and-set that succeeded saw the one before it, and the log's
    # seqs were handed out one writer at a time: no gap, no duplicate.
    assert await storage.get_state(["counter"]) == {"counter": 3 * n}
    events = await storage.read_events(limit=10 * n)
    assert [ev.seq for ev in events] == list(range(1, 3 * n + 1))
    for name in ("here", "p0", "p1"):
        assert [ev.data["i"] for ev in events if ev.type == name] == list(range(n))
