"""`start_many` in chunks of 1,000: order kept; a failed chunk raises, and the
chunks before it stay stored and run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dq import Queue, create_job
from dq.engine.storage.base import Batch, CommitResult, ExecutionQuery


def _echo() -> Any:
    @create_job(name="echo", retry=0)
    async def echo(n: int) -> int:
        return n

    return echo


async def test_start_many_keeps_the_order_of_its_inputs(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([_echo()])
    executions = await queue.jobs.echo.start_many(range(2500))
    done = await queue.runtime.all_settled([e.id for e in executions])
    assert [r.output for r in done] == list(range(2500))
    assert [e.id for e in executions] == sorted(e.id for e in executions)  # ids are time-ordered


async def test_a_failed_chunk_raises_and_the_chunks_before_it_run(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([_echo()])
    storage = queue.storage
    commit, commit_now = storage.commit, storage.commit_now

    def refuse(batch: Batch) -> None:
        if any(1000 <= e.input < 2000 for e in batch.executions):  # the second chunk
            raise RuntimeError("chunk refused")

    async def refusing_commit(batch: Batch) -> CommitResult:
        refuse(batch)
        return await commit(batch)

    def refusing_commit_now(batch: Batch) -> CommitResult:
        refuse(batch)
        return commit_now(batch)

    storage.commit = refusing_commit  # type: ignore[method-assign]
    storage.commit_now = refusing_commit_now  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="chunk refused"):
        await queue.jobs.echo.start_many(range(3500))
    stored = await storage.query(ExecutionQuery(job_names=["echo"]))
    assert sorted(r.input for r in stored) == list(range(1000))  # nothing after the failed chunk
    done = await queue.runtime.all_settled([r.id for r in stored])
    assert all(r.status == "completed" for r in done)
