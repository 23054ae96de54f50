"""Composite pause: pausing an execution pauses its unfinished children; resume resumes them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dq import Queue, create_job, run
from tests.engine.test_lifecycle import status_is, until


async def test_pausing_a_parent_pauses_its_children_and_resume_resumes_them(
    make_queue: Callable[..., Queue],
) -> None:
    gate = asyncio.Event()
    done: list[str] = []

    @create_job(name="leaf")
    async def leaf(data: Any) -> str:
        await run("wait", gate.wait)
        await run("after", lambda: done.append(f"leaf {data}"))
        return f"leaf {data}"

    @create_job(name="middle")
    async def middle(data: Any) -> str:
        return await leaf.run(data)

    @create_job(name="top")
    async def top(data: Any) -> list[str]:
        return list(await asyncio.gather(middle.run(1), middle.run(2)))

    queue = make_queue([leaf, middle, top])
    async with queue:
        root = await queue.jobs.top.start(None)
        await until(lambda: _count(queue, "leaf", "running", 2))
        assert await root.pause() is True
        gate.set()  # the leaves' in-flight steps finish; each pauses at its next step
        tree = await queue.jobs.get_all(root_id=root.id)
        assert len(tree) == 4  # two middles, two leaves
        for ex in [root, *tree]:
            await until(lambda ex=ex: status_is(ex, "paused"))
        assert done == []
        assert await root.resume() is True
        assert await root.result() == ["leaf 1", "leaf 2"]
        assert sorted(done) == ["leaf 1", "leaf 2"]
        for ex in tree:  # each was asked by its parent, and the event log says so
            bys = [e.data["by"] for e in await ex.events() if e.type in ("requested", "pause", "resume") and "by" in e.data]
            assert bys and all(by.startswith("parent ") for by in bys), bys


async def test_resuming_a_child_alone_leaves_the_parent_paused(make_queue: Callable[..., Queue]) -> None:
    gate = asyncio.Event()

    @create_job(name="child")
    async def child(data: Any) -> str:
        await run("wait", gate.wait)
        return str(await run("after", lambda: "ok"))

    @create_job(name="parent")
    async def parent(data: Any) -> str:
        return await child.run(None)

    queue = make_queue([child, parent])
    async with queue:
        root = await queue.jobs.parent.start(None)
        await until(lambda: _count(queue, "child", "running", 1))
        assert await root.pause() is True
        (kid,) = await queue.jobs.get_all(parent_id=root.id)
        gate.set()
        await until(lambda: status_is(kid, "paused"))
        await until(lambda: status_is(root, "paused"))
        assert await kid.resume() is True
        assert await kid.result() == "ok"
        await asyncio.sleep(0.2)
        assert await status_is(root, "paused")
        assert await root.resume() is True
        assert await root.result() == "ok"


async def _count(queue: Queue, job: str, status: str, n: int) -> bool:
    return len(await queue.jobs.get_all(job_name=job, status=status)) == n
