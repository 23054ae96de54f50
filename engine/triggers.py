"""Triggers: pipe messages and job outputs that start other jobs, exactly once.

Pipe routes keep a cursor (the last message sequence number delivered) per
(job, pipe) in the storage state. Delivering a run of messages writes the new
executions and moves the cursor in one compare-and-set transaction, so with
several processes sharing a storage each message starts each job once. A new
route starts at the beginning of the pipe's log.

`job.into(fn)` routes are written in the same transaction that records the
source execution's success, which only its holder can commit: once as well.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ValidationError, error_to_dict
from .event_schema import EventKind, Trigger, TriggerError
from .ids import now_ms
from .job import Job, JobTrigger
from .pipe import Pipe, PipeTrigger
from .scheduler import wait_event
from .serialize import load_typed
from .storage.base import Batch, EventRecord, ExecutionRecord

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("dq")
Mapper = Callable[[Any], Any] | None


class Triggers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pipe_routes: list[tuple[Job, str, Any, Mapper]] = []
        self.job_routes: dict[str, list[tuple[Job, Mapper]]] = {}
        for job in runtime.queue.definitions.values():
            for t in job.options.trigger:
                if isinstance(t, JobTrigger):
                    self.job_routes.setdefault(t.source.name, []).append((job, t.fn))
                elif isinstance(t, PipeTrigger):
                    self.pipe_routes.append((job, t.name, None, t.view))
                elif isinstance(t, Pipe):
                    self.pipe_routes.append((job, t.name, t.input, None))
                else:
                    raise TypeError(f"job {job.name!r}: trigger {t!r} is not a pipe, pipe.into() or job.into()")
        self._wake = asyncio.Event()

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver pipe messages to the jobs they trigger, woken by sends and polling."""
        if not self.pipe_routes:
            return
        while True:
            for job, pipe, schema, fn in self.pipe_routes:
                try:
                    while await self.deliver(job, pipe, schema, fn):
                        pass
                except Exception as exc:
                    self.runtime.queue.logger.warning("dq: delivering pipe %r to job %r failed: %s", pipe, job.name, exc)
            await wait_event(self._wake, self.runtime.poll_s)
            self._wake.clear()

    def _map(self, job: Job, schema: Any, fn: Mapper, data: Any) -> Any:
        return fn(load_typed(schema, data)) if fn is not None else data

    async def deliver(self, job: Job, pipe: str, schema: Any, fn: Mapper) -> bool:
        """Deliver the next run of messages; True when there may be more."""
        runtime = self.runtime
        key = f"cursor:{job.name}:{pipe}"
        state = (await runtime.storage.get_state([key])).get(key)
        after = int((state or {}).get("seq", 0))
        messages = await runtime.storage.read_messages(pipe, after, limit=200)
        if not messages:
            return False
        if job.options.debounce is not None:
            return await self._deliver_debounced(job, pipe, schema, fn, key, state, messages[0])
        batch = Batch(state={key: {"seq": messages[-1].seq}}, expect={key: state})
        for msg in messages:
            rec = self._record(job, pipe, schema, fn, msg.data, msg.seq, batch)
            if rec is not None:
                batch.executions.append(rec)
                batch.events.append(self._trigger_event(job, rec, pipe, msg.seq))
        result = await runtime.committer.commit(batch)
        if not result.conflict:
            await self._after(job, batch.executions)
        return True

    async def _deliver_debounced(self, job: Job, pipe: str, schema: Any, fn: Mapper,
                                 key: str, state: Any, msg: Any) -> bool:  # fmt: skip
        runtime = self.runtime
        errors = Batch()
        rec = self._record(job, pipe, schema, fn, msg.data, msg.seq, errors)
        if rec is None:
            errors.state, errors.expect = {key: {"seq": msg.seq}}, {key: state}
            await runtime.committer.commit(errors)
            return True
        batch, previous = await runtime.flow.plan(job, rec, load_typed(job.options.input, rec.input))
        batch.state[key], batch.expect[key] = {"seq": msg.seq}, state
        result = await runtime.committer.commit(batch)
        if not result.conflict:
            await self._after(job, batch.executions)
            if previous is not None and result.applied[0]:
                await runtime.flow.debounced(job, previous, rec)
        return True

    def _record(self, job: Job, pipe: str, schema: Any, fn: Mapper, data: Any, seq: int,
                errors: Batch) -> ExecutionRecord | None:  # fmt: skip
        try:
            return self.runtime.new_record(job, self._map(job, schema, fn, data))
        except (ValidationError, Exception) as exc:
            # The message stays in the pipe's log; the route moves on and says why.
            failed: TriggerError = {"pipe": pipe, "seq": seq, "error": error_to_dict(exc)}
            errors.events.append(EventRecord(None, job.name, EventKind.TRIGGER_ERROR, dict(failed), now_ms()))
            return None

    def _trigger_event(self, job: Job, rec: ExecutionRecord, source: str, seq: int | None) -> EventRecord:
        data: Trigger = {"input": rec.input, "parent_id": None, "source": source, "seq": seq}
        return EventRecord(rec.id, job.name, EventKind.TRIGGER, dict(data), rec.created_at)

    async def _after(self, job: Job, recs: list[ExecutionRecord]) -> None:
        runtime = self.runtime
        for rec in recs:
            if runtime.hooks.wanted(job, "trigger"):
                await runtime.hooks.fire(job, "trigger", rec.id, {"input": load_typed(job.options.input, rec.input)})
            if rec.run_at > now_ms() and runtime.timer is not None:
                runtime.timer.at(rec.run_at)
        runtime.kick()

    def started_by(self, batch: Batch) -> list[tuple[Job, ExecutionRecord]]:
        """The executions a success batch started (for their on_trigger hooks)."""
        defs = self.runtime.queue.definitions
        return [(defs[r.job_name], r) for r in batch.executions if r.job_name in defs]

    def downstream(self, source: Job, output: Any, batch: Batch) -> list[tuple[Job, ExecutionRecord]]:
        """Executions that `source`'s output starts (`job.into`), added to its success batch.
        Debounced targets are returned apart: they are triggered after the commit."""
        later: list[tuple[Job, ExecutionRecord]] = []
        for target, fn in self.job_routes.get(source.name, ()):
            try:
                rec = self.runtime.new_record(target, self._map(target, source.options.output, fn, output))
            except Exception as exc:
                failed: TriggerError = {"job": source.name, "error": error_to_dict(exc)}
                batch.events.append(EventRecord(None, target.name, EventKind.TRIGGER_ERROR, dict(failed), now_ms()))
                continue
            if target.options.debounce is not None:
                later.append((target, rec))
            else:
                batch.executions.append(rec)
                batch.events.append(self._trigger_event(target, rec, f"job:{source.name}", None))
        return later
