"""`Execution`: a handle on one run of one job, from anywhere."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .context import current
from .errors import error_from_dict, job_error
from .serialize import load_typed
from .storage.base import EventRecord, ExecutionRecord, StepRecord

if TYPE_CHECKING:
    from .queue import Queue


def _dt(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms is not None else None


class Execution:
    """Fields are a snapshot; `await refresh()` reloads them from storage."""

    def __init__(self, queue: Queue, record: ExecutionRecord) -> None:
        self._queue = queue
        self.record = record

    def __repr__(self) -> str:
        return f"<Execution {self.id} {self.job_name} {self.status}>"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def job_name(self) -> str:
        return self.record.job_name

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def input(self) -> Any:
        return self.record.input

    @property
    def output(self) -> Any:
        return self.record.output

    @property
    def error(self) -> BaseException | None:
        return error_from_dict(self.record.error) if self.record.error else None

    @property
    def retry_count(self) -> int:
        return self.record.retry_count

    @property
    def parent_id(self) -> str | None:
        return self.record.parent_id

    @property
    def idempotency_key(self) -> str | None:
        return self.record.idempotency_key

    @property
    def replay_of(self) -> str | None:
        return self.record.replay_of

    @property
    def created_at(self) -> datetime:
        return _dt(self.record.created_at) or datetime.now(UTC)

    @property
    def started_at(self) -> datetime | None:
        return _dt(self.record.started_at)

    @property
    def completed_at(self) -> datetime | None:
        return _dt(self.record.completed_at)

    async def refresh(self) -> Execution:
        rec = await self._queue.storage.get_execution(self.id)
        if rec is not None:
            self.record = rec
        return self

    async def result(self) -> Any:
        """Wait for the end: the output, or `JobError` (failed) / `CancelledError` (cancelled)."""
        runtime = await self._queue.started()
        self.record = rec = await runtime.wait_terminal(self.id)
        if rec.status == "completed":
            job = self._queue.definitions.get(rec.job_name)
            return load_typed(job.options.output if job else None, rec.output)
        raise job_error(rec)

    # `by` says who asked; it is recorded in the event log ("api", "dashboard", ...).
    async def pause(self, *, by: str = "api") -> bool:
        """Pause at the next step, with its unfinished children."""
        return await self._queue.lifecycle.pause(self.id, by=by)

    async def resume(self, *, by: str = "api") -> bool:
        return await self._queue.lifecycle.resume(self.id, by=by)

    async def cancel(self, reason: str | None = None, *, by: str = "api") -> bool:
        return await self._queue.lifecycle.cancel(self.id, reason, by=by)

    async def retry(self, *, by: str = "api") -> bool:
        """A failed or cancelled execution runs again (a new attempt; completed steps stay memoised)."""
        return await self._queue.lifecycle.retry(self.id, by=by)

    async def replay(self, from_step: str | None = None, input: Any = None, *, by: str = "api") -> Execution:
        """A new execution of the same job (`replay_of` = this one's id). The completed
        steps recorded before `from_step` return their stored results without running;
        `from_step` and everything after it run again. Without `from_step` nothing is
        reused. `input`, unless None, replaces the input (validated: `ValidationError` here)."""
        return Execution(self._queue, await self._queue.replayer.replay(self.id, from_step, input, by=by))

    async def steps(self) -> list[StepRecord]:
        return await self._queue.storage.get_steps(self.id)

    async def events(self) -> list[EventRecord]:
        out: list[EventRecord] = []
        after = 0
        while True:
            page = await self._queue.storage.read_events(after, limit=1000, execution_id=self.id)
            out.extend(page)
            if len(page) < 1000:
                return out
            after = page[-1].seq


def current_execution() -> Execution:
    """Inside a handler: the running execution (its id makes a good idempotency key)."""
    ctx = current()
    return Execution(ctx.queue, ctx.record)
