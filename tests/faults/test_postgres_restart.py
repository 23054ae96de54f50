"""PostgreSQL restarted while a worker runs executions: the worker reconnects, LISTEN
is re-established, nothing is lost, failed or stuck.

The only test that restarts the shared server (other sessions' connections drop too).
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from dq.engine.storage.base import ExecutionQuery, Storage

from .conftest import Store, Workers, add_executions, read_effects, wait_until

STEP_S = 0.3  # each of the 5 steps takes this long: the restart lands mid-workflow
FIRST = 16


def _local_cluster() -> bool:
    return shutil.which("pg_ctlcluster") is not None and os.path.isdir("/etc/postgresql") and (
        "DQ_TEST_POSTGRES_DSN" not in os.environ
    )


def _restart_postgres() -> None:
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


async def _completed(store: Store, storage: Storage) -> int:
    try:
        counts = await storage.count(ExecutionQuery(statuses=["completed"]))
    except Exception as exc:
        if storage.is_unavailable(exc):  # the test's own handle sees the restart too
            return -1
        raise
    return counts.get("completed", 0)


async def _listening(dsn: str) -> bool:
    database = dsn.rsplit("/", 1)[1]
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'dq-listen'"
            " AND query ILIKE 'LISTEN%'",
            database,
        )
    finally:
        await conn.close()
    return bool(found)


async def _server_started_at(dsn: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT pg_postmaster_start_time()")
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.timeout(240)
@pytest.mark.skipif(not _local_cluster(), reason="restarts the local PostgreSQL cluster (pg_ctlcluster)")
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_postgres_restart_while_executions_run(store: Store, workers: Workers, tmp_path: Path) -> None:
    storage = await store.open()
    # A 30 s poll interval: after the restart, only LISTEN/NOTIFY (or the worker's own
    # retries) can bring new work in within the test's time limits.
    worker = workers.spawn(store, "serve", "five_steps", 0, env={"DQ_POLL": "30s", "DQ_LEASE": "60s"})
    await worker.wait_output("ready")
    await wait_until(lambda: _listening(store.url), 20, "the worker's LISTEN connection")
    before = await _server_started_at(store.url)
    await add_executions(storage, "five_steps", [{"id": f"r{i}", "sleep_s": STEP_S} for i in range(FIRST)])
    # Restart once every execution is under way (some step of each has run).
    await wait_until(lambda: len({e.execution for e in read_effects(tmp_path)}) == FIRST, 30,
                     lambda: f"all executions started: {worker.describe()}")  # fmt: skip
    done_at_restart = await storage.count(ExecutionQuery(statuses=["completed"]))
    await asyncio.to_thread(_restart_postgres)
    assert await _server_started_at(store.url) != before

    # Every execution completes after the restart (the test's own handle reconnects too).
    await wait_until(lambda: _completed_is(store, storage, FIRST), 30,
                     lambda: f"{FIRST} completed: {worker.describe()}")  # fmt: skip
    assert done_at_restart.get("completed", 0) < FIRST  # the restart did cut executions short

    # LISTEN is back: work committed by another process is picked up at once, long
    # before the worker's next poll.
    await wait_until(lambda: _listening(store.url), 20, "LISTEN re-established")
    await add_executions(storage, "five_steps", [{"id": f"n{i}"} for i in range(4)])
    await wait_until(lambda: _completed_is(store, storage, FIRST + 4), 10,
                     lambda: f"new work picked up via NOTIFY: {worker.describe()}")  # fmt: skip
    worker.signal(15)
    assert await worker.exit_code() == 0, worker.describe()

    executions = await storage.query(ExecutionQuery())
    assert len(executions) == FIRST + 4
    assert {(e.status, e.retry_count, e.error is None) for e in executions} == {("completed", 0, True)}
    for rec in executions:
        steps = await storage.get_steps(rec.id)
        assert [(s.key, s.status) for s in steps] == [(f"step-{n}", "completed") for n in range(1, 6)]
    ran = collections.Counter((e.execution, e.step) for e in read_effects(tmp_path))
    for rec in executions:
        counts = [ran[(rec.input["id"], str(n))] for n in range(1, 6)]
        # Each step ran; one cut short by the restart (its record not committed) ran
        # again, once; and at most one step per execution was cut short.
        assert all(1 <= c <= 2 for c in counts) and sum(counts) <= 6, (rec.input, counts)


async def _completed_is(store: Store, storage: Storage, n: int) -> bool:
    return await _completed(store, storage) == n
