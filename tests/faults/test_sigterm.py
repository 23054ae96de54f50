"""Graceful shutdown: SIGTERM makes the worker `await queue.close()`. Afterwards no
execution is marked running, and the next worker resumes every one of them.

Two kinds of executions are in flight at the signal: ones in the middle of short
steps (they stop at the next step boundary, nothing re-runs) and ones stuck in a
step longer than the shutdown grace (cancelled; that step runs again, once).
"""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest

from dq.engine.storage.base import ExecutionQuery

from .conftest import Store, Workers, add_executions, lines, read_effects, wait_until

SHORT = [{"id": f"s{i}", "sleep_s": 0.15} for i in range(6)]
STUCK = [{"id": f"k{i}", "block_step": 3, "block": "hold"} for i in range(2)]


@pytest.mark.slow
async def test_sigterm_leaves_nothing_running_and_a_restart_resumes(
    store: Store, workers: Workers, tmp_path: Path
) -> None:
    storage = await store.open()
    (tmp_path / "hold").touch()
    first = workers.spawn(store, "serve", "five_steps", 0, env={"DQ_GRACE": "1s", "DQ_LEASE": "30s"})
    await first.wait_output("ready")
    await add_executions(storage, "five_steps", SHORT + STUCK)

    def mid_way() -> bool:
        started = {e.execution for e in read_effects(tmp_path) if e.step == "2"}
        return len(lines(tmp_path / "blocked")) == len(STUCK) and {d["id"] for d in SHORT} <= started

    await wait_until(mid_way, 30, lambda: f"executions mid-way: {first.describe()}")
    first.signal(signal.SIGTERM)
    assert await first.exit_code() == 0, first.describe()
    assert first.output().split() == ["ready", "closed"]

    after_stop = await storage.query(ExecutionQuery())
    assert len(after_stop) == len(SHORT) + len(STUCK)
    assert not [e for e in after_stop if e.status == "running"], [(e.input, e.status) for e in after_stop]
    done_at_stop: dict[str, set[str]] = {}
    for rec in after_stop:
        if rec.status != "completed":
            assert (rec.status, rec.wait_reason, rec.worker_id, rec.lease_until) == ("pending", "released", None, None)
        steps = await storage.get_steps(rec.id)
        done_at_stop[rec.input["id"]] = {s.key for s in steps if s.status == "completed"}
    assert any(rec.status == "pending" for rec in after_stop if rec.input["id"].startswith("s"))

    (tmp_path / "hold").unlink()
    second = workers.spawn(store, "serve", "five_steps", 0)
    await second.wait_output("ready")

    async def all_done() -> bool:
        counts = await storage.count(ExecutionQuery(statuses=["completed"]))
        return counts.get("completed", 0) == len(SHORT) + len(STUCK)

    await wait_until(all_done, 30, lambda: f"every execution completed: {second.describe()}")
    second.signal(signal.SIGTERM)
    assert await second.exit_code() == 0, second.describe()

    ran: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for e in read_effects(tmp_path):
        ran[(e.execution, e.step)].append(e.pid)
    for data in SHORT:
        # Stopped at a step boundary: every step ran exactly once, in one process or the other.
        assert [len(ran[(data["id"], str(n))]) for n in range(1, 6)] == [1] * 5, data
    for data in STUCK:
        eid = data["id"]
        assert {"step-1", "step-2"} == done_at_stop[eid]
        assert ran[(eid, "3")] == [first.pid, second.pid]  # cut off after the grace, run again
        assert [ran[(eid, n)] for n in "1245"] == [[first.pid]] * 2 + [[second.pid]] * 2
    for eid, done in done_at_stop.items():
        for key in done:  # completed before the stop: never again
            assert len(ran[(eid, key.removeprefix("step-"))]) == 1, (eid, key)
