"""Hooks: every on_* option, job.on, queue.on, in order; failing hooks change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from dq import JobError, Queue, create_job, run


async def test_order_and_payloads_on_success(make_queue: Callable[..., Queue]) -> None:
    log: list[tuple[str, Any]] = []

    async def async_hook(data: Any) -> None:
        await asyncio.sleep(0)
        log.append(("option:start", data))

    @create_job(
        name="hooked",
        on_trigger=lambda data: log.append(("option:trigger", data)),
        on_start=async_hook,
        on_success=lambda data, out: log.append(("option:success", out)),
        on_settled=lambda data, result: log.append(("option:settled", result["status"])),
    )
    async def hooked(data: Any) -> int:
        await run("double", lambda: data * 2)
        return data * 2

    hooked.on("success", lambda p: log.append(("job.on:success", p["output"])))
    hooked.on("step", lambda p: log.append(("job.on:step", p["step"]["key"])))
    queue = make_queue([hooked])
    queue.on("job_success", lambda p: log.append(("queue.on:success", p["output"])))
    queue.on("job_settled", lambda p: log.append(("queue.on:settled", p["result"]["status"])))
    payloads: list[dict[str, Any]] = []
    queue.on("step_success", payloads.append)
    async with queue:
        ex = await queue.jobs.hooked.start(21)
        assert await ex.result() == 42
    assert log == [
        ("option:trigger", 21),
        ("option:start", 21),
        ("job.on:step", "double"),
        ("option:success", 42),
        ("job.on:success", 42),
        ("queue.on:success", 42),
        ("option:settled", "completed"),
        ("queue.on:settled", "completed"),
    ]
    (payload,) = payloads
    assert payload["execution_id"] == ex.id and payload["job_name"] == "hooked"
    assert payload["step"]["key"] == "double" and payload["timestamp"].tzinfo is not None


async def test_error_failure_and_settled_on_failure(make_queue: Callable[..., Queue]) -> None:
    log: list[str] = []

    @create_job(
        name="doomed", retry=1, backoff=0,
        on_error=lambda data, err: log.append(f"error:{err}"),
        on_failure=lambda data, err: log.append(f"failure:{err}"),
        on_settled=lambda data, result: log.append(f"settled:{result['status']}"),
    )  # fmt: skip
    async def doomed(data: Any) -> None:
        raise RuntimeError("bad")

    queue = make_queue([doomed])
    queue.on("job_error", lambda p: log.append(f"queue:error:{p['attempt']}"))
    async with queue:
        with pytest.raises(JobError):
            await queue.jobs.doomed.run(None)
    assert log == [
        "error:bad", "queue:error:1",
        "error:bad", "queue:error:2", "failure:bad", "settled:failed",
    ]  # fmt: skip


async def test_a_failing_hook_is_recorded_and_changes_nothing(make_queue: Callable[..., Queue]) -> None:
    def explode(*args: Any) -> None:
        raise ValueError("hook bug")

    @create_job(name="fine", on_start=explode, on_success=explode)
    async def fine(data: Any) -> str:
        return "ok"

    queue = make_queue([fine])
    queue.on("job_settled", explode)
    async with queue:
        ex = await queue.jobs.fine.start(None)
        assert await ex.result() == "ok"
        await queue.runtime.committer.flush()
        events = await ex.events()
        await ex.refresh()
    assert ex.status == "completed"
    hook_errors = [e.data for e in events if e.type == "hook_error"]
    assert [h["hook"] for h in hook_errors] == ["on_start", "on_success", "queue.on('job_settled')"]
    assert all(h["error"]["message"] == "hook bug" for h in hook_errors)


def test_unknown_events_are_rejected() -> None:
    job = create_job(lambda d: None, name="j")
    with pytest.raises(ValueError, match="'finish'"):
        job.on("finish", print)
    from dq import create_queue

    with pytest.raises(ValueError, match="'job_finish'"):
        create_queue(jobs=[job]).on("job_finish", print)


async def test_compensation_from_on_failure(make_queue: Callable[..., Queue]) -> None:
    """The original design's compensation pattern: on_failure starts another job."""

    @create_job(name="compensate")
    async def compensate(data: dict[str, str]) -> str:
        return f"undone {data['task']}"

    @create_job(name="risky", retry=0, on_failure=lambda data, err: compensate.start({"task": data["task"]}))
    async def risky(data: dict[str, str]) -> None:
        raise RuntimeError("simulated failure")

    queue = make_queue([risky, compensate])
    async with queue:
        with pytest.raises(JobError):
            await queue.jobs.risky.run({"task": "t1"})
        done = await queue.jobs.get_first(job_name="compensate")
        assert done is not None
        assert await done.result() == "undone t1"


async def test_the_queue_logger_reports_hook_failures(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    def explode(*args: Any) -> None:
        raise ValueError("hook bug")

    @create_job(name="logged", on_success=explode)
    async def logged(data: Any) -> str:
        return "ok"

    queue = make_queue([logged], logger=logging.getLogger("my.app.jobs"))
    with caplog.at_level(logging.ERROR, logger="my.app.jobs"):
        async with queue:
            assert await queue.jobs.logged.run(None) == "ok"
    assert any(r.name == "my.app.jobs" and "on_success" in r.getMessage() for r in caplog.records)
