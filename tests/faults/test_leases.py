"""Leases and fencing with real processes.

Worker A starts executions and holds them (1 s leases, renewed by its heartbeat)
inside step 2, while worker B serves the same store. Then:
1. While A is healthy its leases are renewed and B takes nothing, also when the
   two processes' clocks disagree by hours (PostgreSQL and Redis: A's clock runs
   an hour slow, B's an hour fast): expiry is decided on the storage's clock.
2. A is frozen (SIGSTOP) past its lease: B reclaims the executions on the storage
   clock and finishes them from A's last completed step.
3. A is resumed (SIGCONT) and finishes its step 2: storage refuses that late write
   (stale fencing token), A stops there. Nothing is duplicated: B's step records
   stand, steps after 2 ran once (in B), each execution succeeded once.

SQLite keeps no clock of its own (the host's is the storage clock, one host), so
its run has no skew.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dq.engine.ids import now_ms
from dq.engine.storage.base import Batch, EventRecord, ExecutionQuery, ExecutionRecord
from dq.engine.storage.sql import SqlStorage

from .conftest import Store, Worker, Workers, lines, read_effects, wait_until

N = 3
HOUR_MS = 3_600_000


@pytest.mark.slow
async def test_frozen_holder_is_reclaimed_and_its_late_writes_refused(
    store: Store, workers: Workers, tmp_path: Path
) -> None:
    storage = await store.open()
    skew = store.kind != "sqlite"
    b = workers.spawn(store, "serve", "five_steps", 0, env={
        "DQ_LEASE": "1s", "DQ_NO_BLOCK": "1", **({"DQ_CLOCK_SKEW_MS": str(HOUR_MS)} if skew else {}),
    })  # fmt: skip
    await b.wait_output("ready")
    (tmp_path / "hold").touch()
    a = workers.spawn(store, "serve", "five_steps", N, "block_step=2", "block=hold", env={
        "DQ_LEASE": "1s", **({"DQ_CLOCK_SKEW_MS": str(-HOUR_MS)} if skew else {}),
    })  # fmt: skip
    await wait_until(lambda: len([x for x in lines(tmp_path / "blocked") if x.endswith(f" {a.pid}")]) == N,
                     30, lambda: f"A holding {N} executions in step 2: {a.describe()}")  # fmt: skip

    # 1. A healthy: its leases move on (renewed for more than two lease periods) and
    # nobody else claims them (the fencing token is still the one A started with).
    first_seen = {r.id: r.lease_until or 0 for r in await storage.query(ExecutionQuery())}

    async def renewed_twice() -> bool:
        recs = await storage.query(ExecutionQuery())
        return all((r.lease_until or 0) - first_seen[r.id] >= 2000 for r in recs)

    await wait_until(renewed_twice, 15, "A to renew its leases over 2 lease periods")
    held = await storage.query(ExecutionQuery())
    assert [(r.status, r.token, str(a.pid) in (r.worker_id or "")) for r in held] == [("running", 1, True)] * N
    assert {e.pid for e in read_effects(tmp_path)} == {a.pid}

    # 2. A frozen past its lease: B reclaims and finishes everything.
    await _freeze(a, store)

    async def finished_by_b() -> bool:
        counts = await storage.count(ExecutionQuery(statuses=["completed"]))
        return counts.get("completed", 0) == N

    await wait_until(finished_by_b, 30, lambda: f"B to finish A's executions: {b.describe()}")
    finished = {r.id: r for r in await storage.query(ExecutionQuery())}

    # 3. A resumed: its step 2 returns, and its write of it is refused.
    (tmp_path / "hold").unlink()
    a.signal(signal.SIGCONT)
    refused_log = tmp_path / f"refused-{a.pid}"
    await wait_until(lambda: set(lines(refused_log)) >= set(finished), 15,
                     lambda: f"A's late writes refused: {a.describe()}")  # fmt: skip
    for w in (a, b):
        w.signal(signal.SIGTERM)
    for w in (a, b):
        assert await w.exit_code() == 0, w.describe()

    after = {r.id: r for r in await storage.query(ExecutionQuery())}
    assert _final(after) == _final(finished)  # A's late writes changed nothing
    for rec in after.values():
        assert (rec.status, rec.output) == ("completed", {"pid": b.pid})
        assert rec.token >= 3  # A's 1, raised by the reclaim, then by B's claim
        steps = await storage.get_steps(rec.id)
        # Step 1 is A's (completed before the freeze, not re-run); from step 2 on, B's.
        assert [(s.key, s.status, s.output) for s in steps] == [
            ("step-1", "completed", {"pid": a.pid}),
            *[(f"step-{n}", "completed", {"pid": b.pid}) for n in range(2, 6)],
        ]
        events = collections.Counter(
            (e.type, e.data.get("key")) for e in await storage.read_events(0, limit=10_000, execution_id=rec.id)
        )
        assert events[("success", None)] == 1
        assert events[("step_success", "step-2")] == 1
    ran: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for e in read_effects(tmp_path):
        ran[(e.execution, e.step)].append(e.pid)
    for rec in after.values():
        eid = rec.input["id"]
        assert ran[(eid, "1")] == [a.pid]
        assert ran[(eid, "2")] == [a.pid, b.pid]
        assert [ran[(eid, n)] for n in "345"] == [[b.pid]] * 3


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_a_frozen_transaction_cannot_block_other_writers_for_good(store: Store) -> None:
    """A process frozen inside a write transaction holds row locks (PostgreSQL keeps
    them until the transaction ends): the server ends the idle transaction, and the
    other writers go on. The frozen process gets a connection error, which the runtime
    treats as unreachable storage (its writes are fenced and its executions reclaimed)."""
    frozen = SqlStorage.postgres(store.url)
    frozen.idle_in_transaction_timeout_ms = 500  # type: ignore[attr-defined]
    other = await store.open()
    await frozen.open()
    try:
        async with frozen.engine.connect() as conn:
            await conn.begin()
            # The row every commit that appends events locks last.
            await conn.execute(text("SELECT * FROM seq_counters FOR UPDATE"))
            now = now_ms()
            write = asyncio.ensure_future(other.commit(Batch(events=[EventRecord(None, None, "probe", {}, now)])))
            # Frozen: this transaction sends nothing; the other writer must still get through.
            result = await asyncio.wait_for(write, 10)
            assert [e.type for e in result.events] == ["probe"]
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(text("SELECT 1"))
            assert frozen.is_unavailable(caught.value)
    finally:
        await frozen.aclose()


async def _freeze(worker: Worker, store: Store) -> None:
    """SIGSTOP the worker, at a moment it is not inside a write transaction. One frozen
    there keeps its locks: on SQLite the file's write lock keeps every other writer out
    until it resumes; on PostgreSQL its row locks last until the server ends the idle
    transaction (after a minute, see the test above), longer than this test waits."""
    for _ in range(50):
        worker.signal(signal.SIGSTOP)
        if store.kind == "redis":  # a script runs whole on the server: no lock is held
            return
        if store.kind == "sqlite" and _sqlite_writable(store.url.removeprefix("sqlite:///")):
            return
        if store.kind == "postgres" and not await _idle_in_transaction(store.url):
            return
        worker.signal(signal.SIGCONT)
        await asyncio.sleep(0.05)
    raise AssertionError("could not freeze the worker outside a write transaction")


async def _idle_in_transaction(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return bool(found)


def _sqlite_writable(path: str) -> bool:
    conn = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def _final(recs: dict[str, ExecutionRecord]) -> dict[str, tuple[object, ...]]:
    return {i: (r.status, r.output, r.token, r.completed_at, r.worker_id) for i, r in recs.items()}
