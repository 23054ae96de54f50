"""`log()`: lines in the trace beside their step, in order, once across replay, and on `dq.job.<name>`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from dq import DqError, Queue, create_job, log, run, sleep, thread
from dq.engine.storage.base import EventRecord

from .threadfns import palette


def _logs(events: list[EventRecord]) -> list[tuple[str | None, str]]:
    return [(e.data.get("key"), e.data["message"]) for e in events if e.type == "log"]


def _fetch() -> int:
    log("inside fetch", size=3)
    return 5


async def test_lines_keep_order_and_step_and_are_not_written_again_on_replay(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    @create_job(name="chatty")
    async def chatty(data: Any) -> int:
        log("begin", n=1, obj=object())
        a = await run("fetch", _fetch)
        log("between")
        await sleep("1s")  # longer than short_sleep: suspends, then replays from the top
        log("after sleep")
        await run("last", lambda: log("inside last", level="warning"))
        return int(a)

    caplog.set_level(logging.INFO, logger="dq.job.chatty")
    queue = make_queue([chatty])
    async with queue:
        ex = await queue.jobs.chatty.start(None)
        assert await ex.result() == 5
        events = await ex.events()
    starts = [e for e in events if e.type == "start"]
    assert len(starts) >= 2, "the sleep should have suspended the execution and replayed it"
    assert _logs(events) == [
        (None, "begin"), ("fetch", "inside fetch"), (None, "between"), (None, "after sleep"), ("last", "inside last"),
    ]  # fmt: skip
    begin = next(e for e in events if e.type == "log" and e.data["message"] == "begin")
    assert begin.data["fields"]["n"] == 1 and begin.data["fields"]["obj"].startswith("<object object")
    fetch = next(e for e in events if e.type == "log" and e.data["key"] == "fetch")
    success = next(e for e in events if e.type == "step_success" and e.data["key"] == "fetch")
    assert fetch.seq < success.seq  # a step's lines come before its result
    records = [r for r in caplog.records if r.name == "dq.job.chatty"]
    assert [r.getMessage() for r in records] == ["begin", "inside fetch", "between", "after sleep", "inside last"]
    assert records[-1].levelno == logging.WARNING
    assert all(getattr(r, "dq_execution_id", None) == ex.id for r in records)
    assert records[1].dq_step == "fetch"  # type: ignore[attr-defined]


async def test_each_attempt_of_a_retried_step_writes_its_own_lines(make_queue: Callable[..., Queue]) -> None:
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        log(f"try {len(tries)}")
        if len(tries) == 1:
            raise ConnectionError("first call fails")
        return "ok"

    @create_job(name="retrier")
    async def retrier(data: Any) -> str:
        return str(await run("call", flaky, retry=2, backoff=10))

    queue = make_queue([retrier])
    async with queue:
        ex = await queue.jobs.retrier.start(None)
        assert await ex.result() == "ok"
        events = await ex.events()
    assert _logs(events) == [("call", "try 1"), ("call", "try 2")]


async def test_thread_logger_lands_beside_its_step(make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture) -> None:
    @create_job(name="painter")
    async def painter(data: Any) -> Any:
        return await thread("palette", palette, {"path": "cover.png"})

    caplog.set_level(logging.INFO, logger="dq.job.painter")
    queue = make_queue([painter])
    async with queue:
        ex = await queue.jobs.painter.start(None)
        await ex.result()
        events = await ex.events()
    assert _logs(events) == [("palette", "extracting colours of cover.png")]
    assert [r.getMessage() for r in caplog.records if r.name == "dq.job.painter"] == ["extracting colours of cover.png"]


async def test_a_sync_handler_logs_from_its_worker_thread(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="syncer")
    def syncer(data: Any) -> str:
        for i in range(3):
            log(f"line {i}", i=i)
        return "done"

    queue = make_queue([syncer])
    async with queue:
        ex = await queue.jobs.syncer.start(None)
        assert await ex.result() == "done"
        await queue.runtime.committer.flush()
        events = await ex.events()
    assert _logs(events) == [(None, "line 0"), (None, "line 1"), (None, "line 2")]


def test_log_outside_a_handler_is_refused() -> None:
    with pytest.raises(DqError, match="inside a job handler"):
        log("nowhere")
