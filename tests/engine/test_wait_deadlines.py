"""Deadlines on waits: `pipe.wait_for(..., timeout=)` and `job.wait_for(..., timeout=)`
raise TimeoutError at a deadline stored with the step, also across a restart."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from typing import Any

import pytest

from dq import Queue, TimeoutError, create_job, create_pipe
from dq.engine.ids import now_ms
from dq.engine.storage.base import Batch, PipeMessage, Storage

from .test_lifecycle import status_is, until

approvals = create_pipe(name="approvals")


def _approve_job(timeout: Any) -> Any:
    @create_job(name="approve", retry=0)
    async def approve(order: str) -> str:
        try:
            msg = await approvals.wait_for({"order": order}, timeout=timeout)
        except TimeoutError as exc:
            assert isinstance(exc, builtins.TimeoutError)
            return "expired"
        return f"approved by {msg['by']}"

    return approve


async def _wait_step(queue: Queue, execution_id: str) -> Any:
    ex = await queue.jobs.get(execution_id)
    assert ex is not None
    return next((s for s in await ex.steps() if s.kind == "wait"), None)


async def test_pipe_wait_times_out_or_gets_its_message_in_time(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([_approve_job("400ms")], pipes=[approvals])
    async with queue:
        late = await queue.jobs.approve.start("o1")
        on_time = await queue.jobs.approve.start("o2")
        await until(lambda: _wait_step(queue, on_time.id))
        await queue.pipes.approvals.send({"order": "o2", "by": "ann"})
        assert await on_time.result() == "approved by ann"
        assert await late.result() == "expired"
        step = await _wait_step(queue, late.id)
        assert step.status == "failed" and step.error["message"].startswith("waiting on pipe 'approvals' timed out")
        assert step.output["deadline"] == step.started_at + 400


async def test_job_wait_for_times_out(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="payment")
    async def payment(data: dict[str, str]) -> str:
        return "paid " + data["order"]

    @create_job(name="ship", retry=0)
    async def ship(order: str) -> str:
        try:
            return await payment.wait_for({"order": order}, timeout="300ms")
        except TimeoutError:
            return "no payment"

    queue = make_queue([payment, ship])
    async with queue:
        waiting = await queue.jobs.ship.start("o1")
        expiring = await queue.jobs.ship.start("o2")
        await until(lambda: _wait_step(queue, waiting.id))
        await queue.jobs.payment.run({"order": "o1"})
        assert await waiting.result() == "paid o1"
        assert await expiring.result() == "no payment"


async def test_an_uncaught_wait_timeout_fails_the_attempt(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="strict", retry=0)
    async def strict(order: str) -> Any:
        return await approvals.wait_for({"order": order}, timeout="100ms")

    queue = make_queue([strict], pipes=[approvals])
    async with queue:
        ex = await queue.jobs.strict.start("o1")
        with pytest.raises(Exception) as info:
            await ex.result()
        assert isinstance(info.value.cause, TimeoutError)  # type: ignore[attr-defined]


def test_a_malformed_timeout_is_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="timeout"):
        asyncio.run(_call_outside(approvals.wait_for({"order": "x"}, timeout="soon")))


async def _call_outside(coro: Any) -> Any:
    return await coro


@pytest.mark.parametrize("sent_while_down", [False, True])
async def test_the_deadline_survives_a_restart(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage], sent_while_down: bool
) -> None:
    """Down across the deadline: the wait ends when a process resumes it, with the
    message if one came before the deadline (while nothing ran), else TimeoutError."""
    first = make_queue([_approve_job("1500ms")], pipes=[approvals])
    await first.start()
    ex = await first.jobs.approve.start("o1")
    await until(lambda: _wait_step(first, ex.id))
    deadline = (await _wait_step(first, ex.id)).output["deadline"]
    await first.close()
    if sent_while_down:
        storage = make_storage()
        await storage.open()
        await storage.commit(Batch(messages=[PipeMessage("approvals", {"order": "o1", "by": "bob"}, now_ms())]))
        if storage is not first.storage:
            await storage.aclose()
    await asyncio.sleep(max(0.0, (deadline - now_ms()) / 1000) + 0.2)
    second = make_queue([_approve_job("1500ms")], pipes=[approvals])
    async with second:
        again = await second.jobs.get(ex.id)
        assert again is not None
        assert await again.result() == ("approved by bob" if sent_while_down else "expired")
        step = await _wait_step(second, ex.id)
        assert step.output["deadline"] == deadline
        assert await status_is(again, "completed")
