"""Queries: get, get_all, get_first with every filter of docs/queries.md."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dq import JobError, Queue, ValidationError, create_job


async def test_every_filter(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="ok")
    async def ok(data: Any) -> Any:
        return data

    @create_job(name="bad", retry=1, backoff=0)
    async def bad(data: Any) -> None:
        raise RuntimeError("no")

    queue = make_queue([ok, bad])
    async with queue:
        before = datetime.now(UTC) - timedelta(seconds=1)
        first = await queue.jobs.ok.start(1)
        await first.result()
        await asyncio.sleep(0.01)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.01)
        second = await queue.jobs.ok.start(2)
        await second.result()
        failed = await queue.jobs.bad.start(3)
        with pytest.raises(JobError):
            await failed.result()
        after = datetime.now(UTC) + timedelta(seconds=1)
        jobs = queue.jobs

        async def ids(**filters: Any) -> list[str]:
            return [e.id for e in await jobs.get_all(**filters)]

        assert await ids() == [failed.id, second.id, first.id]  # newest first
        assert await ids(order="oldest") == [first.id, second.id, failed.id]
        assert await ids(status="failed") == [failed.id]
        assert await ids(status=["completed", "failed"]) == [failed.id, second.id, first.id]
        assert await ids(status="running") == []
        assert await ids(job_name="ok") == [second.id, first.id]
        assert await ids(job_name=["ok", "bad"]) == [failed.id, second.id, first.id]
        assert await ids(started_before=middle) == [first.id]
        assert await ids(started_after=middle.isoformat()) == [failed.id, second.id]
        assert await ids(completed_before=middle, completed_after=before) == [first.id]
        assert await ids(completed_after=middle, completed_before=after) == [failed.id, second.id]
        assert await ids(retry_count=1) == [failed.id]
        assert await ids(retry_count_less_than=1) == [second.id, first.id]
        assert await ids(retry_count_greater_than=0) == [failed.id]
        assert await ids(limit=2) == [failed.id, second.id]
        assert await ids(limit=1, offset=1) == [second.id]
        assert await ids(job_name="ok", status="completed", started_after=before) == [second.id, first.id]
        first_ok = await jobs.get_first(job_name="ok", order="oldest")
        assert first_ok is not None and first_ok.id == first.id
        assert await jobs.get_first(status="cancelled") is None
        got = await jobs.get(second.id)
        assert got is not None and got.output == 2 and got.status == "completed"
        assert got.started_at is not None and got.completed_at is not None
        assert got.created_at <= got.started_at <= got.completed_at


@pytest.mark.parametrize(
    ("filters", "needle"),
    [
        ({"status": "done"}, "'done'"),
        ({"stauts": "failed"}, "stauts"),
        ({"started_before": "yesterday"}, "started_before"),
        ({"limit": -1}, "limit"),
        ({"order": "random"}, "order"),
        ({"input": [1]}, "input: expected a dict"),
        ({"input": {"x": float("nan")}}, "input"),
        ({"input": {'a"b': 1}}, "double quote"),
    ],
)
async def test_bad_filters_are_named(make_queue: Callable[..., Queue], filters: dict[str, Any], needle: str) -> None:
    queue = make_queue([create_job(lambda d: None, name="x")])
    with pytest.raises((ValueError, TypeError), match=needle):
        await queue.jobs.get_all(**filters)


async def test_input_filter_with_other_filters(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="upload")
    async def upload(data: Any) -> Any:
        return data

    @create_job(name="other")
    async def other(data: Any) -> Any:
        return data

    queue = make_queue([upload, other])
    async with queue:
        a = await queue.jobs.upload.start({"user": {"id": 7, "plan": "pro"}, "path": "a.mp3"})
        b = await queue.jobs.upload.start({"user": {"id": 8}, "path": "b.mp3"})
        c = await queue.jobs.other.start({"user": {"id": 7}})
        for e in (a, b, c):
            await e.result()

        async def ids(**filters: Any) -> list[str]:
            return [e.id for e in await queue.jobs.get_all(**filters)]

        assert await ids(input={"user": {"id": 7}}) == [c.id, a.id]
        assert await ids(input={"user": {"id": 7}}, job_name="upload") == [a.id]
        assert await ids(input={"path": "b.mp3"}, status="completed") == [b.id]
        assert await ids(input={"path": "b.mp3"}, status="failed") == []
        assert await ids(input={"user": {"id": 9}}) == []
        first = await queue.jobs.get_first(input={"user": {"id": 7}}, order="oldest")
        assert first is not None and first.id == a.id


async def test_nan_in_an_input_is_refused_at_the_call_site(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([create_job(lambda d: None, name="x")])
    async with queue:
        with pytest.raises(ValidationError, match="NaN"):
            await queue.jobs.x.start({"v": float("nan")})
        assert await queue.jobs.get_all() == []
