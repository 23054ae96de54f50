"""`patched(change_id)`: True on code that has the change (a marker step), False
when replaying a history recorded before it; retiring the patch keeps histories valid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dq import DqError, Queue, create_job, patched, run, sleep

from .test_lifecycle import status_is, until


def _job(code: dict[str, str]) -> Any:
    """The job's code as deployed: "old" (no patch), "patched", or "retired" (new only)."""

    @create_job(name="greeter")
    async def greeter(name: str) -> list[Any]:
        if code["version"] == "retired" or (code["version"] == "patched" and patched("polite")):
            greeting = await run("greet", lambda: f"good day, {name}")
        else:
            greeting = await run("greet", lambda: f"hi {name}")
        await sleep("1s")  # suspends: the rest runs by replay, on whatever code is deployed then
        tail = await run(lambda: "unnamed step after the patch point")
        return [greeting, tail]

    return greeter


async def _suspended(queue: Queue, ex: Any) -> bool:
    return await status_is(ex, "waiting")


async def test_old_histories_take_the_old_branch(make_queue: Callable[..., Queue]) -> None:
    code = {"version": "old"}
    queue = make_queue([_job(code)])
    async with queue:
        before = await queue.jobs.greeter.start("ann")
        await until(lambda: _suspended(queue, before))
        code["version"] = "patched"  # deployed while `before` is in flight
        after = await queue.jobs.greeter.start("bob")
        assert (await before.result())[0] == "hi ann"
        assert (await after.result())[0] == "good day, bob"
        before_steps = [(s.key, s.kind) for s in await before.steps()]
        after_steps = [(s.key, s.kind, s.output) for s in await after.steps()]
        events = [e for e in await after.events() if e.type == "step_success" and e.data["kind"] == "patch"]
    assert ("patch:polite", "patch") not in before_steps
    assert ("patch:polite", "patch", True) in after_steps
    assert [e.data["name"] for e in events] == ["polite"]


async def test_a_patched_history_replays_true_and_survives_retiring(make_queue: Callable[..., Queue]) -> None:
    code = {"version": "patched"}
    queue = make_queue([_job(code)])
    async with queue:
        patched_run = await queue.jobs.greeter.start("cy")
        await until(lambda: _suspended(queue, patched_run))
        # Replayed on the same code after the sleep: the marker answers True again.
        assert await patched_run.result() == ["good day, cy", "unnamed step after the patch point"]
        code["version"] = "retired"
        retired_run = await queue.jobs.greeter.start("di")
        await until(lambda: _suspended(queue, retired_run))
        mid = await queue.jobs.greeter.start("ed")
        await until(lambda: _suspended(queue, mid))
        code["version"] = "patched"  # a marker-less history on patched code again
        assert await retired_run.result() == ["good day, di", "unnamed step after the patch point"]
        assert (await mid.result())[0] == "good day, ed"


async def test_retiring_a_patch_under_an_execution_that_recorded_it(make_queue: Callable[..., Queue]) -> None:
    """The marker takes no call position: the unnamed step after it keeps its key."""
    code = {"version": "patched"}
    queue = make_queue([_job(code)])
    async with queue:
        ex = await queue.jobs.greeter.start("fay")
        await until(lambda: _suspended(queue, ex))
        code["version"] = "retired"
        assert await ex.result() == ["good day, fay", "unnamed step after the patch point"]
        keys = [s.key for s in await ex.steps()]
    assert "#3" in keys and "patch:polite" in keys  # greet, sleep, then the unnamed third call


def test_patched_outside_a_handler_or_with_a_bad_id() -> None:
    with pytest.raises(DqError):
        patched("x")
    for bad in ("", "a#b", 3):
        with pytest.raises(ValueError, match="change_id"):
            patched(bad)  # type: ignore[arg-type]
