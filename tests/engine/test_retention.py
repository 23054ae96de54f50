"""Retention: terminal executions older than the queue's policy are deleted with
their child trees, steps and events, in bounded sweeps, at start and periodically."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from dq import Queue, create_job, create_queue
from dq.engine.ids import now_ms
from dq.engine.retention import Housekeeping
from dq.engine.storage.base import (
    Batch,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    StepRecord,
    Storage,
)

from .test_lifecycle import until

DAY = 86_400_000


@create_job(name="report")
async def report(data: Any) -> Any:
    return data


def _rec(eid: str, status: str, ended_ago_ms: int | None, job: str = "report", **fields: Any) -> ExecutionRecord:
    now = now_ms()
    ended = now - ended_ago_ms if ended_ago_ms is not None else None
    return ExecutionRecord(eid, job, status, created_at=now - 3 * DAY, run_at=now - 3 * DAY, completed_at=ended, **fields)


async def _seed(storage: Storage, recs: list[ExecutionRecord]) -> None:
    await storage.open()
    await storage.commit(Batch(
        executions=recs,
        steps=[StepRecord(r.id, "s", "s", "run", "completed") for r in recs],
        events=[EventRecord(r.id, r.job_name, "trigger", {}, 1) for r in recs],
    ))  # fmt: skip


async def test_old_trees_are_deleted_at_start(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Storage]
) -> None:
    seed = make_storage()
    await _seed(seed, [
        _rec("R1", "completed", 2 * DAY),
        _rec("C1", "completed", 2 * DAY, parent_id="R1", root_id="R1"),
        _rec("G1", "failed", 2 * DAY, parent_id="C1", root_id="R1"),
        _rec("R2", "failed", 2 * DAY),  # failed are kept 30 days
        _rec("R3", "completed", 1000),  # recent
        _rec("R4", "completed", 2 * DAY),
        _rec("C4", "running", None, parent_id="R4", root_id="R4"),  # its tree is not finished
        _rec("R5", "cancelled", 2 * DAY),
        _rec("X1", "completed", 2 * DAY, job="not_in_this_queue"),
        _rec("P1", "pending", None),
    ])  # fmt: skip
    queue = make_queue([report], retention={"completed": "1 day", "failed": "30 days", "cancelled": "1 day"})
    async with queue:
        await until(lambda: _absent(queue, "R1", "C1", "G1", "R5"))
        left = sorted(e.id for e in await queue.jobs.get_all())
        assert left == ["C4", "P1", "R2", "R3", "R4", "X1"]
        assert await queue.storage.get_steps("C1") == []
        assert await queue.storage.read_events(execution_id="G1") == []
        assert len(await queue.storage.get_steps("R2")) == 1
        assert queue.runtime.housekeeping.removed == 4
    if seed is not queue.storage:
        await seed.aclose()


async def _absent(queue: Queue, *ids: str) -> bool:
    return [await queue.storage.get_execution(i) for i in ids] == [None] * len(ids)


async def test_sweeps_repeat_while_the_queue_runs(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([report], retention={"completed": "200ms"})
    queue.runtime.housekeeping.interval_s = 0.1
    async with queue:
        ex = await queue.jobs.report.start(1)
        await ex.result()
        await until(lambda: _absent(queue, ex.id))
        assert queue.runtime.housekeeping.removed >= 1


async def test_a_sweep_is_bounded(make_storage: Callable[[], Storage]) -> None:
    storage = make_storage()
    await _seed(storage, [_rec(f"E{i:04d}", "completed", 2 * DAY) for i in range(450)])
    keeper = Housekeeping(storage, {"completed": DAY}, ["report"], storage.commit, logging.getLogger("t"), max_per_sweep=300)
    try:
        assert [await keeper.sweep() for _ in range(3)] == [300, 150, 0]
        assert await storage.count(ExecutionQuery()) == {}
    finally:
        await storage.aclose()


@pytest.mark.parametrize(
    ("policy", "named"),
    [({"done": "1 day"}, "unknown keys"), ({"completed": "forever"}, "retention.completed"), ("7 days", "expected a dict")],
)
def test_a_bad_policy_is_refused_at_create_queue(policy: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        create_queue(jobs=[report], retention=policy)
