"""Executions the dispatcher claims run with their whole step history, read once per
claim (`Storage.get_steps_many`), never once per execution."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from dq import Queue, create_job, run
from dq.engine.ids import new_id, now_ms
from dq.engine.replay import REUSED
from dq.engine.storage.base import Batch, ExecutionRecord, StepRecord, Storage


def _job(ran: Counter[str]) -> Any:
    @create_job(name="two", retry=1)
    async def two(name: str) -> list[str]:
        def step(key: str) -> str:
            ran[f"{name}:{key}"] += 1
            return f"ran-{key}"

        return [await run("a", lambda: step("a")), await run("b", lambda: step("b"))]

    return two


def _stored(name: str, retry_count: int = 0) -> ExecutionRecord:
    now = now_ms()
    return ExecutionRecord(new_id(), "two", "pending", input=name, created_at=now, run_at=now, retry_count=retry_count)


def _step(eid: str, key: str, seq: int, status: str = "completed", job_attempt: int = 0) -> StepRecord:
    output = f"stored-{key}" if status == "completed" else None
    error = {"message": "boom"} if status == "failed" else None
    return StepRecord(eid, key, key, "run", status, output=output, error=error, seq=seq, job_attempt=job_attempt)


class _Reads:
    """Counts the storage's history reads: `get_steps_many` calls with their ids, and
    `get_steps` calls made outside one (the memory adapter's default loops over it)."""

    def __init__(self, storage: Storage) -> None:
        self.batches: list[list[str]] = []
        self.claimed: list[list[str]] = []
        self.single = 0
        self._inside = 0
        get_steps, get_steps_many, claim = storage.get_steps, storage.get_steps_many, storage.claim

        async def counted_get_steps(execution_id: str) -> list[StepRecord]:
            self.single += not self._inside
            return await get_steps(execution_id)

        async def counted_get_steps_many(ids: Any) -> dict[str, list[StepRecord]]:
            self.batches.append(list(ids))
            self._inside += 1
            try:
                return await get_steps_many(ids)
            finally:
                self._inside -= 1

        async def counted_claim(*args: Any, **kwargs: Any) -> list[ExecutionRecord]:
            recs = await claim(*args, **kwargs)
            if recs:
                self.claimed.append([r.id for r in recs])
            return recs

        storage.get_steps = counted_get_steps  # type: ignore[method-assign]
        storage.get_steps_many = counted_get_steps_many  # type: ignore[method-assign]
        storage.claim = counted_claim  # type: ignore[method-assign]


async def test_claimed_executions_run_with_their_histories_read_once_per_claim(
    make_queue: Callable[..., Queue],
) -> None:
    ran: Counter[str] = Counter()
    queue = make_queue([_job(ran)])
    queue.runtime.max_active = 3  # several claims of at most 3
    two = queue.jobs.two
    original = await two.start("original")
    assert await original.result() == ["ran-a", "ran-b"]

    # Stored while the job is paused: nothing runs until the dispatcher claims them.
    await two.pause()
    replay = await original.replay(from_step="b")  # reuses the original's step "a"
    fresh = [await two.start(f"fresh{i}") for i in range(4)]
    resumed = _stored("resumed")  # "a" done before a crash
    retried = _stored("retried", retry_count=1)  # "a" done, "b" failed, in attempt 0
    await queue.storage.commit(
        Batch(
            executions=[resumed, retried],
            steps=[
                _step(resumed.id, "a", 1),
                _step(retried.id, "a", 1),
                _step(retried.id, "b", 2, status="failed"),
            ],
        )
    )
    ran.clear()
    reads = _Reads(queue.storage)
    await two.resume()

    named = {"replay": replay.id, "resumed": resumed.id, "retried": retried.id}
    named.update((f"fresh{i}", e.id) for i, e in enumerate(fresh))
    done = await queue.runtime.all_settled(list(named.values()))
    outputs = {name: rec.output for name, rec in zip(named, done, strict=True)}
    assert outputs["replay"] == ["ran-a", "ran-b"]  # the original's stored "a" output
    assert outputs["resumed"] == outputs["retried"] == ["stored-a", "ran-b"]
    assert all(outputs[f"fresh{i}"] == ["ran-a", "ran-b"] for i in range(4))
    # A step with a stored result never ran again.
    assert ran == Counter({
        "original:b": 1, "resumed:b": 1, "retried:b": 1,
        **{f"fresh{i}:{k}": 1 for i in range(4) for k in "ab"},
    })  # fmt: skip

    # One read per claim, of exactly the claimed ids; none per execution.
    assert reads.batches == reads.claimed
    assert sorted(i for batch in reads.claimed for i in batch) == sorted(named.values())
    assert len(reads.claimed) >= 3  # max_active 3: 7 executions take at least three claims
    assert reads.single == 0
    assert [s.job_attempt for s in await replay.steps()] == [REUSED, 0]


async def test_a_failed_claim_read_leaves_each_execution_to_read_its_own(make_queue: Callable[..., Queue]) -> None:
    ran: Counter[str] = Counter()
    queue = make_queue([_job(ran)])
    two = queue.jobs.two
    await queue.started()
    await two.pause()
    resumed = _stored("resumed")
    await queue.storage.commit(Batch(executions=[resumed], steps=[_step(resumed.id, "a", 1)]))
    fresh = await two.start("fresh")
    storage = queue.storage
    get_steps_many = storage.get_steps_many
    failures = [ConnectionResetError("the database went away")]

    async def failing_once(ids: Any) -> dict[str, list[StepRecord]]:
        if failures:
            raise failures.pop()
        return await get_steps_many(ids)

    storage.get_steps_many = failing_once  # type: ignore[method-assign]
    await two.resume()
    done = await queue.runtime.all_settled([resumed.id, fresh.id])
    assert not failures
    assert [r.output for r in done] == [["stored-a", "ran-b"], ["ran-a", "ran-b"]]
    assert ran == Counter({"resumed:b": 1, "fresh:a": 1, "fresh:b": 1})
