"""Pipes (send, wait_for, triggers), job.into, job.wait_for, cron."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from dq import Queue, ValidationError, create_job, create_pipe, run

from .test_lifecycle import status_is, until


class Upload(BaseModel):
    path: str


async def test_pipe_triggers_each_job_once_per_message(make_queue: Callable[..., Queue]) -> None:
    uploads = create_pipe(name="uploads", input=Upload)
    seen: list[str] = []

    @create_job(name="ingest", trigger=[uploads.into(lambda u: {"file": u.path})])
    async def ingest(data: dict[str, str]) -> str:
        seen.append(data["file"])
        return data["file"]

    @create_job(name="audit", trigger=[uploads])
    async def audit(data: dict[str, str]) -> None:
        seen.append("audit:" + data["path"])

    queue = make_queue([ingest, audit], pipes=[uploads])
    async with queue:
        for name in ("a.mp3", "b.mp3"):
            await queue.pipes.uploads.send({"path": name})
        with pytest.raises(ValidationError):
            await queue.pipes.uploads.send({"file": "wrong shape"})
        await until(lambda: _count(queue, 4, status="completed"))
        await asyncio.sleep(0.2)  # more deliveries would show up here
        assert len(await queue.jobs.get_all()) == 4
    assert sorted(seen) == ["a.mp3", "audit:a.mp3", "audit:b.mp3", "b.mp3"]


async def _count(queue: Queue, n: int, **filters: Any) -> bool:
    return len(await queue.jobs.get_all(**filters)) == n


async def test_send_and_wait_for_inside_handlers(make_queue: Callable[..., Queue]) -> None:
    p = create_pipe(name="p")

    @create_job(name="waiter")
    async def waiter(data: Any) -> Any:
        msg = await p.wait_for({"value": 55})
        return msg

    @create_job(name="sender")
    async def sender(data: Any) -> None:
        await p.send({"value": 42})
        await p.send({"value": 55, "extra": True})

    queue = make_queue([waiter, sender], pipes=[p])
    async with queue:
        w = await queue.jobs.waiter.start(None)
        await until(lambda: status_is(w, "running"))
        await asyncio.sleep(0.1)
        await queue.jobs.sender.run(None)
        assert await w.result() == {"value": 55, "extra": True}
        steps = await (await queue.jobs.get_first(job_name="sender")).steps()  # type: ignore[union-attr]
    assert [s.kind for s in steps] == ["send", "send"]


async def test_job_into_and_job_wait_for(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="foo")
    async def foo(data: dict[str, str]) -> dict[str, str]:
        return {"something": data["something"]}

    @create_job(name="bar", trigger=[foo.into(lambda out: {"other": int(out["something"])})])
    async def bar(data: dict[str, int]) -> int:
        return data["other"] + 1

    @create_job(name="watcher")
    async def watcher(data: Any) -> Any:
        return await foo.wait_for(lambda i: i["something"] == "7")

    queue = make_queue([foo, bar, watcher])
    async with queue:
        w = await queue.jobs.watcher.start(None)
        await until(lambda: status_is(w, "running"))
        await queue.jobs.foo.run({"something": "7"})
        assert await w.result() == {"something": "7"}
        await until(lambda: _count(queue, 1, job_name="bar", status="completed"))
        done = await queue.jobs.get_first(job_name="bar")
        assert done is not None and done.output == 8


async def test_cron_with_seconds_field(make_queue: Callable[..., Queue]) -> None:
    ticks: list[int] = []

    @create_job(name="every_second", cron="* * * * * *")
    async def every_second(data: Any) -> None:
        await run("tick", lambda: ticks.append(1))

    queue = make_queue([every_second])
    async with queue:
        await until(lambda: len(ticks) >= 2, timeout=5)
        executions = await queue.jobs.get_all(job_name="every_second")
    assert len(executions) >= 2
    assert all(e.input is None for e in executions)


def test_cron_job_with_required_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="no input"):
        create_job(lambda d: None, name="c", cron="* * * * *", input=Upload)
