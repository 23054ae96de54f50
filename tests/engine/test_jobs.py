"""Definitions, validation, retries, backoff, timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

from dq import (
    JobError,
    Queue,
    TimeoutError,
    ValidationError,
    create_job,
    create_queue,
    run,
)
from dq.engine.backoff import make_backoff
from dq.engine.storage.base import ExecutionQuery


class Song(BaseModel):
    path: str
    seconds: int


def test_decorator_and_call_forms() -> None:
    @create_job
    def plain(data: Any) -> None:
        return None

    async def handler(data: Any) -> None:
        return None

    called = create_job(handler, name="called", retry=1)
    assert plain.name == "plain" and called.name == "called"
    assert called.describe()["retry"] == "1"


def test_two_jobs_under_one_name_is_an_error() -> None:
    a = create_job(lambda d: None, name="same")
    b = create_job(lambda d: None, name="same")
    with pytest.raises(ValueError, match="'same'"):
        create_queue(jobs=[a, b])


def test_unknown_job_name_is_a_clear_error() -> None:
    queue = create_queue(jobs=[create_job(lambda d: None, name="known")])
    with pytest.raises(AttributeError, match=r"'unknown'.*known"):
        queue.jobs.unknown  # noqa: B018
    with pytest.raises(KeyError, match="'unknown'"):
        queue.jobs["unknown"]


async def test_bad_input_raises_at_the_call_site_and_stores_nothing(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="song", input=Song)
    async def song(data: Song) -> int:
        return data.seconds

    @create_job(name="free")
    async def free(data: Any) -> Any:
        return data

    queue = make_queue([song, free])
    async with queue:
        with pytest.raises(ValidationError) as info:
            await queue.jobs.song.start({"path": "a.mp3", "seconds": "long"})
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value.cause, pydantic.ValidationError)
        assert "song" in str(info.value) and "seconds" in str(info.value)
        with pytest.raises(ValidationError, match="JSON"):
            await queue.jobs.free.start({"when": object()})
        assert await queue.jobs.get_all() == []
        assert await queue.jobs.song.run({"path": "a.mp3", "seconds": "12"}) == 12
        assert await queue.jobs.free.run([1, "two"]) == [1, "two"]


async def test_typed_input_and_output(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="typed", input=list[int], output=Song)
    async def typed(data: list[int]) -> dict[str, Any]:
        return {"path": "x", "seconds": sum(data)}

    @create_job(name="wrong", output=Song, retry=0)
    async def wrong(data: Any) -> dict[str, Any]:
        return {"path": 3}

    queue = make_queue([typed, wrong])
    async with queue:
        out = await queue.jobs.typed.run(["1", 2])
        assert out == Song(path="x", seconds=3)
        ex = await queue.jobs.wrong.start(None)
        with pytest.raises(JobError) as info:
            await ex.result()
        assert isinstance(info.value.cause, ValidationError)
        await ex.refresh()
        assert ex.status == "failed" and isinstance(ex.error, ValidationError)


async def test_default_three_retries(make_queue: Callable[..., Queue]) -> None:
    attempts: list[float] = []
    errors: list[int] = []
    failures: list[Any] = []

    @create_job(
        name="always_fails", backoff=0,
        on_error=lambda data, err: errors.append(1),
        on_failure=lambda data, err: failures.append(err),
    )  # fmt: skip
    async def always_fails(data: Any) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError(f"attempt {len(attempts)}")

    queue = make_queue([always_fails])
    async with queue:
        ex = await queue.jobs.always_fails.start(None)
        with pytest.raises(JobError) as info:
            await ex.result()
        await ex.refresh()
    assert len(attempts) == 4 and ex.retry_count == 3
    assert str(info.value.cause) == "attempt 4"
    assert len(errors) == 4 and len(failures) == 1 and str(failures[0]) == "attempt 4"


async def test_retry_fn_and_backoff_list(make_queue: Callable[..., Queue]) -> None:
    attempts: list[float] = []

    @create_job(name="counted", retry=lambda data: data["retries"], backoff=["100ms", "200ms"])
    async def counted(data: Any) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("x")

    queue = make_queue([counted])
    async with queue:
        with pytest.raises(JobError):
            await queue.jobs.counted.run({"retries": 2})
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.09 and attempts[2] - attempts[1] >= 0.19


def test_every_backoff_form() -> None:
    assert make_backoff(250)(1, None) == 250
    assert make_backoff("2s")(5, None) == 2000
    seq = make_backoff(["1s", "5s"])
    assert [seq(n, None) for n in (1, 2, 3)] == [1000, 5000, 5000]
    exp = make_backoff({"initial": "100ms", "factor": 3, "max": "1s"})
    assert [exp(n, None) for n in (1, 2, 3, 4)] == [100, 300, 900, 1000]
    capped = make_backoff({"initial": 100, "attempts": 2})
    assert [capped(n, None) for n in (1, 2, 3)] == [100, 200, 200]
    assert make_backoff(lambda attempt, data: attempt * data)(3, 7) == 21
    assert make_backoff(lambda attempt: f"{attempt}s")(2, None) == 2000
    default = make_backoff(None)
    assert all(1000 <= default(1, None) <= 2000 for _ in range(50))
    assert all(2000 <= default(2, None) <= 4000 for _ in range(50))


async def test_job_timeout_fails_the_attempt(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="slowpoke", timeout="100ms", retry=1, backoff=0)
    async def slowpoke(data: Any) -> None:
        await run("forever", lambda: asyncio.sleep(10))

    queue = make_queue([slowpoke])
    async with queue:
        ex = await queue.jobs.slowpoke.start(None)
        with pytest.raises(JobError) as info:
            await ex.result()
        await ex.refresh()
    assert isinstance(info.value.cause, TimeoutError)
    assert "100ms" in str(info.value.cause)
    assert ex.retry_count == 1


async def test_sync_handler_runs_in_a_thread(make_queue: Callable[..., Queue]) -> None:
    import threading

    main = threading.get_ident()

    @create_job(name="blocking")
    def blocking(data: Any) -> bool:
        time.sleep(0.01)
        return threading.get_ident() != main

    queue = make_queue([blocking])
    async with queue:
        assert await queue.jobs.blocking.run(None) is True


async def test_job_outside_its_queue_is_a_clear_error() -> None:
    @create_job(name="lonely")
    async def lonely(data: Any) -> None:
        return None

    from dq import DqError

    with pytest.raises(DqError, match=r"queue.jobs\['lonely'\]"):
        await lonely.run(None)


async def test_with_storage_keeps_jobs_pipes_and_options() -> None:
    from dq import create_memory_storage, create_pipe

    p = create_pipe(name="p")
    job = create_job(lambda d: d, name="echo")
    queue = create_queue(jobs=[job], pipes=[p], concurrency=3, poll_interval="50ms")
    other = create_memory_storage()
    moved = queue.with_storage(other)
    assert moved.storage is other and moved is not queue
    assert moved.definitions == {"echo": job} and list(moved.pipes) == ["p"]
    assert moved.concurrency == 3 and moved.poll_interval_s == 0.05
    async with moved:
        assert await moved.jobs.echo.run(5) == 5
    assert await other.count(ExecutionQuery()) == {"completed": 1}


async def test_long_timeouts_are_enforced_by_the_watchdog(
    make_queue: Callable[..., Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dq.engine import attempt

    monkeypatch.setattr(attempt, "_WATCHDOG_MIN_MS", 100)  # "long" from 100 ms on

    @create_job(name="stuck", timeout="500ms", retry=0)
    async def stuck(data: Any) -> None:
        await run("forever", lambda: asyncio.sleep(30))

    queue = make_queue([stuck])
    async with queue:
        started = time.monotonic()
        with pytest.raises(JobError) as info:
            await queue.jobs.stuck.run(None)
    assert isinstance(info.value.cause, TimeoutError) and "500ms" in str(info.value.cause)
    assert time.monotonic() - started < 5
