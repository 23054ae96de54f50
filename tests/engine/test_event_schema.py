"""Every event the engine writes is one of the kinds engine/event_schema.py lists, with
the data its schema describes: the dashboard and the hooks read them by that schema."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dq import Queue, create_job, create_pipe, run, sleep
from dq.engine.event_schema import SCHEMA, EventKind, check


def test_check_names_what_is_wrong() -> None:
    assert check("step_start", {"key": "k", "name": "k", "kind": "run", "attempt": 1, "line": 3}) == []
    assert check("step_start", {"key": "k", "name": "k", "kind": "run", "attempt": 1}) == ["step_start: missing 'line'"]
    assert check("cancel", {"reason": None, "why": 1}) == ["cancel: unexpected 'why'"]
    assert check("exploded", {}) == ["unknown event kind 'exploded'"]
    assert set(SCHEMA) == set(EventKind)


async def test_every_event_written_matches_its_schema(make_queue: Callable[..., Queue]) -> None:
    calls: dict[str, int] = {}
    pipe = create_pipe("notes")

    def flaky() -> str:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] == 1:
            raise ConnectionError("first call fails")
        return "ok"

    @create_job(name="child")
    async def child(data: int) -> int:
        return data * 2

    def boom(data: Any, output: Any) -> None:
        raise RuntimeError("a hook that raises")

    @create_job(name="parent", retry=1, backoff=10, on_success=boom)
    async def parent(data: int) -> int:
        await run("one", lambda: 1)
        await run("flaky", flaky, retry=1, backoff=10)
        await sleep(20)
        doubled = await child.run(data)
        await pipe.send({"n": doubled})
        calls["attempt"] = calls.get("attempt", 0) + 1
        if calls["attempt"] == 1:
            raise ValueError("the first attempt fails")
        return int(doubled)

    @create_job(name="held")
    async def held(data: None) -> None:
        await run("first", lambda: 1)
        await run("block", asyncio.Event().wait)

    queue = make_queue([parent, child, held], pipes=[pipe])
    async with queue:
        assert await queue.jobs.parent.run(4) == 8
        await queue.pipes["notes"].send({"n": 0})  # outside a handler: a pipe_send event (inside: a step)
        blocked = await queue.jobs.held.start(None)
        while not any(s.key == "block" for s in await queue.storage.get_steps(blocked.id)):
            await asyncio.sleep(0.02)
        assert await blocked.pause()
        assert await blocked.resume()
        assert await blocked.cancel("enough")
        await asyncio.sleep(0.2)
        events = await queue.storage.read_events(0, limit=10_000)
    problems = [p for ev in events for p in check(ev.type, ev.data)]
    assert problems == []
    seen = {ev.type for ev in events}
    expected = {
        "trigger", "start", "step_start", "step_success", "step_failure", "sleep", "wake",
        "error", "retry", "success", "cancel", "resume", "hook_error", "pipe_send",
    }  # fmt: skip
    assert expected <= seen, sorted(expected - seen)
