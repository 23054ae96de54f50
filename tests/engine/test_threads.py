"""thread(): a step in a separate process, with limits, logs and memoisation."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from dq import JobError, Queue, TimeoutError, create_job, run, thread
from dq.engine.threads import ResourceLimitError

from . import threadfns


async def test_thread_runs_in_another_process_and_logs(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="colours")
    async def colours(data: Any) -> Any:
        out = await thread("color-extractor", threadfns.palette, {"path": "cover.jpg"})
        await run("after", lambda: None)
        return out

    queue = make_queue([colours])
    async with queue:
        ex = await queue.jobs.colours.start(None)
        out = await ex.result()
        await queue.runtime.committer.flush()
        logs = [e.data for e in await ex.events() if e.type == "log"]
        steps = await ex.steps()
    assert out["colours"] == ["#112233", "#445566"]
    assert out["pid"] != os.getpid()
    assert logs == [{"key": "color-extractor", "message": "extracting colours of cover.jpg"}]
    assert steps[0].kind == "thread" and steps[0].status == "completed"


@pytest.mark.parametrize(
    ("fn", "options", "error", "needle"),
    [
        (threadfns.hog_memory, {"max_memory_mb": 200}, ResourceLimitError, "max_memory_mb=200"),
        (threadfns.spin, {"max_cpu_seconds": 1}, ResourceLimitError, "max_cpu_seconds=1"),
        (threadfns.nap, {"timeout": "300ms"}, TimeoutError, "killed"),
        (threadfns.fail, {}, LookupError, "no such cover"),
    ],
)
async def test_thread_limits_timeouts_and_errors(
    make_queue: Callable[..., Queue], fn: Any, options: dict[str, Any], error: type[BaseException], needle: str
) -> None:
    @create_job(name="limited", retry=0)
    async def limited(data: Any) -> Any:
        return await thread("work", fn, 1, retry=0, **options)

    queue = make_queue([limited])
    async with queue:
        with pytest.raises(JobError) as info:
            await queue.jobs.limited.run(None)
    assert isinstance(info.value.cause, error), info.value.cause
    assert needle in str(info.value.cause)


async def test_thread_needs_an_importable_function(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="local", retry=0)
    async def local(data: Any) -> Any:
        return await thread("inline", lambda d, ctx: d, 1)

    queue = make_queue([local])
    async with queue:
        with pytest.raises(JobError) as info:
            await queue.jobs.local.run(None)
    assert "importable" in str(info.value.cause)


async def test_calls_with_one_limit_profile_share_a_process(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="pids", retry=0)
    async def pids(data: Any) -> Any:
        first = await thread("first", threadfns.whoami, None)
        second = await thread("second", threadfns.whoami, None)
        capped = await thread("capped", threadfns.whoami, None, max_memory_mb=900)
        try:
            await thread("stuck", threadfns.nap, None, timeout="200ms", retry=0)
        except TimeoutError:
            pass
        after_kill = await thread("after", threadfns.whoami, None)
        return [first, second, capped, after_kill]

    queue = make_queue([pids])
    async with queue:
        first, second, capped, after_kill = await queue.jobs.pids.run(None)
    assert first == second  # reused
    assert capped != first  # another limit profile, another pool
    assert os.getpid() not in (first, capped, after_kill)


async def test_cpu_limits_hold_per_call_in_a_reused_process(make_queue: Callable[..., Queue]) -> None:
    """Two calls of 0.7 s CPU under max_cpu_seconds=1 in one process: each is within
    its limit (1.4 s in total is not a breach), and a call over it still is."""

    @create_job(name="burner", retry=0)
    async def burner(data: Any) -> Any:
        one = await thread("one", threadfns.burn, 0.7, max_cpu_seconds=1)
        two = await thread("two", threadfns.burn, 0.7, max_cpu_seconds=1)
        return [one, two]

    @create_job(name="hog", retry=0)
    async def hog(data: Any) -> Any:
        return await thread("hog", threadfns.spin, None, max_cpu_seconds=1, retry=0)

    queue = make_queue([burner, hog])
    async with queue:
        one, two = await queue.jobs.burner.run(None)
        with pytest.raises(JobError) as info:
            await queue.jobs.hog.run(None)
    assert one == two
    assert isinstance(info.value.cause, ResourceLimitError)


async def test_thread_concurrency_holds_across_executions(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="serial")
    async def serial(n: int) -> Any:
        return await thread("hold", threadfns.hold, 0.3, concurrency=1)

    queue = make_queue([serial])
    async with queue:
        spans = [await e.result() for e in await queue.jobs.serial.start_many([1, 2, 3])]
    spans.sort()
    assert all(a[1] <= b[0] for a, b in pairwise(spans)), spans


async def test_thread_concurrency_is_checked(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="bad", retry=0)
    async def bad(data: Any) -> Any:
        return await thread("x", threadfns.whoami, None, concurrency=0)

    queue = make_queue([bad])
    async with queue:
        with pytest.raises(JobError) as info:
            await queue.jobs.bad.run(None)
    assert "concurrency" in str(info.value.cause)


@pytest.mark.parametrize("finish", ["before", "after"])
async def test_a_coroutine_a_thread_step_returns_is_closed_if_the_step_was_cancelled(finish: str) -> None:
    """`lambda: asyncio.sleep(10)` runs in a thread and returns a coroutine for the loop
    to await; a step cancelled meanwhile (its timeout, a cancel) must close it, not leave
    it to warn "never awaited" when it is collected: whether the thread returns it
    before the cancellation lands or after."""
    from dq.engine.steps import _in_thread

    release = threading.Event()
    made: list[Any] = []

    def fn() -> Any:
        release.wait(5)
        coro = asyncio.sleep(10)
        made.append(coro)
        return coro

    task = asyncio.ensure_future(_in_thread(fn))
    await asyncio.sleep(0.05)  # the thread is waiting
    if finish == "before":
        release.set()
        while not made:
            await asyncio.sleep(0.001)
        task.cancel()  # lands before the loop resumes the step with the coroutine
    else:
        task.cancel()
        await asyncio.sleep(0)
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):  # the thread closes it itself when it returns after the cancellation
        if made and inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED:
            break
        await asyncio.sleep(0.01)
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED
