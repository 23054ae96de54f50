"""`pipe.into(fn)` is a pipe (send, wait_for, trigger), and jobs and pipes called
directly outside a handler run on the one started queue that holds them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from dq import DqError, Queue, create_job, create_memory_storage, create_pipe

from .test_lifecycle import until


class Upload(BaseModel):
    path: str


async def test_a_derived_pipe_sends_waits_and_triggers(make_queue: Callable[..., Queue]) -> None:
    uploads = create_pipe(name="uploads", input=Upload)
    files = uploads.into(lambda u: {"file": u.path.upper()})
    by_path = uploads.into(lambda name: {"path": f"/in/{name}"})
    seen: list[Any] = []

    @create_job(name="ingest", trigger=[files])
    async def ingest(data: dict[str, str]) -> str:
        seen.append(data)
        return data["file"]

    @create_job(name="waiter", retry=0)
    async def waiter(name: str) -> Any:
        return await files.wait_for({"file": f"/IN/{name.upper()}"}, timeout="10s")

    queue = make_queue([ingest, waiter], pipes=[uploads])
    async with queue:
        w = await queue.jobs.waiter.start("b.mp3")
        await until(lambda: _has_wait_step(queue, w.id))
        await by_path.send("a.mp3")  # sends {"path": "/in/a.mp3"} into uploads
        await by_path.send("b.mp3")
        assert await w.result() == {"file": "/IN/B.MP3"}
        await until(lambda: len(seen) == 2)
        messages = await queue.storage.read_messages("uploads")
        assert [m.data for m in messages] == [{"path": "/in/a.mp3"}, {"path": "/in/b.mp3"}]
    assert sorted(d["file"] for d in seen) == ["/IN/A.MP3", "/IN/B.MP3"]


async def _has_wait_step(queue: Queue, execution_id: str) -> bool:
    ex = await queue.jobs.get(execution_id)
    return ex is not None and any(s.kind == "wait" for s in await ex.steps())


async def test_direct_calls_use_the_one_started_queue(make_queue: Callable[..., Queue]) -> None:
    events = create_pipe(name="direct_events")
    got: list[Any] = []

    @create_job(name="double")
    async def double(n: int) -> int:
        return n * 2

    @create_job(name="listen", trigger=[events])
    async def listen(data: Any) -> None:
        got.append(data)

    with pytest.raises(DqError, match="no started queue holds it"):
        await double.run(1)
    with pytest.raises(DqError, match="no started queue holds it"):
        await events.send({"n": 1})
    queue = make_queue([double, listen])  # the pipe is held as a trigger
    async with queue:
        assert await double.run(21) == 42
        execution = await double.start(5)
        assert await execution.result() == 10
        await events.send({"n": 1})
        await until(lambda: got == [{"n": 1}])
        other = make_queue([double], storage=create_memory_storage())
        async with other:
            with pytest.raises(DqError, match="2 started queues hold it"):
                await double.run(1)
        assert await double.run(2) == 4  # the other one closed
    with pytest.raises(DqError, match="no started queue holds it"):
        await double.run(1)


async def test_a_job_in_no_started_queue_names_the_queue_call(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="lonely")
    async def lonely() -> None:
        return None

    with pytest.raises(DqError, match=r"queue\.jobs\['lonely'\]\.run"):
        await asyncio.wait_for(lonely.run(), 5)
