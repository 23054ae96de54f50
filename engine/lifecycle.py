"""Pause, resume, cancel and retry — for one execution or a whole job, from any process.

Each operation is a conditional update on the stored status, retried when
another writer changed the status in between. A running execution held by
this process is told directly; one held elsewhere gets a `control` request
that its holder reads on its next commit or lease renewal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import transitions
from .errors import CancelledError, DqError, error_to_dict
from .ids import now_ms
from .serialize import load_typed, validate_in
from .storage.base import ACTIVE, Batch, ExecutionQuery, ExecutionRecord
from .transitions import PAUSE, Control, ControlKind, Transition

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

    async def _apply(self, change: Transition) -> bool:
        runtime = await self._runtime()
        result = await runtime.committer.commit(change.batch())
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
                if await self._apply(transitions.pause_idle(rec, now=now_ms(), by=by)):
                    await self._fire(rec, "pause", {})
                    return True
            elif rec.status == "running":
                if await self._apply(transitions.request(rec, PAUSE, now=now_ms(), by=by)):
                    ctx = runtime.contexts.get(rec.id)
                    if ctx is not None:
                        runtime.interrupt(ctx, PAUSE)
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
                if await self._apply(transitions.resume(rec, now=now_ms(), by=by)):
                    runtime.kick()
                    await self._fire(rec, "resume", {})
                    return True
            elif rec.status == "running":
                if Control.parse(rec.control) != PAUSE:
                    return False
                if await self._apply(transitions.withdraw_pause(rec, now=now_ms(), by=by)):
                    ctx = runtime.contexts.get(rec.id)
                    if ctx is not None and ctx.control == PAUSE:
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
                control = Control(ControlKind.CANCEL, reason or None)
                if await self._apply(transitions.request(rec, control, now=now_ms(), by=by)):
                    ctx = runtime.contexts.get(rec.id)
                    if ctx is not None:
                        runtime.interrupt(ctx, control)
                    return True
                continue
            error = error_to_dict(CancelledError(f"execution {rec.id} was cancelled", reason))
            change = transitions.cancel_idle(rec, error=error, reason=reason, now=now_ms(), by=by)
            if await self._apply(change):
                change.apply_to(rec)
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
        if await self._apply(transitions.retry_manually(rec, now=now_ms(), by=by)):
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
        runtime.paused_version += 1  # a reload of the flags reading meanwhile must not undo this
        await runtime.committer.commit(Batch(state={f"job_paused:{job.name}": True}))
        runtime.paused_jobs.add(job.name)
        runtime.paused_version += 1
        for rec in await self._active_of(job, ("pending", "waiting", "running")):
            await self.pause(rec.id, by=by)

    async def resume_job(self, job: Job, *, by: str = "api") -> None:
        runtime = await self._runtime()
        runtime.paused_version += 1
        await runtime.committer.commit(Batch(state={f"job_paused:{job.name}": None}))
        runtime.paused_jobs.discard(job.name)
        runtime.paused_version += 1
        for rec in await self._active_of(job, ("paused", "running")):
            await self.resume(rec.id, by=by)
        runtime.kick()
