"""Runs handlers: dispatch, attempts, replay context, retries, timeouts, leases, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

from . import attempt, context
from .committer import Committer
from .errors import (
    CancelledError,
    Interrupt,
    JobError,
    StorageLostError,
    error_to_dict,
)
from .event_schema import EventKind
from .events import EventBus, Hooks
from .execution import Execution
from .flow import FlowControl, Gate
from .idempotency import check_key, holder, start_once
from .ids import new_id, now_ms
from .replay import REUSED
from .results import Results
from .retention import Housekeeping
from .scheduler import Cron, Timer, wait_event
from .serialize import load_typed, validate_in
from .sources import SourceVersions
from .storage.base import (
    Batch,
    CommitResult,
    EventRecord,
    ExecutionRecord,
)
from .transitions import (
    LOST,
    SHUTDOWN,
    UNAVAILABLE,
    Control,
    ControlKind,
    EndStatus,
    SuspendStatus,
    Transition,
    claim_new,
    ending,
    release,
)
from .transitions import suspend as suspend_transition
from .triggers import Triggers

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .job import Job
    from .limits import Limit
    from .queue import Queue

log = logging.getLogger("dq")

#: Retry delays after a storage error: first, and the cap (at least the poll interval).
_BACKOFF_S = (0.05, 2.0)
T = TypeVar("T")


class Runtime:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.storage = queue.storage
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.lease_ms = queue.lease_ms
        self.poll_s = queue.poll_interval_s
        self.max_active = queue.max_active
        self.short_sleep_ms = queue.short_sleep_ms
        self.flow = FlowControl(self)
        self.triggers = Triggers(self)
        self.cron = Cron(self)
        self.housekeeping = Housekeeping(
            self.storage, queue.retention_ms, list(queue.definitions), lambda b: self.committer.commit(b), queue.logger
        )
        self.contexts: dict[str, ExecutionContext] = {}
        self.paused_jobs: set[str] = set()
        self.closing = False
        self.bus = EventBus(self.storage)
        self.hooks = Hooks(self._record_event, queue)
        self.committer: Committer = None  # type: ignore[assignment]  # set in start()
        self.sources = SourceVersions(lambda batch: self.committer.send(batch))
        self.results = Results(self.storage, self.contexts, self.poll_s)
        self._wake = asyncio.Event()
        #: The dispatcher stopped claiming for want of room (max_active): an ending
        #: execution kicks it. Otherwise an ending frees nothing it waits for.
        self._room_wanted = False
        self._timer: Timer | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Executions given back to storage after it was unreachable (see `_release`).
        self._releases: set[asyncio.Task[None]] = set()
        #: Storage clock minus local clock, ms: leases this process writes itself
        #: (executions created already claimed) are on the storage clock too.
        self.clock_offset_ms = 0
        #: Set once storage lost dq's data (StorageLostError): nothing runs any more.
        self.fatal_error: StorageLostError | None = None

    # -- start / stop ------------------------------------------------------------
    async def start(self) -> None:
        await self.storage.open()
        await self._measure_clock()
        self.committer = Committer(self.storage, self.bus.notify)
        self.committer.start()
        self._timer = Timer(self.kick)
        await self.storage.heartbeat(self.worker_id, self._worker_info("running"))
        await self.recover()
        await self._load_paused()
        self.storage.on_wakeup(self.kick)
        self.storage.on_wakeup(self.flow.ledger.on_wakeup)
        for name, coro in (
            ("dispatch", self._dispatch_loop()),
            ("leases", self._lease_loop()),
            ("watch", self.results.watch()),
            ("watchdog", attempt.watchdog(self.contexts.values)),
            ("triggers", self.triggers.run()),
            ("cron", self.cron.run()),
            *([("housekeeping", self.housekeeping.run())] if self.storage.housekeeping else []),
        ):
            task = asyncio.create_task(coro, name=f"dq-{name}")
            task.add_done_callback(self._side_task_done)
            self._side_tasks.append(task)
        self.kick()

    def _worker_info(self, state: str) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "state": state, "kind": "in-process"}

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("dq: background task %s died: %r", task.get_name(), task.exception())

    async def _measure_clock(self) -> None:
        self.clock_offset_ms = await self.storage.now() - now_ms()

    def check_usable(self) -> None:
        """Raise the storage loss (a fresh exception each time) once one was detected."""
        if self.fatal_error is not None:
            raise StorageLostError(*self.fatal_error.args) from self.fatal_error

    def lose_storage(self, exc: StorageLostError) -> None:
        """Storage lost dq's data (e.g. Redis FLUSHALL): carrying on would run an empty
        queue. Stop dispatching and every running execution, and hand the error to
        whoever waits for a result; later calls on the queue raise it too."""
        if self.fatal_error is not None:
            return
        self.fatal_error = exc
        self.closing = True
        log.error("dq: %s. This queue stopped: no execution runs until it is restarted.", exc)
        current = asyncio.current_task()
        for task in self._side_tasks:
            if task is not current:
                task.cancel()
        for ctx in list(self.contexts.values()):
            ctx.control = LOST
            if ctx.task is not None and ctx.task is not current and ctx.started:
                ctx.task.cancel()
        self.results.fail_all(exc)

    async def recover(self) -> list[str]:
        """Reclaim executions held by dead processes of this host and by expired leases."""
        host = socket.gethostname()
        dead = []
        for w in await self.storage.list_workers():
            info = w.get("info") or {}
            if w["id"] != self.worker_id and info.get("host") == host and not _pid_alive(info.get("pid")):
                dead.append(w["id"])
        ids = await self.storage.reclaim(dead)
        for wid in dead:
            await self.storage.remove_worker(wid)
        if ids:
            log.info("dq: recovered %d execution(s) to resume by replay", len(ids))
            self.kick()
        return ids

    async def close(self, grace_s: float) -> None:
        self.closing = True
        await _cancel_until_done([*self._side_tasks, *self._releases])
        for ctx in list(self.contexts.values()):
            self.interrupt(ctx, SHUTDOWN)
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            # Cancelled handlers still write their release: give them time, then insist.
            if pending:
                _done, pending = await asyncio.wait(pending, timeout=max(grace_s, 1.0))
            await _cancel_until_done(pending)
        if self._timer is not None:
            self._timer.close()
        await self.committer.aclose()
        await self.storage.remove_worker(self.worker_id)
        await self.bus.aclose()
        self.results.cancel_all()
        await self.storage.aclose()

    def kick(self) -> None:
        self._wake.set()
        self.triggers.kick()

    @property
    def timer(self) -> Timer | None:
        return self._timer

    # -- triggering ----------------------------------------------------------------
    def check_registered(self, job: Job) -> None:
        if self.queue.definitions.get(job.name) is not job:
            raise JobError(f"job {job.name!r} is not registered in this queue")

    def new_record(
        self, job: Job, input: Any, parent: ExecutionContext | None = None
    ) -> ExecutionRecord:
        self.check_registered(job)
        _typed, stored = validate_in(job.options.input, input, f"input of job {job.name!r}")
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
        batch = extra if extra is not None else Batch()
        for rec in recs:
            trigger = EventRecord(
                rec.id, job.name, EventKind.TRIGGER, {"input": rec.input, "parent_id": rec.parent_id}, rec.created_at,
            )  # fmt: skip
            if self._can_dispatch_now(job):
                claim_new(rec, self.worker_id, rec.created_at + self.clock_offset_ms + self.lease_ms)
                # Reserve the slot before awaiting so concurrent creates respect max_active.
                # A replay is created with the steps it reuses: they are its history.
                history = {s.key: s for s in batch.steps if s.execution_id == rec.id}
                self.contexts[rec.id] = ctx = self._context(job, rec, history)
                if fuse:
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
            if isinstance(exc, StorageLostError):
                self.lose_storage(exc)
            raise
        if result.conflict:  # an `extra` precondition failed: nothing was stored
            for ctx in direct:
                self.contexts.pop(ctx.id, None)
                rec = ctx.record
                rec.status, rec.worker_id, rec.token, rec.started_at, rec.lease_until = "pending", None, 0, None, None
            return result
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
        return list(await asyncio.gather(*(self.flow.admit_new(job, c.record, t) for c, t in gated), return_exceptions=True))

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
        """Start one execution per input in a single transaction (bulk enqueue)."""
        await self.queue.started()
        recs = [self.new_record(job, item) for item in inputs]
        for start in range(0, len(recs), 1000):
            await self.create_many(job, recs[start : start + 1000])
        return [Execution(self.queue, rec) for rec in recs]

    async def settled(self, execution_ids: list[str]) -> list[asyncio.Future[ExecutionRecord]]:
        """Futures resolved when each execution ends (cheaper than one task per result())."""
        self.check_usable()
        return await self.results.settled(execution_ids)

    async def start_job(
        self, job: Job, input: Any, line: int | None = None, idempotency_key: str | None = None
    ) -> Execution:
        key = check_key(idempotency_key)
        ctx = context.current_or_none()
        if ctx is not None and ctx.queue is self.queue:
            from .steps import child_step

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
            from .steps import child_step

            key = check_key(idempotency_key)
            return await child_step(ctx, job, input, wait=True, line=line, idempotency_key=key)
        execution = await self.start_job(job, input, idempotency_key=idempotency_key)
        return await execution.result()

    # -- dispatch ------------------------------------------------------------------
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
            for rec in recs:
                ctx = self._context(self.queue.definitions[rec.job_name], rec, {})
                self.contexts[rec.id] = ctx
                self._spawn(ctx, load_history=True)
            if len(recs) < limit:
                break
        due = await self.storage.next_due(names, sorted(self.paused_jobs))
        if due is not None and self._timer is not None:
            self._timer.at(due)

    async def _load_paused(self) -> None:
        flags = await self.storage.list_state("job_paused:")
        self.paused_jobs = {k.split(":", 1)[1] for k in flags}

    def _context(self, job: Job, rec: ExecutionRecord, history: dict[str, Any]) -> ExecutionContext:
        return context.ExecutionContext(self.queue, job, rec, history, self)

    def run_admitted(self, job: Job, rec: ExecutionRecord, history: dict[str, Any]) -> None:
        """Run an execution a released slot was handed to (already claimed by that write)."""
        self.contexts[rec.id] = ctx = self._context(job, rec, history)
        ctx.holds_slot = True
        self._spawn(ctx, load_history=False)

    def _spawn(self, ctx: ExecutionContext, *, load_history: bool) -> None:
        task = asyncio.create_task(self._execute(ctx, load_history), name=f"dq:{ctx.job.name}:{ctx.id}")
        ctx.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one attempt (or the resumption of one) ---------------------------------------
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
            if self.flow.gated(job) and not ctx.holds_slot:  # holds_slot: handed over by a release
                # A replay's reused steps are not a start of its own: its first run is.
                first_start = rec.retry_count == 0 and all(s.job_attempt == REUSED for s in ctx.history.values())
                park = lambda at, why: self._park(ctx, at, why)  # noqa: E731
                gate = await self.guard(ctx, self.flow.admit(job, rec, first_start, park, ctx.history))
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
            if ctx.holds_slot and self.fatal_error is None:
                await self.flow.release(job, rec)
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
        fut = self.flow.release_nowait(ctx.job, ctx.record)
        if fut is not None:
            fut.add_done_callback(lambda f: _log_release(ctx.id, f))

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

    # -- the seam: what the executor asks of the state owner (seam.StateOwner) -------------
    def record(self, batch: Batch) -> None:
        self.committer.send(batch)

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        return await self.storage.get_execution(execution_id)

    async def idempotency_holder(self, job_name: str, key: str) -> tuple[Any, ExecutionRecord | None]:
        return await holder(self.storage, job_name, key)

    async def cancel(self, execution_id: str, reason: str | None = None) -> bool:
        return await self.queue.lifecycle.cancel(execution_id, reason)

    async def acquire_slot(self, limit: Limit, holder: str, priority: int) -> None:
        await self.flow.acquire_step(limit, holder, priority)

    async def give_back_slot(self, limit: Limit, holder: str) -> None:
        await self.flow.give_back(limit, holder)

    def source_fingerprint(self, job: Job) -> str | None:
        return self.sources.fingerprint(job)

    def send(self, ctx: ExecutionContext, type: str, data: dict[str, Any]) -> None:
        ev = EventRecord(ctx.id, ctx.job.name, type, data, now_ms())
        self.committer.send(Batch(events=[ev], fences={ctx.id: ctx.record.token}))

    async def commit_for(self, ctx: ExecutionContext, batch: Batch) -> CommitResult:
        """Commit writes of the execution `ctx` holds; raises Interrupt('lost') if it lost
        it, Interrupt('unavailable') if storage could not be reached."""
        batch.fences[ctx.id] = ctx.record.token
        result = await self.guard(ctx, self.committer.commit(batch))
        if ctx.id in result.refused:
            ctx.control = LOST
            raise LOST.interrupt()
        control = result.controls.get(ctx.id)
        if control and ctx.control is None:
            ctx.control = Control.parse(control)
        return result

    async def guard(self, ctx: ExecutionContext, call: Awaitable[T]) -> T:
        """Await the runtime's own storage `call` for the execution `ctx`. When storage
        is unreachable the attempt unwinds (Interrupt('unavailable'): not an error of the
        job, and user code cannot catch it) and the execution is given back once storage
        answers again; when storage lost its data the queue stops (`lose_storage`)."""
        try:
            return await call
        except StorageLostError as exc:
            self.lose_storage(exc)
            ctx.control = LOST
            raise LOST.interrupt() from exc
        except Exception as exc:
            if not self.storage.is_unavailable(exc):
                raise
            log.warning("dq: storage unreachable while running execution %s: %s", ctx.id, exc)
            ctx.control = UNAVAILABLE
            raise UNAVAILABLE.interrupt() from exc

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

    def _record_event(self, type: str, execution_id: str | None, job_name: str | None, data: dict[str, Any]) -> None:
        self.committer.send(Batch(events=[EventRecord(execution_id, job_name, type, data, now_ms())]))

    def interrupt(self, ctx: ExecutionContext, control: Control) -> None:
        """Ask a running execution to stop: at once when parked or cancelled, else at its next step."""
        if ctx.finishing:
            return
        ctx.control = control
        # A task not yet started is not cancelled: `_execute` reads `control` first thing.
        if ctx.task is not None and ctx.started and (ctx.parked or control.stops_at_once):
            ctx.task.cancel()

    # -- endings -----------------------------------------------------------------------
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
            self._release_early(ctx)
            later = self.triggers.downstream(job, fields.get("output"), batch)
        try:
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
        # Hooks first: whoever awaits the result sees their effects done.
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
        event: tuple[str, dict[str, Any]] | None = None,
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

    # -- waiting for results (results.py) ----------------------------------------------------
    def resolve(self, rec: ExecutionRecord) -> None:
        self.results.resolve(rec)

    async def wait_terminal(self, execution_id: str) -> ExecutionRecord:
        """The execution's record once it is completed, failed or cancelled (here or elsewhere)."""
        self.check_usable()
        return await self.results.wait_terminal(execution_id)

    # -- leases ---------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        interval = max(0.05, self.lease_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_leases()
                await self.storage.heartbeat(self.worker_id, self._worker_info("running"))
                if await self.storage.reclaim():
                    self.kick()
                await self._measure_clock()
            except StorageLostError as exc:
                self.lose_storage(exc)
                return
            except Exception as exc:
                log.warning("dq: lease renewal failed: %s", exc)

    async def renew_leases(self) -> None:
        held = {i: c for i, c in self.contexts.items() if not c.finishing and c.record.token}
        if not held:
            return
        controls = await self.storage.renew(self.worker_id, list(held), self.lease_ms)
        for eid, ctx in held.items():
            if ctx.finishing:
                continue
            if eid not in controls:
                log.warning("dq: lost the lease of execution %s; another worker resumes it", eid)
                self.interrupt(ctx, LOST)
            elif ctx.control is None and (requested := Control.parse(controls[eid])) is not None:
                self.interrupt(ctx, requested)


async def _cancel_until_done(tasks: Collection[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait for them, cancelling again what is still running: a
    cancellation that lands as a driver call completes can be swallowed (redis-py's
    use of asyncio.wait_for on Python 3.11), and the task would run on for good."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)


def _log_release(execution_id: str, fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        # It no longer runs: the next waiter's look at the holders frees the slot.
        log.warning("dq: could not give back the slot of execution %s: %s", execution_id, fut.exception())


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

