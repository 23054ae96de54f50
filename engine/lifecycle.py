"""Pause, resume, cancel and retry — for one execution or a whole job, from any process.

Each operation is a conditional update on the stored status, retried when
another writer changed the status in between. A running execution held by
this process is told directly; one held elsewhere gets a `control` request
that its holder reads on its next commit or lease renewal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import CancelledError, DqError, error_to_dict
from .ids import now_ms
from .serialize import load_typed, validate_in
from .storage.base import (
    ACTIVE,
    Batch,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionUpdate,
)

if TYPE_CHECKING:
    from .job import Job
    from .queue import Queue
    from .runtime import Runtime

_ATTEMPTS = 8
#: Children read per query when a pause or resume spreads to them.
_PAGE = 500


class Lifecycle:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def _runtime(self) -> Runtime:
        return await self.queue.started()

    async def _load(self, execution_id: str) -> ExecutionRecord:
        rec = await self.queue.storage.get_execution(execution_id)
        if rec is None:
            raise DqError(f"no execution with id {execution_id!r}")
        return rec

    async def _apply(self, rec: ExecutionRecord, fields: dict[str, Any], statuses: tuple[str, ...],
                     event: tuple[str, dict[str, Any]] | None) -> bool:  # fmt: skip
        runtime = await self._runtime()
        batch = Batch(updates=[ExecutionUpdate(rec.id, fields, statuses=statuses)])
        if event is not None:
            batch.events.append(EventRecord(rec.id, rec.job_name, event[0], event[1], now_ms()))
        result = await runtime.committer.commit(batch)
        return result.applied[0]

    # -- one execution -----------------------------------------------------------------
    async def pause(self, execution_id: str, *, by: str = "api") -> bool:
        """Pause at the next step boundary, with its unfinished children (a composite
        workflow pauses as one unit). False when it already ended. `by` says who asked
        (recorded in the event log)."""
        done = await self._pause_one(execution_id, by)
        if done:
            await self._each_child(execution_id, ("pending", "waiting", "running"), self.pause, f"parent {execution_id}")
        return done

    async def _pause_one(self, execution_id: str, by: str) -> bool:
        runtime = await self._runtime()
        for _ in range(_ATTEMPTS):
            rec = await self._load(execution_id)
            if rec.status == "paused":
                return True
            if rec.status in ("pending", "waiting"):
                if await self._apply(rec, {"status": "paused", "wait_reason": "paused"}, ("pending", "waiting"), ("pause", {"by": by})):
                    await self._fire(rec, "pause", {})
                    return True
            elif rec.status == "running":
                if await self._apply(rec, {"control": "pause"}, ("running",), ("requested", {"action": "pause", "by": by})):
                    ctx = runtime.contexts.get(rec.id)
                    if ctx is not None:
                        runtime._interrupt(ctx, "pause")
                    return True
            else:
                return False
        raise DqError(f"execution {execution_id!r} kept changing state; pause not applied")

    async def resume(self, execution_id: str, *, by: str = "api") -> bool:
        """Undo a pause, of its paused children too."""
        done = await self._resume_one(execution_id, by)
        if done:
            await self._each_child(execution_id, ("paused", "running"), self.resume, f"parent {execution_id}")
        return done

    async def _each_child(
        self, parent_id: str, statuses: tuple[str, ...], act: Callable[..., Awaitable[bool]], by: str
    ) -> None:
        query = ExecutionQuery(parent_id=parent_id, statuses=list(statuses), order="oldest", limit=_PAGE)
        while children := await self.queue.storage.query(query):
            for child in children:
                await act(child.id, by=by)
            query.cursor = children[-1].id

    async def _resume_one(self, execution_id: str, by: str) -> bool:
        runtime = await self._runtime()
        for _ in range(_ATTEMPTS):
            rec = await self._load(execution_id)
            if rec.status == "paused":
                fields = {"status": "pending", "run_at": now_ms(), "wait_reason": "resumed", "control": None}
                if await self._apply(rec, fields, ("paused",), ("resume", {"by": by})):
                    runtime.kick()
                    await self._fire(rec, "resume", {})
                    return True
            elif rec.status == "running":
                if rec.control != "pause":
                    return False
                if await self._apply(rec, {"control": None}, ("running",), ("resume", {"by": by})):
                    ctx = runtime.contexts.get(rec.id)
                    if ctx is not None and ctx.control == "pause":
                        ctx.control = None
                    return True
            else:
                return False
        raise DqError(f"execution {execution_id!r} kept changing state; resume not applied")

    async def cancel(self, execution_id: str, reason: str | None = None, *, by: str = "api") -> bool:
        """Cancel it and its unfinished children. False when it already ended."""
        runtime = await self._runtime()
        for _ in range(_ATTEMPTS):
            rec = await self._load(execution_id)
            if rec.status not in ACTIVE:
                return False
            if rec.status == "running":
                control = "cancel" + (f":{reason}" if reason else "")
                requested = ("requested", {"action": "cancel", "reason": reason, "by": by})
                if await self._apply(rec, {"control": control}, ("running",), requested):
                    ctx = runtime.contexts.get(rec.id)
                    if ctx is not None:
                        runtime._interrupt(ctx, control)
                    return True
                continue
            error = error_to_dict(CancelledError(f"execution {rec.id} was cancelled", reason))
            fields = {
                "status": "cancelled", "completed_at": now_ms(), "error": error,
                "control": None, "wait_reason": None, "worker_id": None, "lease_until": None,
            }  # fmt: skip
            if await self._apply(rec, fields, ("pending", "waiting", "paused"), ("cancel", {"reason": reason, "by": by})):
                for name, value in fields.items():
                    setattr(rec, name, value)
                await self.cancel_children(rec.id, reason)
                job = self.queue.definitions.get(rec.job_name)
                if job is not None:
                    await runtime.settled_hooks(job, rec, None, None, reason)
                runtime.resolve(rec)
                return True
        raise DqError(f"execution {execution_id!r} kept changing state; cancel not applied")

    async def cancel_children(self, parent_id: str, reason: str | None) -> None:
        children = await self.queue.storage.query(
            ExecutionQuery(parent_id=parent_id, statuses=sorted(ACTIVE))
        )
        for child in children:
            await self.cancel(child.id, reason or f"parent {parent_id} cancelled", by=f"parent {parent_id}")

    async def retry(self, execution_id: str, *, by: str = "api") -> bool:
        runtime = await self._runtime()
        rec = await self._load(execution_id)
        if rec.status not in ("failed", "cancelled"):
            return False
        fields = {
            "status": "pending", "run_at": now_ms(), "retry_count": rec.retry_count + 1,
            "completed_at": None, "error": None, "output": None, "control": None,
            "wait_reason": "retry",
        }  # fmt: skip
        event = ("retry", {"attempt": rec.retry_count + 2, "manual": True, "run_at": fields["run_at"], "delay_ms": 0, "by": by})
        if await self._apply(rec, fields, ("failed", "cancelled"), event):
            runtime.kick()
            return True
        return False

    async def _fire(self, rec: ExecutionRecord, event: str, data: dict[str, Any]) -> None:
        job = self.queue.definitions.get(rec.job_name)
        if job is not None:
            runtime = await self._runtime()
            await runtime.hooks.fire(job, event, rec.id, {"input": load_typed(job.options.input, rec.input), **data})

    # -- a whole job ------------------------------------------------------------------------
    async def _active_of(self, job: Job, statuses: tuple[str, ...]) -> list[ExecutionRecord]:
        return await self.queue.storage.query(
            ExecutionQuery(job_names=[job.name], statuses=list(statuses))
        )

    async def cancel_job(self, job: Job, input: Any, reason: str | None) -> int:
        """Cancel the unfinished executions of `job` whose input equals `input`."""
        _typed, stored = validate_in(job.options.input, input, f"input of job {job.name!r}")
        count = 0
        for rec in await self._active_of(job, tuple(sorted(ACTIVE))):
            if rec.input == stored and await self.cancel(rec.id, reason):
                count += 1
        return count

    async def pause_job(self, job: Job, *, by: str = "api") -> None:
        runtime = await self._runtime()
        await runtime.committer.commit(Batch(state={f"job_paused:{job.name}": True}))
        runtime.paused_jobs.add(job.name)
        for rec in await self._active_of(job, ("pending", "waiting", "running")):
            await self.pause(rec.id, by=by)

    async def resume_job(self, job: Job, *, by: str = "api") -> None:
        runtime = await self._runtime()
        await runtime.committer.commit(Batch(state={f"job_paused:{job.name}": None}))
        runtime.paused_jobs.discard(job.name)
        for rec in await self._active_of(job, ("paused", "running")):
            await self.resume(rec.id, by=by)
        runtime.kick()
