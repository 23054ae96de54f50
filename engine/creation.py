"""The state owner's creation paths: a new execution stored (already claimed by
this process when it has room to run it) and started; bulk starts, debounced
triggers, and `start`/`run` from inside a handler (a child step)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from . import context
from .errors import JobError, StorageLostError
from .event_schema import EventKind
from .execution import Execution
from .flow import Gate
from .idempotency import check_key, start_once
from .ids import new_id, now_ms
from .runtime_state import RuntimeState
from .serialize import load_typed, validate_in
from .steps import child_step
from .storage.base import Batch, CommitResult, EventRecord, ExecutionRecord
from .transitions import claim_new, unclaim_new

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .job import Job


class Creation(RuntimeState):
    def check_registered(self, job: Job) -> None:
        if self.queue.definitions.get(job.name) is not job:
            raise JobError(f"job {job.name!r} is not registered in this queue")

    def new_record(
        self, job: Job, input: Any, parent: ExecutionContext | None = None
    ) -> ExecutionRecord:
        self.check_registered(job)
        _typed, stored = validate_in(job.options.input, input, job.input_what)
        now = now_ms()
        return ExecutionRecord(
            id=new_id(),
            job_name=job.name,
            status="pending",
            input=stored,
            priority=job.options.priority,
            created_at=now,
            run_at=now,
            parent_id=parent.id if parent else None,
            root_id=(parent.record.root_id or parent.id) if parent else None,
        )

    def _can_dispatch_now(self, job: Job) -> bool:
        return (
            not self.closing
            and job.name not in self.paused_jobs
            and len(self.contexts) < self.max_active
            and job.options.debounce is None
        )

    async def create(self, job: Job, rec: ExecutionRecord, extra: Batch | None = None) -> CommitResult:
        """Store a new execution (with `extra` writes in the same transaction) and run it."""
        return await self.create_many(job, [rec], extra)

    async def create_many(
        self, job: Job, recs: list[ExecutionRecord], extra: Batch | None = None
    ) -> CommitResult:
        """Store new executions in one transaction and run them.

        Those this process has room for are stored already claimed by us: no
        claim round trip, no polling latency. The rest wait for the dispatcher.
        """
        if job.options.debounce is not None and extra is None:
            for rec in recs:
                await self._create_debounced(job, rec)
            return CommitResult()
        direct: list[ExecutionContext] = []
        gated: list[tuple[ExecutionContext, EventRecord]] = []  # admitted in the write that creates them
        fuse = extra is None and self.flow.admits_at_creation(job)
        keep = extra is None and self.flow.keeps_at_creation(job)
        kept: list[tuple[str, list[str]]] = []  # admitted at once, in memory: stored with the rest
        batch = extra if extra is not None else Batch()
        for rec in recs:
            trigger = EventRecord(
                rec.id, job.name, EventKind.TRIGGER, {"input": rec.input, "parent_id": rec.parent_id}, rec.created_at,
            )  # fmt: skip
            if self._can_dispatch_now(job):
                claim_new(rec, self.worker_id, rec.created_at + self.clock_offset_ms + self.lease_ms)
                # Reserve the slot before awaiting so concurrent creates respect max_active.
                # A replay is created with the steps it reuses: they are its history.
                history = {s.key: s for s in batch.steps if s.execution_id == rec.id} if batch.steps else {}
                self.contexts[rec.id] = ctx = self._context(job, rec, history)
                keys = self.flow.admit_kept_now(job, rec) if keep else None
                if keys is not None:
                    ctx.holds_slot = True
                    kept.append((rec.id, keys))
                elif fuse:
                    gated.append((ctx, trigger))
                    continue
                direct.append(ctx)
            batch.executions.append(rec)
            batch.events.append(trigger)
        try:
            if not gated:  # no task in between: a start on a synchronous adapter stays synchronous
                result, gates = await self.committer.commit(batch), []
            elif not batch:
                result, gates = CommitResult(), await self._admit_new(job, gated)
            else:
                result, gates = await asyncio.gather(self.committer.commit(batch), self._admit_new(job, gated))
            failed = next((g for g in gates if isinstance(g, BaseException)), None)
        except BaseException as exc:
            for ctx in [*direct, *(c for c, _ in gated)]:
                self.contexts.pop(ctx.id, None)
                self.flow.parked.pop(ctx.id, None)
            for execution_id, keys in kept:
                self.flow.created_kept(execution_id, keys, stored=False)
            if isinstance(exc, StorageLostError):
                self.lose_storage(exc)
            raise
        if result.conflict:  # an `extra` precondition failed: nothing was stored
            for ctx in direct:
                self.contexts.pop(ctx.id, None)
                unclaim_new(ctx.record)
            return result
        for execution_id, keys in kept:
            self.flow.created_kept(execution_id, keys, stored=True)
        lost: set[str] = set()
        for (ctx, _), gate in zip(gated, gates, strict=True):
            if gate is None or (isinstance(gate, Gate) and gate.ok):
                ctx.holds_slot = gate is not None
                direct.append(ctx)
            elif self.contexts.get(ctx.id) is ctx:  # not stored, or stored as a waiter (a grant may run it anew already)
                del self.contexts[ctx.id]
                if isinstance(gate, Gate) and self._timer is not None:
                    self._timer.at(gate.retry_at)
                if isinstance(gate, BaseException):
                    self.flow.parked.pop(ctx.id, None)
                    lost.add(ctx.id)
        if self.hooks.wanted(job, "trigger"):
            for rec in recs:
                if rec.id in lost:
                    continue
                await self.hooks.fire(job, "trigger", rec.id, {"input": load_typed(job.options.input, rec.input)})
        for ctx in direct:
            self._spawn(ctx, load_history=False)
        if len(direct) + len(gated) < len(recs):
            if len(self.contexts) >= self.max_active:
                self._room_wanted = True  # what the claim loop would find: the next execution to end wakes it
            else:
                self.kick()
        if failed is not None:  # those admitted with it run; this one was not stored
            if isinstance(failed, StorageLostError):
                self.lose_storage(failed)
            raise failed
        return result

    async def _admit_new(
        self, job: Job, gated: list[tuple[ExecutionContext, EventRecord]]
    ) -> list[Gate | BaseException | None]:
        """Admission of each, in the write that creates it (`FlowControl.admit_new`)."""
        if len(gated) == 1:
            try:
                return [await self.flow.admit_new(job, gated[0][0].record, gated[0][1])]
            except Exception as exc:
                return [exc]
        return await self.flow.admit_new_many(job, [(c.record, t) for c, t in gated])

    async def _create_debounced(self, job: Job, rec: ExecutionRecord) -> str:
        """Trigger a debounced job: a new execution, which cancels the pending one it
        supersedes (`FlowControl.plan`). Returns the new execution's id."""
        typed = load_typed(job.options.input, rec.input)
        for _ in range(50):
            batch, previous = await self.flow.plan(job, rec, typed)
            result = await self.committer.commit(batch)
            if result.conflict:
                continue
            if self.hooks.wanted(job, "trigger"):
                await self.hooks.fire(job, "trigger", rec.id, {"input": typed})
            if self._timer is not None:
                self._timer.at(rec.run_at)
            self.kick()
            if previous is not None and result.applied[0]:
                await self.flow.debounced(job, previous, rec)
            return rec.id
        raise JobError(f"job {job.name!r}: debounce state kept changing; trigger not stored")

    async def start_many(self, job: Job, inputs: list[Any]) -> list[Execution]:
        """Start one execution per input (bulk enqueue), stored in order in transactions
        of up to 1,000: a chunk that fails raises, and those before it stay stored."""
        await self.queue.started()
        recs = [self.new_record(job, item) for item in inputs]
        for start in range(0, len(recs), 1000):
            await self.create_many(job, recs[start : start + 1000])
        return [Execution(self.queue, rec) for rec in recs]

    async def start_job(
        self, job: Job, input: Any, line: int | None = None, idempotency_key: str | None = None
    ) -> Execution:
        key = check_key(idempotency_key)
        ctx = context.current_or_none()
        if ctx is not None and ctx.queue is self.queue:
            result = await child_step(ctx, job, input, wait=False, line=line, idempotency_key=key)
            assert isinstance(result, Execution)
            return result
        rec = self.new_record(job, input)  # bad input fails here, before anything starts
        await self.queue.started()
        if key is not None:
            first, _started = await start_once(
                self.storage, rec, key, job.idempotency_ttl_ms, lambda r, extra: self.create(job, r, extra)
            )
            return Execution(self.queue, first)
        if job.options.debounce is not None:
            answer = await self._create_debounced(job, rec)
            stored = await self.storage.get_execution(answer)
            return Execution(self.queue, stored or rec)
        await self.create(job, rec)
        return Execution(self.queue, rec)

    async def run_job(
        self, job: Job, input: Any, line: int | None = None, idempotency_key: str | None = None
    ) -> Any:
        ctx = context.current_or_none()
        if ctx is not None and ctx.queue is self.queue:
            key = check_key(idempotency_key)
            return await child_step(ctx, job, input, wait=True, line=line, idempotency_key=key)
        execution = await self.start_job(job, input, idempotency_key=idempotency_key)
        return await execution.result()
