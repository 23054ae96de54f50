"""The in-memory adapter: the same semantics as the durable ones, nothing survives the process."""

from __future__ import annotations

import bisect
import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..ids import now_ms
from .base import (
    Batch,
    CommitResult,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    PipeMessage,
    StepRecord,
    Storage,
)
from .query import matches, sort_and_page


class MemoryStorage(Storage):
    kind = "memory"
    durable = False

    def __init__(self) -> None:
        self._executions: dict[str, ExecutionRecord] = {}
        self._pending: set[str] = set()
        self._steps: dict[str, dict[str, StepRecord]] = {}
        self._events: list[EventRecord] = []
        self._event_seqs: list[int] = []
        self._by_execution: dict[str, list[EventRecord]] = {}
        self._messages: dict[str, list[PipeMessage]] = {}
        self._message_seq = 0
        self._state: dict[str, Any] = {}
        self._workers: dict[str, dict[str, Any]] = {}

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def now(self) -> int:
        return now_ms()

    async def commit(self, batch: Batch) -> CommitResult:
        # Everything below is synchronous: no other coroutine interleaves, so it is atomic.
        result = CommitResult()
        ok_fence = set()
        for eid, token in batch.fences.items():
            rec = self._executions.get(eid)
            if rec is None or rec.token != token:
                result.refused.add(eid)
            else:
                ok_fence.add(eid)
        for rec in batch.executions:
            if rec.id in self._executions:
                raise ValueError(f"execution {rec.id!r} already exists")
        for rec in batch.executions:
            self._put(replace(rec))
        for upd in batch.updates:
            cur = self._executions.get(upd.id)
            ok = (
                cur is not None
                and upd.id not in result.refused
                and (upd.token is None or cur.token == upd.token)
                and (upd.statuses is None or cur.status in upd.statuses)
            )
            if ok and cur is not None:
                for name, value in upd.fields.items():
                    setattr(cur, name, value)
                self._index(cur)
            result.applied.append(ok)
        for step in batch.steps:
            if step.execution_id in result.refused:
                continue
            self._steps.setdefault(step.execution_id, {})[step.key] = replace(step)
        for ev in batch.events:
            if ev.execution_id in result.refused:
                continue
            stored = replace(ev, seq=(self._event_seqs[-1] + 1) if self._event_seqs else 1)
            self._events.append(stored)
            self._event_seqs.append(stored.seq)
            if stored.execution_id:
                self._by_execution.setdefault(stored.execution_id, []).append(stored)
            result.events.append(stored)
        for msg in batch.messages:
            self._message_seq += 1
            self._messages.setdefault(msg.pipe, []).append(replace(msg, seq=self._message_seq))
        for key, value in batch.state.items():
            if value is None:
                self._state.pop(key, None)
            else:
                self._state[key] = copy.deepcopy(value)
        for eid in ok_fence:
            result.controls[eid] = self._executions[eid].control
        return result

    def _put(self, rec: ExecutionRecord) -> None:
        self._executions[rec.id] = rec
        self._index(rec)

    def _index(self, rec: ExecutionRecord) -> None:
        if rec.status == "pending":
            self._pending.add(rec.id)
        else:
            self._pending.discard(rec.id)

    def _due(self, now: int, exclude: Sequence[str]) -> list[ExecutionRecord]:
        return [
            r
            for i in self._pending
            if (r := self._executions[i]).run_at <= now and r.job_name not in exclude
        ]

    async def claim(
        self, worker_id: str, *, limit: int, lease_ms: int, exclude_jobs: Sequence[str] = ()
    ) -> list[ExecutionRecord]:
        now = now_ms()
        due = self._due(now, exclude_jobs)
        due.sort(key=lambda r: (-r.priority, r.run_at, r.id))
        out = []
        for rec in due[:limit]:
            rec.status = "running"
            rec.worker_id = worker_id
            rec.lease_until = now + lease_ms
            rec.token += 1
            rec.wait_reason = None
            if rec.started_at is None:
                rec.started_at = now
            self._pending.discard(rec.id)
            out.append(replace(rec))
        return out

    async def renew(
        self, worker_id: str, ids: Sequence[str], lease_ms: int
    ) -> dict[str, str | None]:
        until = now_ms() + lease_ms
        out: dict[str, str | None] = {}
        for eid in ids:
            rec = self._executions.get(eid)
            if rec is not None and rec.status == "running" and rec.worker_id == worker_id:
                rec.lease_until = until
                out[eid] = rec.control
        return out

    async def reclaim(self, dead_workers: Sequence[str] = ()) -> list[str]:
        now = now_ms()
        dead = set(dead_workers)
        out = []
        for rec in self._executions.values():
            if rec.status == "running" and (
                rec.worker_id in dead or (rec.lease_until is not None and rec.lease_until < now)
            ):
                rec.status, rec.worker_id, rec.lease_until = "pending", None, None
                rec.token += 1
                self._index(rec)
                out.append(rec.id)
        return out

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        rec = self._executions.get(execution_id)
        return replace(rec) if rec is not None else None

    async def query(self, query: ExecutionQuery) -> list[ExecutionRecord]:
        found = [r for r in self._executions.values() if matches(r, query)]
        return [replace(r) for r in sort_and_page(found, query)]

    async def count(self, query: ExecutionQuery) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._executions.values():
            if matches(r, query, paging=False):
                out[r.status] = out.get(r.status, 0) + 1
        return out

    async def get_steps(self, execution_id: str) -> list[StepRecord]:
        steps = self._steps.get(execution_id, {})
        return sorted((replace(s) for s in steps.values()), key=lambda s: s.seq)

    async def read_events(
        self, after_seq: int = 0, *, limit: int = 1000, execution_id: str | None = None
    ) -> list[EventRecord]:
        if execution_id is not None:
            events = self._by_execution.get(execution_id, [])
            return [replace(e) for e in events if e.seq > after_seq][:limit]
        start = bisect.bisect_right(self._event_seqs, after_seq)
        return [replace(e) for e in self._events[start : start + limit]]

    async def last_event_seq(self) -> int:
        return self._event_seqs[-1] if self._event_seqs else 0

    async def next_due(self, exclude_jobs: Sequence[str] = ()) -> int | None:
        times = [
            r.run_at
            for i in self._pending
            if (r := self._executions[i]).job_name not in exclude_jobs
        ]
        return min(times) if times else None

    async def read_messages(
        self, pipe: str, after_seq: int = 0, *, limit: int = 1000
    ) -> list[PipeMessage]:
        return [replace(m) for m in self._messages.get(pipe, []) if m.seq > after_seq][:limit]

    async def last_message_seq(self, pipe: str) -> int:
        msgs = self._messages.get(pipe)
        return msgs[-1].seq if msgs else 0

    async def get_state(self, keys: Sequence[str]) -> dict[str, Any]:
        return {k: copy.deepcopy(self._state[k]) for k in keys if k in self._state}

    async def list_state(self, prefix: str) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self._state.items() if k.startswith(prefix)}

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        self._workers[worker_id] = {"id": worker_id, "info": dict(info), "last_heartbeat": now_ms()}

    async def list_workers(self) -> list[dict[str, Any]]:
        return [dict(w) for w in self._workers.values()]

    async def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
