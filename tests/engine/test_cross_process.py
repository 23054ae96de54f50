"""Two engine processes on one SQLite file and on one PostgreSQL database: an
idempotency key raced from both starts one execution, each cron tick with a
seconds field starts once, and both sweep the retention policy without getting
in each other's way (counted from what the storage recorded)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dq.engine.ids import now_ms
from dq.engine.storage.base import Batch, EventRecord, ExecutionQuery, ExecutionRecord, Storage
from dq.engine.storage.factory import storage_from_url

from .test_multiprocess import pg_dsn  # noqa: F401 - a fresh database per test

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("race_worker.py"))
KEYS = 40


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_dsn"))


@pytest.mark.slow
async def test_two_processes_race_keys_and_share_cron_ticks(storage_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, WORKER, storage_url, str(KEYS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        for _ in range(2)
    ]
    storage: Storage = storage_from_url(storage_url)
    await storage.open()  # executions that ended two hours ago: past the 1 hour policy
    old = now_ms() - 2 * 3_600_000
    await storage.commit(Batch(
        executions=[ExecutionRecord(f"OLD{i:03d}", "charge", "completed", created_at=old, run_at=old, completed_at=old) for i in range(300)],
        events=[EventRecord(f"OLD{i:03d}", "charge", "success", {}, old) for i in range(300)],
    ))  # fmt: skip
    await storage.aclose()
    try:
        for w in workers:
            assert w.stdout is not None
            line = await asyncio.to_thread(w.stdout.readline)
            assert line.strip() == b"ready", w.stderr.read() if w.stderr else b""
        go_at = f"{now_ms() + 500}\n".encode()
        for w in workers:  # both race the same keys, from the same instant
            assert w.stdin is not None
            w.stdin.write(go_at)
            w.stdin.flush()
        answers = []
        for w in workers:
            assert w.stdout is not None
            answers.append(json.loads(await asyncio.to_thread(w.stdout.readline)))
        await asyncio.sleep(5)  # a few cron ticks in both processes
    finally:
        for w in workers:
            await asyncio.to_thread(w.communicate, None, 30)
    assert answers[0] == answers[1]
    assert len(set(answers[0].values())) == KEYS
    storage = storage_from_url(storage_url)
    await storage.open()
    try:
        charges = await storage.query(ExecutionQuery(job_names=["charge"]))
        ticks = await storage.query(ExecutionQuery(job_names=["tick"]))
        tick_times = []
        for rec in ticks:
            events = await storage.read_events(0, execution_id=rec.id)
            tick_times += [e.data["tick"] for e in events if e.type == "trigger"]
    finally:
        await storage.aclose()
    assert sorted(r.id for r in charges) == sorted(answers[0].values())  # no OLD left
    assert Counter(r.idempotency_key for r in charges) == {f"k{k}": 1 for k in range(KEYS)}
    assert len(tick_times) >= 2
    assert len(set(tick_times)) == len(tick_times), tick_times  # each tick started once
    assert all(t % 2000 == 0 for t in tick_times), tick_times  # seconds first: every 2 s
