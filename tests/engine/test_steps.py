"""Steps: keys, replay, results, errors, child jobs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from dq import (
    DqError,
    JobError,
    NonDeterminismError,
    Queue,
    TimeoutError,
    create_job,
    current_execution,
    run,
    sleep,
)


class PathIn(BaseModel):
    path: str


async def test_named_repeated_and_positional_keys(make_queue: Callable[..., Queue]) -> None:
    async def one() -> int:
        return 1

    @create_job(name="keys")
    async def keys(data: Any) -> list[int]:
        out = [await run("fetch", one) for _ in range(3)]
        out.append(await run(one))
        out.append(await run(lambda: 5))
        return out

    queue = make_queue([keys])
    async with queue:
        ex = await queue.jobs.keys.start(None)
        assert await ex.result() == [1, 1, 1, 1, 5]
        steps = await ex.steps()
    assert [s.key for s in steps] == ["fetch", "fetch#2", "fetch#3", "#4", "#5"]
    assert [s.kind for s in steps] == ["run"] * 5
    assert all(s.status == "completed" and s.line for s in steps)


async def test_completed_steps_never_run_again_across_job_retries(make_queue: Callable[..., Queue]) -> None:
    calls = {"a": 0, "b": 0}

    def count(name: str, fail_first: bool = False) -> Callable[[], int]:
        def step() -> int:
            calls[name] += 1
            if fail_first and calls[name] == 1:
                raise RuntimeError("flaky")
            return calls[name]

        return step

    @create_job(name="flaky", retry=2, backoff=0)
    async def flaky(data: Any) -> list[int]:
        a = await run("a", count("a"))
        b = await run("b", count("b", fail_first=True), retry=0)
        return [a, b]

    queue = make_queue([flaky])
    async with queue:
        ex = await queue.jobs.flaky.start(None)
        assert await ex.result() == [1, 2]
        await ex.refresh()
    assert calls == {"a": 1, "b": 2}
    assert ex.retry_count == 1


async def test_step_results_round_trip_models_and_reject_non_json(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="models")
    async def models(data: Any) -> str:
        m = await run("model", lambda: PathIn(path="x.mp3"))
        assert isinstance(m, PathIn)
        return m.path

    @create_job(name="bad", retry=0)
    async def bad(data: Any) -> None:
        await run("opaque", lambda: object(), retry=0)

    queue = make_queue([models, bad])
    async with queue:
        assert await queue.jobs.models.run(None) == "x.mp3"
        with pytest.raises(JobError) as info:
            await queue.jobs.bad.run(None)
    assert isinstance(info.value.cause, TypeError)
    assert "'opaque'" in str(info.value.cause)


async def test_step_outside_a_handler_is_a_clear_error() -> None:
    with pytest.raises(DqError, match="inside a job handler"):
        await run("x", lambda: 1)
    with pytest.raises(DqError, match="inside a job handler"):
        await sleep(10)


async def test_step_retries_with_backoff_then_fails_the_attempt(make_queue: Callable[..., Queue]) -> None:
    attempts: list[int] = []

    def boom() -> None:
        attempts.append(1)
        raise ValueError("nope")

    @create_job(name="steps", retry=0)
    async def steps(data: Any) -> None:
        await run("boom", boom, retry=2, backoff=[1, 2])

    queue = make_queue([steps])
    async with queue:
        ex = await queue.jobs.steps.start(None)
        with pytest.raises(JobError) as info:
            await ex.result()
        events = [e.type for e in await ex.events()]
        (step,) = await ex.steps()
    assert len(attempts) == 3
    assert isinstance(info.value.cause, ValueError) and str(info.value.cause) == "nope"
    assert events.count("step_failure") == 3
    assert step.status == "failed" and step.attempt == 3


async def test_step_timeout(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="slow", retry=0)
    async def slow(data: Any) -> None:
        await run("wait", lambda: asyncio.sleep(5), timeout="50ms", retry=0)

    queue = make_queue([slow])
    async with queue:
        with pytest.raises(JobError) as info:
            await queue.jobs.slow.run(None)
    assert isinstance(info.value.cause, TimeoutError)
    assert isinstance(info.value.cause, builtins_timeout())
    assert "'wait'" in str(info.value.cause)


def builtins_timeout() -> type[BaseException]:
    import builtins

    return builtins.TimeoutError


async def test_a_sync_step_runs_in_a_thread_and_never_blocks_the_loop(make_queue: Callable[..., Queue]) -> None:
    """Regression: sync step functions ran on the event loop, so a blocking call froze
    every execution (and lease renewal). This one blocks until the loop itself answers:
    on the loop it could only time out."""
    released = threading.Event()
    seen: list[tuple[bool, str]] = []

    def blocking() -> bool:
        # The job's contextvars come along into the thread.
        seen.append((threading.current_thread() is threading.main_thread(), current_execution().id))
        return released.wait(10)

    @create_job(name="blocks")
    async def blocks(data: Any) -> bool:
        return bool(await run("block", blocking))

    queue = make_queue([blocks])
    async with queue:
        ex = await queue.jobs.blocks.start(None)
        loop = asyncio.get_running_loop()
        while not seen:  # the loop keeps turning while the step blocks its thread
            await asyncio.sleep(0.01)
        loop.call_soon(released.set)
        assert await ex.result() is True
    assert seen == [(False, ex.id)]


async def test_nondeterminism_is_detected(make_queue: Callable[..., Queue]) -> None:
    attempts = {"shifty": 0, "renamed": 0}

    @create_job(name="shifty", retry=1, backoff=0)
    async def shifty(data: Any) -> None:
        attempts["shifty"] += 1
        if attempts["shifty"] == 1:
            await run("sleep", lambda: 1)  # a run step under the key "sleep"
            raise RuntimeError("retry me")
        await sleep(0)  # the replay reaches a sleep step at that key

    @create_job(name="renamed", retry=1, backoff=0)
    async def renamed(data: Any) -> None:
        attempts["renamed"] += 1
        if attempts["renamed"] == 1:
            await run(first_fn)
            raise RuntimeError("retry me")
        await run(second_fn)  # the same position, another function

    queue = make_queue([shifty, renamed])
    async with queue:
        for name, needle in (("shifty", "'sleep'"), ("renamed", "#1")):
            ex = await queue.jobs[name].start(None)
            with pytest.raises(JobError) as info:
                await ex.result()
            assert isinstance(info.value.cause, NonDeterminismError), info.value.cause
            assert needle in str(info.value.cause)
            await ex.refresh()
            assert ex.retry_count == 1  # not retried again: a replay would diverge the same way


def first_fn() -> int:
    return 1


def second_fn() -> int:
    return 2


async def test_child_jobs_fan_out_fan_in(make_queue: Callable[..., Queue]) -> None:
    runs = {"meta": 0, "transcode": 0}

    @create_job(name="transcode", input=PathIn, output=PathIn)
    async def transcode(data: PathIn) -> PathIn:
        runs["transcode"] += 1
        await run("ffmpeg", lambda: None)
        return PathIn(path=data.path.replace(".mp3", ".ogg"))

    @create_job(name="metadata", input=PathIn)
    async def metadata(data: PathIn) -> dict[str, str]:
        runs["meta"] += 1
        return {"title": data.path.upper()}

    @create_job(name="process", input=PathIn)
    async def process(data: PathIn) -> dict[str, str]:
        meta, ogg = await asyncio.gather(metadata.run(data), transcode.run({"path": data.path}))
        await run("store", lambda: None)
        return {"title": meta["title"], "path": ogg.path}

    queue = make_queue([process, metadata, transcode])
    async with queue:
        ex = await queue.jobs.process.start({"path": "a.mp3"})
        assert await ex.result() == {"title": "A.MP3", "path": "a.ogg"}
        steps = await ex.steps()
        children = await queue.jobs.get_all(parent_id=ex.id)
    assert [s.kind for s in steps] == ["child", "child", "run"]
    assert sorted(c.job_name for c in children) == ["metadata", "transcode"]
    assert all(c.status == "completed" for c in children)
    assert runs == {"meta": 1, "transcode": 1}


async def test_child_failure_propagates_with_cause(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="child", retry=1, backoff=0)
    async def child(data: Any) -> None:
        raise KeyError("missing")

    @create_job(name="parent", retry=0)
    async def parent(data: Any) -> None:
        await child.run({"n": 1})

    queue = make_queue([parent, child])
    async with queue:
        with pytest.raises(JobError) as info:
            await queue.jobs.parent.run(None)
    outer = info.value.cause
    assert isinstance(outer, JobError), outer
    assert isinstance(outer.cause, KeyError)
    assert "child" in str(outer)


async def test_start_inside_a_handler_is_a_durable_step(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="leaf")
    async def leaf(data: Any) -> int:
        return int(data) * 2

    @create_job(name="root")
    async def root(data: Any) -> str:
        ex = await leaf.start(21)
        return ex.id

    queue = make_queue([root, leaf])
    async with queue:
        child_id = await queue.jobs.root.run(None)
        child = await queue.jobs.get(child_id)
        assert child is not None
        assert await child.result() == 42
        assert child.parent_id is not None


async def test_unregistered_child_job_is_a_clear_error(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="stray")
    async def stray(data: Any) -> None:
        return None

    @create_job(name="caller", retry=0)
    async def caller(data: Any) -> None:
        await stray.run(None)

    queue = make_queue([caller])
    async with queue:
        with pytest.raises(JobError) as info:
            await queue.jobs.caller.run(None)
    assert "'stray' is not registered" in str(info.value.cause)


async def test_sleep_short_and_long(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="sleepy")
    async def sleepy(data: Any) -> str:
        await sleep("50ms")
        await sleep(600)  # longer than short_sleep (300ms): the handler unwinds and is woken
        return "awake"

    queue = make_queue([sleepy])
    async with queue:
        ex = await queue.jobs.sleepy.start(None)
        seen = set()
        for _ in range(100):
            await ex.refresh()
            seen.add(ex.status)
            if ex.status == "completed":
                break
            await asyncio.sleep(0.02)
        assert await ex.result() == "awake"
        events = [e.type for e in await ex.events()]
        kinds = [s.kind for s in await ex.steps()]
    assert "waiting" in seen
    assert events.count("sleep") == 2 and events.count("wake") == 2
    assert kinds == ["sleep", "sleep"]


async def test_concurrent_branches_replay_their_own_children(make_queue: Callable[..., Queue]) -> None:
    """Children are keyed by job and input: after a pause, each gather branch gets its own result."""
    gate = asyncio.Event()

    @create_job(name="double")
    async def double(data: int) -> int:
        return data * 2

    @create_job(name="branches")
    async def branches(data: Any) -> list[int]:
        async def slow_branch() -> int:
            # 60 ms the first time; instant on replay (a memoised step): the order flips.
            await run("slow", lambda: asyncio.sleep(0.06))
            return int(await double.run(1))

        async def steady_branch() -> int:
            await asyncio.sleep(0.02)
            return int(await double.run(2))

        first = await asyncio.gather(slow_branch(), steady_branch())
        await run("hold", gate.wait)
        return [*first, await double.run(5)]

    queue = make_queue([branches, double])
    async with queue:
        from dq import current_execution

        ex = await queue.jobs.branches.start(None)
        from .test_lifecycle import status_is, until

        await until(lambda: _has_step(ex, "hold"))
        await ex.pause()
        gate.set()
        await until(lambda: status_is(ex, "paused"))
        await ex.resume()
        assert await ex.result() == [2, 4, 10]
        with pytest.raises(DqError):
            current_execution()


async def _has_step(ex: Any, key: str) -> bool:
    return any(s.key == key for s in await ex.steps())


async def test_current_step_is_stored_when_the_execution_suspends_and_ends(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="where")
    async def where(data: Any) -> int:
        await run("a", lambda: 1)
        await sleep(600)  # suspends (longer than short_sleep)
        await run("b", lambda: 2)
        return 3

    queue = make_queue([where])
    async with queue:
        ex = await queue.jobs.where.start(None)
        while (rec := await queue.storage.get_execution(ex.id)) is not None and rec.status not in ("waiting", "completed"):
            await asyncio.sleep(0.01)
        assert rec is not None and rec.current_step == "sleep"
        assert await ex.result() == 3
        done = await queue.storage.get_execution(ex.id)
    assert done is not None and done.current_step == "b"
