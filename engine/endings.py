"""An attempt's writes on the state owner's side, and how it ends: commits fenced
by the holder's token, interrupts, endings with what follows them (downstream
triggers, cancelled children, hooks, results), suspends, and the release of an
execution storage cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import Interrupt, StorageLostError, error_to_dict
from .event_schema import EventKind
from .ids import now_ms
from .runtime_state import _BACKOFF_S, RuntimeState, T, log
from .serialize import load_typed
from .storage.base import Batch, CommitResult, EventRecord, ExecutionRecord, StepRecord
from .transitions import (
    LOST,
    UNAVAILABLE,
    Control,
    EndStatus,
    SuspendStatus,
    Transition,
    ending,
    release,
    step_done,
)
from .transitions import suspend as suspend_transition

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .job import Job


class Endings(RuntimeState):
    async def commit_for(self, ctx: ExecutionContext, batch: Batch) -> CommitResult:
        """Commit writes of the execution `ctx` holds; raises Interrupt('lost') if it lost
        it, Interrupt('unavailable') if storage could not be reached."""
        if self.committer.synchronous:
            return self.commit_now_for(ctx, batch)
        batch.fences[ctx.id] = ctx.record.token
        # `guard`'s handling inlined: no coroutine but this one on every commit.
        try:
            result = await self.committer.submit(batch)
        except Exception as exc:
            self._storage_failed(ctx, exc)
        return _committed(ctx, result)

    def commit_now_for(self, ctx: ExecutionContext, batch: Batch) -> CommitResult:
        """`commit_for` on a synchronous adapter (`committer.synchronous`), as a plain
        call: no coroutine for the commit at all."""
        batch.fences[ctx.id] = ctx.record.token
        try:
            result = self.committer.commit_now(batch)
        except Exception as exc:
            self._storage_failed(ctx, exc)
        return _committed(ctx, result)

    def record_step(self, ctx: ExecutionContext, step: StepRecord, event: EventRecord) -> None:
        """`record(step_done(...))`: appended to the writes queued to go (the pending send,
        or on a synchronous adapter the next commit's) when it may join them."""
        batch = self.committer.queued_send(ctx.id, ctx.record.token)
        if batch is None:
            self.committer.send(step_done(ctx.holder, step, event))
            return
        batch.steps.append(step)
        batch.events.append(event)

    async def commit_step(self, ctx: ExecutionContext, step: StepRecord, event: EventRecord) -> CommitResult:
        """`commit_for(ctx, step_done(...))`: on a synchronous adapter the step joins the
        queued writes (its start record and event, the attempt's start event) and they
        commit together, without a Batch of its own."""
        committer = self.committer
        batch = committer.queued(ctx.id, ctx.record.token)
        if batch is None:
            return await self.commit_for(ctx, step_done(ctx.holder, step, event))
        batch.steps.append(step)
        batch.events.append(event)
        try:
            result = committer.commit_queued()
        except Exception as exc:
            self._storage_failed(ctx, exc)
        return _committed(ctx, result)

    async def guard(self, ctx: ExecutionContext, call: Awaitable[T]) -> T:
        """Await the runtime's own storage `call` for the execution `ctx`. When storage
        is unreachable the attempt unwinds (Interrupt('unavailable'): not an error of the
        job, and user code cannot catch it) and the execution is given back once storage
        answers again; when storage lost its data the queue stops (`lose_storage`)."""
        try:
            return await call
        except Exception as exc:
            self._storage_failed(ctx, exc)

    def _storage_failed(self, ctx: ExecutionContext, exc: Exception) -> NoReturn:
        """`exc` (raised by a storage call for `ctx`) as `guard` maps it; always raises."""
        if isinstance(exc, StorageLostError):
            self.lose_storage(exc)
            ctx.control = LOST
            raise LOST.interrupt() from exc
        if not self.storage.is_unavailable(exc):
            raise exc
        log.warning("dq: storage unreachable while running execution %s: %s", ctx.id, exc)
        ctx.control = UNAVAILABLE
        raise UNAVAILABLE.interrupt() from exc

    def interrupt(self, ctx: ExecutionContext, control: Control) -> None:
        """Ask a running execution to stop: at once when parked or cancelled, else at its next step."""
        if ctx.finishing:
            return
        ctx.control = control
        # A task not yet started is not cancelled: `_execute` reads `control` first thing.
        if ctx.task is not None and ctx.started and (ctx.parked or control.stops_at_once):
            ctx.task.cancel()

    async def _finish(
        self,
        ctx: ExecutionContext,
        status: EndStatus,
        typed_input: Any,
        *,
        output: Any = None,
        error: BaseException | None = None,
        reason: str | None = None,
    ) -> None:
        rec = ctx.record
        change = ending(
            ctx.holder, status, output=output, error=error_to_dict(error) if error is not None else None,
            reason=reason, attempt=rec.retry_count + 1, current_step=rec.current_step, now=now_ms(),
        )  # fmt: skip
        await self.end(ctx, change, typed_input, error=error, reason=reason)

    async def end(
        self,
        ctx: ExecutionContext,
        change: Transition,
        typed_input: Any,
        *,
        error: BaseException | None = None,
        reason: str | None = None,
    ) -> None:
        """Commit an attempt's outcome, then what follows it: for a retry its timer and
        `on_error`; for an ending the downstream triggers, the children of a cancelled
        execution, the hooks and whoever awaits the result."""
        job, rec = ctx.job, ctx.record
        ctx.finishing = True
        fields = change.update.fields
        status = fields.get("status")
        batch = change.batch()
        later = []
        if status == "completed":
            if ctx.holds_slot:  # tested here too: most executions hold none (one call less)
                self._release_early(ctx)
            later = self.triggers.downstream(job, fields.get("output"), batch)
        try:
            if self.committer.synchronous:  # every execution ends here: no coroutine for its commit
                self.commit_now_for(ctx, batch)
            else:
                await self.commit_for(ctx, batch)
        except Interrupt:
            return
        if status == "waiting":  # a retry: the record stays as the attempt saw it
            run_at = fields.get("run_at")
            if run_at is not None and self._timer is not None:
                self._timer.at(run_at)
            await self.hooks.fire(job, "error", rec.id, {"input": typed_input, "error": error, "attempt": rec.retry_count + 1})
            return
        change.apply_to(rec)
        if batch.executions:
            self.kick()
            for target, downstream in self.triggers.started_by(batch):
                if self.hooks.wanted(target, "trigger"):
                    await self.hooks.fire(target, "trigger", downstream.id, {"input": load_typed(target.options.input, downstream.input)})
        for target, downstream in later:
            await self._create_debounced(target, downstream)
        if status == "cancelled":
            await self.queue.lifecycle.cancel_children(rec.id, reason)
        # Hooks first: whoever awaits the result sees their effects done. (Tested
        # here too: no coroutine per execution for the jobs without hooks.)
        if self.hooks.any_for(job):
            await self.settled_hooks(job, rec, typed_input, error, reason)
        self.results.resolve(rec)

    async def settled_hooks(
        self, job: Job, rec: ExecutionRecord, typed_input: Any, error: BaseException | None, reason: str | None
    ) -> None:
        hooks = self.hooks
        if not hooks.any_for(job):
            return
        if typed_input is None and rec.input is not None:
            typed_input = load_typed(job.options.input, rec.input)
        if rec.status == "completed":
            typed_out = load_typed(job.options.output, rec.output)
            await hooks.fire(job, "success", rec.id, {"input": typed_input, "output": typed_out})
            result: dict[str, Any] = {"status": "completed", "output": typed_out, "error": None}
        elif rec.status == "failed":
            await hooks.fire(job, "error", rec.id, {"input": typed_input, "error": error, "attempt": rec.retry_count + 1})
            await hooks.fire(job, "failure", rec.id, {"input": typed_input, "error": error})
            result = {"status": "failed", "output": None, "error": error}
        else:
            await hooks.fire(job, "cancel", rec.id, {"input": typed_input, "reason": reason})
            result = {"status": "cancelled", "output": None, "error": None, "reason": reason}
        await hooks.fire(job, "settled", rec.id, {"input": typed_input, "result": result})

    async def suspend(
        self,
        ctx: ExecutionContext,
        status: SuspendStatus,
        *,
        wait_reason: str,
        run_at: int | None = None,
        event: tuple[EventKind, dict[str, Any]] | None = None,
        extra: Batch | None = None,
    ) -> bool:
        """Release the execution into `status` (waiting/paused/pending); False if it was lost."""
        change = suspend_transition(
            ctx.holder, status, wait_reason=wait_reason, current_step=ctx.record.current_step,
            now=now_ms(), run_at=run_at, event=event,
        )  # fmt: skip
        ctx.finishing = True
        try:
            await self.commit_for(ctx, change.batch(extra))
        except Interrupt:
            return False
        if run_at is not None and self._timer is not None:
            self._timer.at(run_at)
        if status == "pending":
            self.kick()
        return True

    def _release_later(self, ctx: ExecutionContext) -> None:
        task = asyncio.create_task(self._release(ctx), name=f"dq-release:{ctx.id}")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, ctx: ExecutionContext) -> None:
        """Give an execution whose attempt storage cut short back to pending (fenced by
        its token), retrying until storage answers; then it resumes by replay, here or
        elsewhere. If its lease expires first, `reclaim` does the same. A pause or cancel
        requested meanwhile (`control`) is kept: the next claim acts on it."""
        delay_s = _BACKOFF_S[0]
        while not self.closing:
            change = release(ctx.holder, current_step=ctx.record.current_step, now=now_ms(), reason="storage unavailable")
            batch = change.batch()
            batch.fences[ctx.id] = ctx.record.token
            try:
                await self.committer.commit(batch)
            except StorageLostError as exc:
                self.lose_storage(exc)
                return
            except Exception as exc:
                if not self.storage.is_unavailable(exc):
                    log.error("dq: could not release execution %s (its lease will expire): %s", ctx.id, exc)
                    return
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, max(self.poll_s, _BACKOFF_S[1]))
                continue
            self.kick()
            return


def _committed(ctx: ExecutionContext, result: CommitResult) -> CommitResult:
    """`result` for the holder of `ctx`: Interrupt('lost') when its writes were refused;
    a stored pause or cancel request becomes its `control`."""
    if ctx.id in result.refused:
        ctx.control = LOST
        raise LOST.interrupt()
    control = result.controls.get(ctx.id)
    if control and ctx.control is None:
        ctx.control = Control.parse(control)
    return result
