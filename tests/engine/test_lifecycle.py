"""Pause, resume, cancel, retry — of executions and of whole jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from dq import CancelledError, Execution, JobError, Queue, create_job, run, sleep


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll a condition (awaitable or not) until true; fail with a clear message on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def status_is(ex: Execution, *statuses: str) -> bool:
    await ex.refresh()
    return ex.status in statuses


def gated_job(name: str, gate: asyncio.Event, done: list[str], **options: Any) -> Any:
    @create_job(name=name, **options)
    async def handler(data: Any) -> list[str]:
        await run("one", lambda: done.append("one"))
        await run("wait", gate.wait)
        await run("two", lambda: done.append("two"))
        await run("three", lambda: done.append("three"))
        return done

    return handler


async def test_pause_at_next_step_then_resume_by_replay(make_queue: Callable[..., Queue]) -> None:
    gate, done = asyncio.Event(), []
    queue = make_queue([gated_job("gated", gate, done)])
    async with queue:
        ex = await queue.jobs.gated.start(None)
        await until(lambda: done == ["one"])
        assert await ex.pause() is True
        gate.set()  # the in-flight step finishes; the pause lands at the next boundary
        await until(lambda: status_is(ex, "paused"))
        assert done == ["one"]
        assert await ex.resume() is True
        assert await ex.result() == ["one", "two", "three"]
        types = [e.type for e in await ex.events()]
    assert done == ["one", "two", "three"]  # "one" was replayed, not re-run
    assert types.index("pause") < types.index("resume")


async def test_pause_pending_and_sleeping_then_resume(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="napper")
    async def napper(data: Any) -> str:
        await sleep("2s")  # long: the handler unwinds and the execution waits
        return "done"

    queue = make_queue([napper])
    async with queue:
        ex = await queue.jobs.napper.start(None)
        await until(lambda: status_is(ex, "waiting"))
        assert await ex.pause()
        assert await status_is(ex, "paused")
        assert await ex.resume()
        assert await ex.result() == "done"
        sleep_steps = [s for s in await ex.steps() if s.kind == "sleep"]
    assert len(sleep_steps) == 1 and sleep_steps[0].status == "completed"


async def test_cancel_running_sleeping_and_pending(make_queue: Callable[..., Queue]) -> None:
    gate = asyncio.Event()
    settled: list[tuple[str, Any]] = []

    @create_job(name="blocker", on_cancel=lambda data, reason: settled.append(("cancel", reason)))
    async def blocker(data: Any) -> None:
        await run("block", gate.wait)

    @create_job(name="sleeper")
    async def sleeper(data: Any) -> None:
        await sleep("1 hour")

    queue = make_queue([blocker, sleeper])
    async with queue:
        running = await queue.jobs.blocker.start(1)
        sleeping = await queue.jobs.sleeper.start(None)
        await until(lambda: status_is(sleeping, "waiting"))
        await until(lambda: status_is(running, "running"))
        assert await running.cancel("user asked")
        assert await sleeping.cancel()
        for ex in (running, sleeping):
            with pytest.raises(CancelledError):
                await ex.result()
            await ex.refresh()
            assert ex.status == "cancelled"
        assert await running.cancel() is False  # already ended
    assert ("cancel", "user asked") in settled


async def test_cancel_right_after_start_ends_the_execution(make_queue: Callable[..., Queue]) -> None:
    """Regression: cancelling a task that had not begun dropped its coroutine, so no
    handler ever ended the execution: it stayed running with its lease renewed."""
    cancelled: list[Any] = []

    @create_job(name="quick", on_cancel=lambda data, reason: cancelled.append((data, reason)))
    async def quick(data: int) -> None:
        await run("block", asyncio.Event().wait)

    queue = make_queue([quick])
    async with queue:
        ex = await queue.jobs.quick.start(1)
        assert await ex.cancel("at once")
        with pytest.raises(CancelledError):
            await asyncio.wait_for(ex.result(), 10)
        other = await queue.jobs.quick.start(2)
        assert await queue.jobs.quick.cancel(2, "by input") == 1
        with pytest.raises(CancelledError):
            await asyncio.wait_for(other.result(), 10)
        for done in (ex, other):
            await done.refresh()
            assert done.status == "cancelled"
        assert await queue.jobs.get_all(status="running") == []
    assert sorted(cancelled) == [(1, "at once"), (2, "by input")]


async def test_cancelling_a_parent_cancels_its_children(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="kid")
    async def kid(data: Any) -> None:
        await sleep("1 hour")

    @create_job(name="dad")
    async def dad(data: Any) -> None:
        await asyncio.gather(kid.run(1), kid.run(2))

    queue = make_queue([dad, kid])
    async with queue:
        parent = await queue.jobs.dad.start(None)
        await until(lambda: _count(queue, parent_id=parent.id, status="waiting", n=2))
        assert await parent.cancel()
        await until(lambda: _count(queue, parent_id=parent.id, status="cancelled", n=2))
        await until(lambda: status_is(parent, "cancelled"))


async def _count(queue: Queue, n: int, **filters: Any) -> bool:
    return len(await queue.jobs.get_all(**filters)) == n


async def test_job_pause_resume_and_cancel_by_input(make_queue: Callable[..., Queue]) -> None:
    started: list[int] = []

    @create_job(name="work")
    async def work(data: int) -> int:
        started.append(data)
        await sleep("1 hour") if data == 99 else None
        return data

    queue = make_queue([work])
    async with queue:
        job = queue.jobs.work
        await job.pause()
        held = await job.start(1)
        await asyncio.sleep(0.2)
        assert started == [] and await status_is(held, "pending", "paused")
        await job.resume()
        assert await held.result() == 1
        stuck = await job.start(99)
        await until(lambda: status_is(stuck, "waiting"))
        assert await job.cancel(98) == 0
        assert await job.cancel(99) == 1
        await until(lambda: status_is(stuck, "cancelled"))


async def test_retry_a_failed_execution_keeps_completed_steps(make_queue: Callable[..., Queue]) -> None:
    calls: list[str] = []
    broken = {"yes": True}

    def fragile() -> str:
        calls.append("fragile")
        if broken["yes"]:
            raise RuntimeError("down")
        return "ok"

    @create_job(name="fix_me", retry=0)
    async def fix_me(data: Any) -> str:
        await run("prepare", lambda: calls.append("prepare"))
        return await run("fragile", fragile, retry=0)

    queue = make_queue([fix_me])
    async with queue:
        ex = await queue.jobs.fix_me.start(None)
        with pytest.raises(JobError):
            await ex.result()
        broken["yes"] = False
        assert await ex.retry() is True
        assert await ex.result() == "ok"
    assert calls == ["prepare", "fragile", "fragile"]


async def test_unknown_execution_is_a_clear_error(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([gated_job("g", asyncio.Event(), [])])
    async with queue:
        assert await queue.jobs.get("nope") is None
        from dq import DqError

        with pytest.raises(DqError, match="nope"):
            await queue.lifecycle.pause("nope")


def _recording(started: list[int]) -> Any:
    """Job "work": records each input it starts with, returns it."""

    @create_job(name="work")
    async def work(data: int) -> int:
        started.append(data)
        return data

    return work


@pytest.mark.parametrize("kind", ["memory"])
async def test_a_reload_of_the_paused_flags_does_not_undo_a_pause_made_while_it_read(
    make_queue: Callable[..., Queue],
) -> None:
    """The claim loop reloads the paused jobs on each poll; a pause written while that
    read ran must still hold when the read returns (the read saw the flags before it)."""
    started: list[int] = []
    queue = make_queue([_recording(started)], poll_interval="1h")  # no poll: only what the test does
    async with queue:
        runtime = await queue.started()
        storage = runtime.storage
        list_state = storage.list_state
        reading, answer = asyncio.Event(), asyncio.Event()

        async def slow(prefix: str) -> Any:
            flags = await list_state(prefix)  # before the pause
            reading.set()
            await answer.wait()
            return flags

        storage.list_state = slow  # type: ignore[method-assign]
        reload = asyncio.ensure_future(runtime._load_paused())
        await reading.wait()
        await queue.jobs.work.pause()
        answer.set()
        await reload
        storage.list_state = list_state  # type: ignore[method-assign]
        assert "work" in runtime.paused_jobs
        held = await queue.jobs.work.start(1)
        await asyncio.sleep(0.1)
        assert started == [] and await status_is(held, "pending", "paused")


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_a_claim_asked_before_a_pause_does_not_run_what_it_takes(make_queue: Callable[..., Queue]) -> None:
    """A claim in flight when the job is paused may take an execution started after
    the pause: it goes back to pending instead of running, and runs on resume."""
    started: list[int] = []
    queue = make_queue([_recording(started)], poll_interval="1h")  # no poll: only what the test does
    async with queue:
        runtime = await queue.started()
        storage = runtime.storage
        claim = storage.claim
        asked, go = asyncio.Event(), asyncio.Event()

        async def late(*args: Any, **kwargs: Any) -> Any:
            asked.set()
            await go.wait()  # the job is paused and an execution started meanwhile
            return await claim(*args, **kwargs)

        storage.claim = late  # type: ignore[method-assign]
        runtime.kick()
        await asked.wait()
        await queue.jobs.work.pause()
        held = await queue.jobs.work.start(1)
        go.set()
        await asyncio.sleep(0.2)
        storage.claim = claim  # type: ignore[method-assign]
        assert started == [] and await status_is(held, "pending", "paused")
        await queue.jobs.work.resume()
        assert await held.result() == 1
