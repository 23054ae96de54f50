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
from dq.engine.slots import Ledger, Request, state_key
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

    return Ledger(storage.get_state, storage.list_state, submit, statuses, lambda: None, recheck_s=0.05, far_ms=30_000, at_once=False)


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


async def test_a_notification_during_a_look_is_not_lost() -> None:
    """Another process grants the slot while this one is still reading the state for
    an earlier notification: that read predates the grant, so a second read must follow
    (the safety net is minutes away here). The read of the first look is held open."""
    storage = MemoryStorage()
    holder = "here|write#1"
    storage.commit_now(Batch(state={state_key(LIMIT): {"limit": 1, "holders": ["there|write#1"], "waiters": []}}))
    reading, go_on = asyncio.Event(), asyncio.Event()
    reads = 0

    async def get_state(keys: list[str]) -> dict[str, Any]:
        nonlocal reads
        reads += 1
        state = await storage.get_state(keys)  # the state before the grant below
        if reads == 2:  # the first look's read (the first is this process's own round)
            reading.set()
            await go_on.wait()
        return state

    def submit(batch: Batch) -> asyncio.Future[CommitResult]:
        fut: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        fut.set_result(storage.commit_now(batch))
        return fut

    async def statuses(ids: list[str]) -> dict[str, str]:
        return dict.fromkeys(ids, "running")

    ledger = Ledger(get_state, storage.list_state, submit, statuses, lambda: None, recheck_s=600, far_ms=30_000, at_once=False)
    ledger._stale.add(state_key(LIMIT))  # as after a conflict: the round reads the key
    waiting = asyncio.create_task(ledger.acquire_step(LIMIT, holder, priority=0))

    async def in_line() -> None:
        while state_key(LIMIT) not in ledger._cache or not (await storage.get_state([state_key(LIMIT)]))[state_key(LIMIT)]["n"]:
            await asyncio.sleep(0)

    await asyncio.wait_for(in_line(), 5)  # parked as a waiter
    ledger.on_wakeup()  # some other write elsewhere: a look begins
    await asyncio.wait_for(reading.wait(), 5)
    # The other process hands the slot over and notifies, while that look reads.
    storage.commit_now(Batch(state={state_key(LIMIT): {"limit": 1, "holders": [holder], "waiters": []}}))
    ledger.on_wakeup()
    go_on.set()
    await asyncio.wait_for(waiting, 5)
    assert reads == 3


async def test_a_refusal_decided_on_stale_state_is_not_written() -> None:
    """A round refuses an execution that this process last saw in line, and changes
    another key (a step slot given back). Meanwhile another process granted the first
    key's slot to that execution. The round's write must expect the key its refusal was
    decided on too, not only the one it changes: else the park (back to pending, due in
    minutes) is written while the execution holds the slot, and nobody runs it."""
    storage = MemoryStorage()
    job_limit, step_limit = Limit("single", 1), Limit("step:stepped:hold", 1)
    job_key, step_key = state_key(job_limit), state_key(step_limit)
    seen = {"limit": 1, "holders": ["other"], "waiters": [[0, 1, "mine"]]}
    storage.commit_now(Batch(state={job_key: seen, step_key: {"limit": 1, "holders": ["e|hold"], "waiters": []}}))
    ledger = _ledger(storage, {"other", "mine", "e"})
    for k, v in (await storage.get_state([job_key, step_key])).items():
        ledger._cache[k] = v  # what this process last read or wrote
    # Another process: "other" leaves, its slot goes to "mine" (made due, claimed here next).
    storage.commit_now(Batch(state={job_key: {"limit": 1, "holders": ["mine"], "waiters": []}}))
    parks: list[str] = []

    def park(at: int, why: str) -> Batch:
        parks.append(why)
        return Batch(state={"parked:mine": at})

    decided = asyncio.create_task(ledger.request(Request("mine", (0, 1), (job_limit,), park=park)))
    ledger.give_back("e|hold", [step_key], "could not give back")  # the same round
    decision = await asyncio.wait_for(decided, 5)
    assert decision.ok, decision  # it holds the slot: it runs
    assert await storage.get_state(["parked:mine"]) == {}
