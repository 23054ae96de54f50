"""Two engine processes on one PostgreSQL database: limits, cron ticks and pipe
triggers hold across processes (counted from what the storage recorded)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import (
    Batch,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    PipeMessage,
    Storage,
)
from dq.engine.storage.sql import SqlStorage

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("mp_worker.py"))
ADMIN = os.environ.get("DQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    name = f"dq_mp_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def _wait(predicate: object, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
async def test_two_processes_share_limits_ticks_and_triggers(pg_dsn: str) -> None:
    storage: Storage = SqlStorage.postgres(pg_dsn)
    await storage.open()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen([sys.executable, WORKER, pg_dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            line = await asyncio.to_thread(w.stdout.readline)
            assert line.strip() == b"ready", w.stderr.read() if w.stderr else b""
        now = now_ms()
        await storage.commit(Batch(
            executions=[ExecutionRecord(new_id(), "limited", "pending", input=i, created_at=now, run_at=now) for i in range(10)],
            messages=[PipeMessage("events", {"n": i}, now) for i in range(20)],
        ))  # fmt: skip
        limited_n = 10
        for _round in range(4):

            async def done(expected: int = limited_n + 20) -> bool:
                counts = await storage.count(ExecutionQuery(job_names=["limited", "on_message"]))
                return counts.get("completed", 0) == expected

            await _wait(done)
            if len(_starters(await storage.read_events(0, limit=100_000), "limited")) == 2:
                break
            # Which process claims first is a race: under load one can win a whole batch.
            now = now_ms()
            await storage.commit(Batch(executions=[
                ExecutionRecord(new_id(), "limited", "pending", input=i, created_at=now, run_at=now) for i in range(10)
            ]))  # fmt: skip
            limited_n += 10
        await asyncio.sleep(1.5)  # let a few more cron ticks happen in both processes
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            await asyncio.to_thread(w.communicate, None, 30)
    # concurrency=2 across both processes: never more than 2 "hold" steps at once
    limited = await storage.query(ExecutionQuery(job_names=["limited"]))
    spans = []
    for ex in limited:
        (step,) = await storage.get_steps(ex.id)
        assert step.completed_at is not None
        spans.append((step.started_at, step.completed_at))
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    assert peak <= 2, spans
    events = await storage.read_events(0, limit=100_000)
    assert len(_starters(events, "limited")) == 2, _starters(events, "limited")  # both processes took part
    # each pipe message started on_message exactly once
    triggered = await storage.query(ExecutionQuery(job_names=["on_message"]))
    assert sorted(e.input["n"] for e in triggered) == list(range(20))
    # each cron tick started exactly one execution, although both processes run the schedule
    ticks = Counter(e.data["tick"] for e in events if e.type == "trigger" and e.job_name == "ticker")
    assert ticks and max(ticks.values()) == 1, ticks
    assert len(ticks) >= 2
    await storage.aclose()


def _starters(events: list[EventRecord], job_name: str | None = None) -> set[str]:
    """The workers that started executions (of `job_name`, if given)."""
    return {e.data.get("worker") for e in events if e.type == "start" and (job_name is None or e.job_name == job_name)}
