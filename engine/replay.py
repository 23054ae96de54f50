"""Replay: a new execution of an ended one's job, reusing the steps before a chosen one.

The new execution is created with copies of the original's completed step
records that come before `from_step` (in first-call order), in the same
transaction as the execution itself. Ordinary replay then returns their
stored results without running them — child executions included, since a
completed child step holds the child's output. The copies carry
`job_attempt = REUSED`, so the replay's first attempt still counts as a
fresh start (start hooks fire) and the dashboard can tell reused steps apart.
The original is never written to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DqError
from .event_schema import EventKind
from .ids import now_ms
from .storage.base import TERMINAL, Batch, EventRecord, ExecutionRecord, StepRecord
from .storage.query import clone

if TYPE_CHECKING:
    from .job import Job
    from .queue import Queue

#: `StepRecord.job_attempt` of a step copied from the execution a replay replays.
REUSED = -1


def reused_steps(history: list[StepRecord], from_step: str | None, execution_id: str) -> list[StepRecord]:
    """The completed steps of `history` recorded before `from_step`, as steps of
    `execution_id`. ValueError naming the steps that exist when `from_step` is not one."""
    if from_step is None:
        return []
    cut = next((s.seq for s in history if s.key == from_step), None)
    if cut is None:
        keys = [s.key for s in history]
        raise ValueError(
            f"from_step {from_step!r} is not a step of this execution; its steps are {keys}"
            if keys else f"from_step {from_step!r}: this execution recorded no steps"
        )  # fmt: skip
    return [
        clone(s, execution_id=execution_id, job_attempt=REUSED)
        for s in history
        if s.seq < cut and s.status == "completed"
    ]


class Replayer:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def _original(self, execution_id: str) -> tuple[ExecutionRecord, Job]:
        rec = await self.queue.storage.get_execution(execution_id)
        if rec is None:
            raise DqError(f"no execution with id {execution_id!r}")
        if rec.status not in TERMINAL:
            raise DqError(
                f"execution {execution_id} is {rec.status}: only completed, failed or "
                "cancelled executions can be replayed"
            )
        job = self.queue.definitions.get(rec.job_name)
        if job is None:
            raise DqError(f"execution {execution_id} is of job {rec.job_name!r}, which this queue does not define")
        return rec, job

    async def plan(self, execution_id: str, from_step: str | None) -> tuple[list[StepRecord], list[StepRecord]]:
        """(reused, run again): what `replay(from_step)` would do, without doing it."""
        await self._original(execution_id)
        history = await self.queue.storage.get_steps(execution_id)
        reused = reused_steps(history, from_step, execution_id)
        keys = {s.key for s in reused}
        return reused, [s for s in history if s.key not in keys]

    async def replay(
        self, execution_id: str, from_step: str | None = None, input: Any = None, *, by: str = "api"
    ) -> ExecutionRecord:
        runtime = await self.queue.started()
        original, job = await self._original(execution_id)
        # Validated here: bad input raises ValidationError before anything is stored.
        rec = runtime.new_record(job, original.input if input is None else input)
        rec.replay_of = original.id
        steps = reused_steps(await self.queue.storage.get_steps(original.id), from_step, rec.id)
        data = {"of": original.id, "from_step": from_step, "reused": [s.key for s in steps], "by": by}
        event = EventRecord(rec.id, job.name, EventKind.REPLAY, data, now_ms())
        await runtime.create(job, rec, Batch(steps=steps, events=[event]))
        return rec
