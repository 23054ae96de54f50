"""Two engine processes that poll once every ten minutes share a job limit and a step
limit on PostgreSQL and on Redis: released slots cross processes through the
adapter's notifications (LISTEN/NOTIFY, pub/sub), and neither limit is ever exceeded."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dq import create_queue
from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import Batch, ExecutionQuery, ExecutionRecord, Storage
from dq.engine.storage.redis import RedisStorage
from dq.engine.storage.sql import SqlStorage
from tests.storage.conftest import REDIS_URL, delete_redis_prefix

from .handoff_worker import JOBS
from .test_multiprocess import _starters, _wait, pg_dsn  # noqa: F401 - a fresh database per test

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("handoff_worker.py"))
PER_JOB = 10


@pytest.fixture(params=["postgres", "redis"])
async def target(request: pytest.FixtureRequest, pg_dsn: str) -> AsyncIterator[tuple[Storage, list[str]]]:  # noqa: F811
    """The test's storage handle, and the worker's arguments for the same store."""
    if request.param == "postgres":
        pg = SqlStorage.postgres(pg_dsn)
        yield pg, [pg_dsn]
        await pg.aclose()  # also when the test failed before its own aclose
        return
    prefix = f"dqhandoff{secrets.token_hex(6)}"
    redis = RedisStorage(REDIS_URL, prefix=prefix)
    yield redis, [REDIS_URL, prefix]
    await redis.aclose()
    await delete_redis_prefix(prefix)


def _peak(spans: list[tuple[int, int]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


async def _stalled(storage: Storage) -> str:
    """What a stalled run left: the unfinished executions and the limits' state."""
    lines = ["not all jobs completed in time"]
    events = await storage.read_events(0, limit=100_000)
    for ex in await storage.query(ExecutionQuery(job_names=["single", "stepped"])):
        if ex.status != "completed":
            steps = [(s.key, s.status) for s in await storage.get_steps(ex.id)]
            lines.append(f"{ex.id} {ex.job_name} {ex.status} run_at={ex.run_at} worker={ex.worker_id} steps={steps}")
            lines.extend(f"  {e.seq} {e.at} {e.type} {e.data}" for e in events if e.execution_id == ex.id)
    state = await storage.get_state(["slots:single", "slots:step:stepped:hold"])
    lines.append(f"state: {state}")
    return "\n".join(lines)


@pytest.mark.slow
async def test_two_processes_hand_slots_to_each_other(target: tuple[Storage, list[str]]) -> None:
    storage, args = target
    await storage.open()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            line = await asyncio.to_thread(w.stdout.readline)
            assert line.strip() == b"ready", w.stderr.read() if w.stderr else b""
        # One at a time, so that both processes get some of each job to run. Which one
        # claims first is a race: on a loaded machine one process can win a whole round,
        # so rounds go on (a few at most) until both have started executions.
        created = 0
        for _round in range(4):
            for i in range(PER_JOB):
                for job in ("single", "stepped"):
                    now = now_ms()
                    await storage.commit(Batch(executions=[ExecutionRecord(new_id(), job, "pending", input=i, created_at=now, run_at=now)]))
                await asyncio.sleep(0.02)
            created += PER_JOB

            async def done(expected: int = 2 * created) -> bool:
                counts = await storage.count(ExecutionQuery(job_names=["single", "stepped"]))
                return counts.get("completed", 0) == expected

            try:
                await _wait(done, timeout=60.0)
            except AssertionError:
                raise AssertionError(await _stalled(storage)) from None
            if len(_starters(await storage.read_events(0, limit=100_000))) == 2:
                break
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            _out, err = await asyncio.to_thread(w.communicate, None, 30)
            print(err.decode(errors="replace")[-3000:])  # shown if the test fails
    events = await storage.read_events(0, limit=100_000)
    for job in ("single", "stepped"):
        spans = []
        for ex in await storage.query(ExecutionQuery(job_names=[job])):
            (step,) = await storage.get_steps(ex.id)
            assert step.status == "completed"
            spans.append(tuple(step.output))
        assert len(spans) == created
        assert _peak(spans) == 1, (job, spans)  # concurrency=1 held across both processes
    assert len(_starters(events)) == 2, _starters(events)  # both processes took part
    await storage.aclose()


@pytest.mark.slow
async def test_a_step_slot_released_in_another_process_wakes_the_waiter_here(
    target: tuple[Storage, list[str]], tmp_path: Path
) -> None:
    """The holder runs in a worker process, the waiting step here; neither process polls
    in the test's time, so only the adapter's notification can hand the slot over."""
    storage, args = target
    await storage.open()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    go = tmp_path / "go"
    try:
        assert worker.stdout is not None
        line = await asyncio.to_thread(worker.stdout.readline)
        assert line.strip() == b"ready", worker.stderr.read() if worker.stderr else b""
        now = now_ms()
        held = ExecutionRecord(new_id(), "gated_step", "pending", input=str(go), created_at=now, run_at=now)
        await storage.commit(Batch(executions=[held]))

        async def holding() -> bool:
            # Its step holds the slot: stored, or (the worker alone so far) kept in its memory.
            state = await storage.get_state(["slots:step:gated_step:hold"])
            holders = state["slots:step:gated_step:hold"]["holders"] if state else []
            return holders == [f"{held.id}|hold"] or (len(holders) == 1 and holders[0].startswith("@"))

        await _wait(holding)
        here_storage = SqlStorage.postgres(args[0]) if len(args) == 1 else RedisStorage(args[0], prefix=args[1])
        queue = create_queue(jobs=JOBS, storage=here_storage, poll_interval="10 minutes", lease="5s")
        async with queue:
            waiting = await queue.jobs.gated_step.start(str(go))  # runs here: not gated, started directly
            await asyncio.sleep(0.3)
            await waiting.refresh()
            assert waiting.status == "running"  # its step waits for the worker's slot
            go.touch()
            span = await asyncio.wait_for(waiting.result(), 30)
        first = (await storage.get_steps(held.id))[0].output
        assert span[0] >= first[1] - 5  # it entered after the holder left (clocks of one host)
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.communicate, None, 30)
    await storage.aclose()
