"""Step waiters of the admission ledger (`slots.Ledger`): a slot left by a holder that
no longer runs reaches every waiter through the safety-net re-check (one timer for
all of them), in line order, never beyond the limit; a release that nobody awaits
and whose write fails is logged, not lost as an unretrieved exception."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from dq.engine.limits import Limit
from dq.engine.slots import Ledger, state_key
from dq.engine.storage.base import Batch, CommitResult
from dq.engine.storage.memory import MemoryStorage

LIMIT = Limit("step:job:write", 1)


def _ledger(storage: MemoryStorage, running: set[str], commit: Any = None) -> Ledger:
    def submit(batch: Batch) -> asyncio.Future[CommitResult]:
        fut: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        try:
            fut.set_result((commit or storage.commit_now)(batch))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    async def statuses(ids: list[str]) -> dict[str, str]:
        return {i: "running" for i in ids if i in running}

    return Ledger(storage.get_state, submit, statuses, lambda: None, recheck_s=0.05, far_ms=30_000, at_once=False)


async def test_a_dead_holders_slot_reaches_every_waiter_by_the_shared_recheck() -> None:
    storage = MemoryStorage()
    # The slot is held by a step of an execution that runs, for now.
    storage.commit_now(Batch(state={state_key(LIMIT): {"limit": 1, "holders": ["gone|write#1"], "waiters": []}}))
    running = {"gone", *(f"e{i}" for i in range(5))}
    ledger = _ledger(storage, running)
    order: list[int] = []
    inside = 0

    async def step(i: int) -> None:
        nonlocal inside
        holder = f"e{i}|write#1"
        await ledger.acquire_step(LIMIT, holder, priority=0)
        inside += 1
        assert inside == 1, "two holders of a slot of one"
        order.append(i)
        await asyncio.sleep(0)
        inside -= 1
        await ledger.release(holder, [state_key(LIMIT)])

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(step(i)))
        await asyncio.sleep(0.001)  # one after the other: their places in line
    assert order == []
    running.discard("gone")  # its process dies, the slot not given back: only a re-check finds it
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert order == [0, 1, 2, 3, 4]
    assert (await storage.get_state([state_key(LIMIT)])) == {}


async def test_a_failed_release_nobody_awaits_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    storage = MemoryStorage()
    fail = {"on": False}

    def commit(batch: Batch) -> CommitResult:
        if fail["on"]:
            raise OSError("storage down")
        return storage.commit_now(batch)

    ledger = _ledger(storage, {"e1"}, commit)
    await ledger.acquire_step(LIMIT, "e1|write#1", priority=0)
    fail["on"] = True
    with caplog.at_level(logging.WARNING, logger="dq"):
        ledger.give_back("e1|write#1", [state_key(LIMIT)], "could not give back the step slot of e1|write#1")
        for _ in range(5):
            await asyncio.sleep(0)
    assert any("could not give back the step slot of e1|write#1: storage down" in r.getMessage() for r in caplog.records)
