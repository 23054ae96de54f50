"""The state owner's dispatch: the claim loop, and one attempt's run on the owner's
side (its stored control, flow-control admission, then `attempt.run`; what is
left to do when it returns)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any

from . import attempt, context
from .errors import CancelledError, Interrupt, StorageLostError
from .event_schema import EventKind
from .ids import now_ms
from .replay import REUSED
from .runtime_state import _BACKOFF_S, RuntimeState, log
from .scheduler import wait_event
from .serialize import load_typed
from .storage.base import Batch, ExecutionRecord
from .transitions import Control, ControlKind
from .transitions import suspend as suspend_transition

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .job import Job


class Dispatch(RuntimeState):
    async def _dispatch_loop(self) -> None:
        backoff_s = _BACKOFF_S[0]
        while not self.closing:
            if not await wait_event(self._wake, self.poll_s):
                await self._load_paused()
            self._wake.clear()
            try:
                await self._claim_due()
                backoff_s = _BACKOFF_S[0]
            except StorageLostError as exc:
                self.lose_storage(exc)
                return
            except Exception as exc:
                # E.g. the database restarting: try again soon, then less and less often.
                log.warning("dq: claim failed (retrying in %.2fs): %s", backoff_s, exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, max(self.poll_s, _BACKOFF_S[1]))
                self._wake.set()

    async def _claim_due(self) -> None:
        names = list(self.queue.definitions)
        while not self.closing:
            free = self.max_active - len(self.contexts)
            if free <= 0:
                self._room_wanted = True
                return
            limit = min(free, 200)
            recs = await self.storage.claim(
                self.worker_id, limit=limit, lease_ms=self.lease_ms,
                job_names=names, exclude_jobs=sorted(self.paused_jobs),
            )  # fmt: skip
            claimed = [self._context(self.queue.definitions[rec.job_name], rec, {}) for rec in recs]
            for ctx in claimed:
                self.contexts[ctx.id] = ctx  # their room, taken while their histories are read
            await self._run_claimed(claimed)
            if len(recs) < limit:
                break
        due = await self.storage.next_due(names, sorted(self.paused_jobs))
        if due is not None and self._timer is not None:
            self._timer.at(due)

    async def _run_claimed(self, claimed: list[ExecutionContext]) -> None:
        """Run executions just claimed, each with its step history (a resumed, retried
        or replayed one has steps), read for the whole claim in one storage call. If
        that read fails, each reads its own as it starts and meets the error where an
        execution's storage errors are handled (`guard`); the claim loop gets it too."""
        if not claimed:
            return
        try:
            histories = await self.storage.get_steps_many([ctx.id for ctx in claimed])
        except BaseException:
            for ctx in claimed:
                self._spawn(ctx, load_history=True)
            raise
        for ctx in claimed:
            ctx.history = {s.key: s for s in histories[ctx.id]}
            self._spawn(ctx, load_history=False)

    async def _load_paused(self) -> None:
        """The paused jobs as stored (another process may have paused one), unless this
        process paused or resumed one while the read ran: it would be stale then (the
        next poll reads again)."""
        version = self.paused_version
        flags = await self.storage.list_state("job_paused:")
        if self.paused_version == version:
            self.paused_jobs = {k.split(":", 1)[1] for k in flags}

    def _context(self, job: Job, rec: ExecutionRecord, history: dict[str, Any]) -> ExecutionContext:
        return context.ExecutionContext(self.queue, job, rec, history, self)

    def run_admitted(self, job: Job, rec: ExecutionRecord, history: dict[str, Any]) -> None:
        """Run an execution a released slot was handed to (already claimed by that write)."""
        self.contexts[rec.id] = ctx = self._context(job, rec, history)
        ctx.holds_slot = True
        self._spawn(ctx, load_history=False)

    def _spawn(self, ctx: ExecutionContext, *, load_history: bool) -> None:
        loop = asyncio.get_running_loop()  # its create_task: asyncio.create_task is one frame more
        task = loop.create_task(self._execute(ctx, load_history), name=f"dq:{ctx.job.name}:{ctx.id}")
        ctx.task = task
        # `_execute` takes it out itself as it returns, not a done callback (one loop
        # handle less per execution). One cancelled before it ever ran (only at
        # close) stays in the set, done.
        self._tasks.add(task)

    async def _execute(self, ctx: ExecutionContext, load_history: bool) -> None:
        job, rec = ctx.job, ctx.record
        typed_input: Any = None
        ctx.started = True
        try:
            if load_history:
                ctx.history = {s.key: s for s in await self.guard(ctx, self.storage.get_steps(rec.id))}
            requested = Control.parse(rec.control) if rec.control else None
            if requested is not None:
                raise requested.interrupt()
            if ctx.control is not None:  # asked before the task ran (see `interrupt`)
                raise ctx.control.interrupt()
            typed_input = load_typed(job.options.input, rec.input)
            if job.name in self.paused_jobs:
                # Taken by a claim that was asked before the job was paused: back to pending.
                await self._hold_back(ctx, typed_input, now_ms(), "job paused")
                return
            if self.flow.gated(job) and not ctx.holds_slot:  # holds_slot: handed over by a release
                # A replay's reused steps are not a start of its own: its first run is.
                first_start = rec.retry_count == 0 and (not ctx.history or all(s.job_attempt == REUSED for s in ctx.history.values()))
                wanted = self.flow.admit_now(job, rec, first_start)
                if wanted is not None:
                    park = partial(self._park, ctx)  # not a lambda: no cells in every execution's frame
                    gate = await self.guard(ctx, self.flow.admit(job, rec, wanted, park, ctx.history))
                    if gate.parked:  # back to pending as a waiter, in the admission's own write
                        ctx.finishing = True
                        if self._timer is not None:
                            self._timer.at(gate.retry_at)
                        return
                    if not gate.ok:
                        await self._hold_back(ctx, typed_input, gate.retry_at, gate.reason or "")
                        return
                ctx.holds_slot = True
            await attempt.run(self, ctx, typed_input)
        except Interrupt as intr:
            await attempt.interrupted(self, ctx, intr, typed_input)
        except asyncio.CancelledError:
            if ctx.control is None:
                raise
            await attempt.interrupted(self, ctx, ctx.control.interrupt(), typed_input)
        except StorageLostError as exc:
            self.lose_storage(exc)
        except Exception as exc:
            await attempt.attempt_failed(self, ctx, typed_input, exc)
        finally:
            if self.contexts.get(rec.id) is ctx:  # a hand-over may already run it anew
                del self.contexts[rec.id]
            if ctx.control is not None and ctx.control.kind is ControlKind.UNAVAILABLE:
                self._release_later(ctx)
            try:
                if ctx.holds_slot and self.fatal_error is None:
                    await self.flow.release(job, rec)
            finally:
                self._tasks.discard(ctx.task)  # set by _spawn before this runs
                if self._room_wanted and not self.closing:
                    self._room_wanted = False
                    self.kick()

    def _release_early(self, ctx: ExecutionContext) -> None:
        """The handler returned: its slot goes on while its end is written, so the two
        writes share one transaction instead of following each other. (A crash before
        that commit resumes the execution, which then takes a slot again.)"""
        if not ctx.holds_slot or self.fatal_error is not None:
            return
        ctx.holds_slot = False
        self.flow.release_nowait(ctx.job, ctx.record, quiet=True)

    async def _hold_back(self, ctx: ExecutionContext, typed_input: Any, retry_at: int, reason: str) -> None:
        """Not allowed to start yet: back to pending until `retry_at`, with the reason
        shown (or, for a throttle in discard mode, cancelled)."""
        if retry_at < 0:
            error = CancelledError(f"execution {ctx.id} was {reason}", reason)
            await self._finish(ctx, "cancelled", typed_input, error=error, reason=reason)
            return
        first = ctx.record.wait_reason != reason
        event = (EventKind.QUEUED, {"reason": reason, "retry_at": retry_at}) if first else None
        await self.suspend(ctx, "pending", wait_reason=reason, run_at=retry_at, event=event)

    def _park(self, ctx: ExecutionContext, run_at: int, reason: str) -> Batch:
        """The writes that put an execution refused by admission back to pending until
        `run_at` (what `suspend` writes), committed with the refusal itself."""
        event = (EventKind.QUEUED, {"reason": reason, "retry_at": run_at}) if ctx.record.wait_reason != reason else None
        change = suspend_transition(
            ctx.holder, "pending", wait_reason=reason, current_step=ctx.record.current_step,
            now=now_ms(), run_at=run_at, event=event,
        )  # fmt: skip
        batch = change.batch()
        batch.fences[ctx.id] = ctx.record.token
        return batch
