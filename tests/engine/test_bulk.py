"""Bulk actions: cancel_all, pause_all, resume_all, retry_all, replay_all over get_all's filters."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dq import Queue, create_job, create_queue, run
from dq.engine import bulk
from dq.engine.storage.base import ExecutionQuery, Storage
from dq.engine.storage.sql import SqlStorage
from tests.engine.conftest import FAST, _empty_postgres
from tests.engine.test_lifecycle import status_is, until


def jobs(calls: Counter[str], gate: asyncio.Event) -> list[Any]:
    @create_job(name="upload", retry=0)
    async def upload(data: Any) -> Any:
        await run("first", lambda: calls.update(["first"]))

        def second() -> None:
            calls["second"] += 1
            if data.get("fail") and not gate.is_set():
                raise RuntimeError("broken")

        await run("second", second, retry=0)
        return data

    @create_job(name="other")
    async def other(data: Any) -> Any:
        return data

    return [upload, other]


async def by_of(ex: Any, type: str) -> list[Any]:
    return [e.data.get("by") for e in await ex.events() if e.type == type]


async def test_cancel_pause_resume_all_act_on_the_filter(make_queue: Callable[..., Queue]) -> None:
    calls: Counter[str] = Counter()
    queue = make_queue(jobs(calls, asyncio.Event()))
    async with queue:
        await queue.jobs.upload.pause()
        await queue.jobs.other.pause()
        ups = [await queue.jobs.upload.start({"user": {"id": i % 3}, "n": i}) for i in range(9)]
        others = [await queue.jobs.other.start({"user": {"id": 0}}) for _ in range(2)]
        # the jobs are paused: their new executions wait, pending
        # pause_all / resume_all: of user 1's uploads only
        assert await queue.jobs.pause_all(job_name="upload", input={"user": {"id": 1}}) == 3
        for i, ex in enumerate(ups):
            assert await status_is(ex, "paused" if i % 3 == 1 else "pending")
        assert await queue.jobs.resume_all(job_name="upload", input={"user": {"id": 1}}) == 3
        assert await queue.jobs.resume_all(job_name="upload") == 0
        assert await queue.jobs.pause_all(job_name="upload", input={"user": {"id": 1}}, by="me") == 3
        assert await by_of(ups[1], "pause") == ["bulk", "me"]
        assert await by_of(ups[1], "resume") == ["bulk"]
        # cancel_all: user 0, every job; a second call finds nothing left to cancel
        assert await queue.jobs.cancel_all(input={"user": {"id": 0}}, reason="cleanup") == 5
        assert await queue.jobs.cancel_all(input={"user": {"id": 0}}) == 0
        cancelled = {e.id for e in await queue.jobs.get_all(status="cancelled")}
        assert cancelled == {ups[0].id, ups[3].id, ups[6].id, *(e.id for e in others)}
        assert await by_of(ups[3], "cancel") == ["bulk"]
        # limit caps how many are acted on, newest first like get_all
        assert await queue.jobs.cancel_all(job_name="upload", status="paused", limit=2) == 2
        assert [e.id for e in await queue.jobs.get_all(job_name="upload", status="paused")] == [ups[1].id]
        assert await queue.jobs.cancel_all(job_name="upload", order="oldest", limit=1) == 1
        assert await status_is(ups[1], "cancelled")  # oldest first: ups[1] before ups[2]
        assert await queue.jobs.cancel_all(status="completed") == 0  # nothing it can change


async def test_retry_all_and_replay_all(make_queue: Callable[..., Queue]) -> None:
    calls: Counter[str] = Counter()
    gate = asyncio.Event()
    queue = make_queue(jobs(calls, gate))
    async with queue:
        failing = [await queue.jobs.upload.start({"fail": True, "n": i}) for i in range(3)]
        fine = await queue.jobs.upload.start({"n": 9})
        await fine.result()
        await until(lambda: queue.jobs.get_all(status="failed"))
        for ex in failing:
            await until(lambda ex=ex: status_is(ex, "failed"))
        assert calls == {"first": 4, "second": 4}
        gate.set()  # "the fix is deployed"
        assert await queue.jobs.replay_all(status="failed", from_step="second") == 3
        replays = await queue.jobs.get_all(job_name="upload", status=["pending", "running", "completed"])
        replays = [e for e in replays if e.replay_of is not None]
        assert sorted(e.replay_of for e in replays) == sorted(e.id for e in failing)  # type: ignore[type-var]
        for ex in replays:
            await ex.result()
            assert await by_of(ex, "replay") == ["bulk"]
        assert calls == {"first": 4, "second": 7}  # "first" was reused by every replay
        # the originals are still failed: retry_all takes them, a second time nothing
        assert await queue.jobs.retry_all(job_name="upload") == 3
        for ex in failing:
            await until(lambda ex=ex: status_is(ex, "completed"))
        assert await queue.jobs.retry_all(job_name="upload") == 0
        assert await queue.jobs.replay_all(job_name="upload", from_step="missing") == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_bulk_on_10000_executions_reads_bounded_pages(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "sqlite":
        storage: Storage = SqlStorage.sqlite(str(tmp_path / "dq.db"))
    else:
        dsn: str = request.getfixturevalue("pg_database")
        await _empty_postgres(dsn)
        storage = SqlStorage.postgres(dsn)

    @create_job(name="bulky")
    async def bulky(data: Any) -> Any:
        return data

    @create_job(name="bystander")
    async def bystander(data: Any) -> Any:
        return data

    queue = create_queue(jobs=[bulky, bystander], storage=storage, **FAST)  # type: ignore[arg-type]
    async with queue:
        await queue.jobs.bulky.pause()
        await queue.jobs.bystander.pause()
        await queue.jobs.bulky.start_many([{"n": i, "even": i % 2 == 0} for i in range(10_000)])
        await queue.jobs.bystander.start_many([{"n": i} for i in range(50)])
        largest = 0
        query = storage.query

        async def spy(q: ExecutionQuery) -> Any:
            nonlocal largest
            found = await query(q)
            largest = max(largest, len(found))
            return found

        monkeypatch.setattr(storage, "query", spy)
        assert await queue.jobs.pause_all(job_name="bulky", input={"even": True}) == 5_000
        assert await queue.jobs.cancel_all(job_name="bulky") == 10_000
        assert largest <= bulk.PAGE
        monkeypatch.undo()
        counts = await storage.count(ExecutionQuery(job_names=["bulky"]))
        assert counts == {"cancelled": 10_000}
        assert await storage.count(ExecutionQuery(job_names=["bystander"])) == {"pending": 50}
