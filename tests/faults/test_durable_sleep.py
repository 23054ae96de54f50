"""A durable `sleep` keeps its original deadline across a crash and restart: the
worker is killed during the sleep, a new one starts at once, and the step after
the sleep runs at the deadline stored when the sleep began, not a full sleep after
the restart. Both kinds of sleep: a short one (the coroutine stays alive, the
execution running) and a long one (the execution is suspended as waiting).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from dq.engine.storage.base import ExecutionQuery, StepRecord

from .conftest import Store, Workers, read_effects, wait_until

SLEEP_S = 4.0
#: How long no worker runs between the kill and the restart.
DOWN_S = 2.0
#: How late after its deadline the step after the sleep may run (dispatch latency).
LATE_S = 1.0


@pytest.mark.slow
@pytest.mark.parametrize("short_sleep", ["10s", "500ms"], ids=["kept-alive", "suspended"])
async def test_sleep_keeps_its_deadline_across_kill_and_restart(
    store: Store, workers: Workers, tmp_path: Path, short_sleep: str
) -> None:
    storage = await store.open()
    env = {"DQ_SHORT_SLEEP": short_sleep}
    first = workers.spawn(store, "serve", "sleeper", 1, f"sleep_s={SLEEP_S}", env=env)
    sleep_step: list[StepRecord] = []

    # A short sleep keeps the execution running; a long one suspends it as waiting.
    status = "running" if short_sleep == "10s" else "waiting"

    async def sleeping() -> bool:
        found = await storage.query(ExecutionQuery())
        steps = await storage.get_steps(found[0].id) if found else []
        sleep_step[:] = [s for s in steps if s.kind == "sleep"]
        return bool(sleep_step) and found[0].status == status

    await wait_until(sleeping, 30, lambda: f"the sleep to be recorded: {first.describe()}")
    until_s = sleep_step[0].output["until"] / 1000
    await first.kill9()
    await asyncio.sleep(DOWN_S)  # the outage (not an assertion: the check is the wake time)
    restarted_at = time.time()
    # Meaningful only if a full sleep after the restart would end clearly later.
    assert until_s + LATE_S < restarted_at + SLEEP_S, "the kill came too late to tell"
    second = workers.spawn(store, "serve", "sleeper", 0, env=env)

    def woke() -> bool:
        return any(e.step == "after" for e in read_effects(tmp_path))

    await wait_until(woke, SLEEP_S + 30, lambda: f"the step after the sleep: {second.describe()}")
    [rec] = await storage.query(ExecutionQuery())
    effects = read_effects(tmp_path)
    assert [(e.step, e.pid) for e in effects] == [("before", first.pid), ("after", second.pid)]
    after = effects[1].at
    assert until_s <= after <= until_s + LATE_S, (until_s, after, restarted_at)

    async def completed() -> bool:
        [rec] = await storage.query(ExecutionQuery())
        return rec.status == "completed"

    await wait_until(completed, 10, "the execution to complete")
    steps = await storage.get_steps(rec.id)
    assert [(s.key, s.status) for s in steps] == [("before", "completed"), ("sleep", "completed"), ("after", "completed")]
    assert steps[1].output == sleep_step[0].output  # the deadline was not moved
