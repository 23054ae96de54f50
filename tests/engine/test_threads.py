"""thread(): a step in a separate process, with limits, logs and memoisation."""

from __future__ import annotations

import os
from collections.abc import Callable
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
