"""The in-memory adapter: the same semantics as the durable ones, nothing survives the process."""

from __future__ import annotations

import bisect
import itertools
import pickle
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..ids import now_ms
from .base import (
    CLAIMABLE,
    TERMINAL,
    Aggregate,
    Batch,
    CommitResult,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    PipeMessage,
    StepRecord,
    Storage,
    TimeBuckets,
)
from .conditions import expectations_fail, update_applies
from .memory_due import DueIndex
from .query import clone, finish_aggregate, fold, matches, only_status_and_job, sort_and_page

_FIELDS = frozenset(ExecutionRecord.__slots__) - {"id"}
#: A result's empty parts, shared (`CommitResult`: callers never change a result's containers).
_NO_IDS: set[str] = set()
_NO_BOOLS: list[bool] = []
_NO_EVENTS: list[EventRecord] = []
_LINKS = frozenset(("parent_id", "root_id", "replay_of"))


def _matcher(q: ExecutionQuery) -> Callable[[ExecutionRecord], bool]:
    """`matches(r, q)` as a predicate; for the dashboard's common lists (status, job,
    a cursor) one with only those checks: `matches` tests every field of the query."""
    if not only_status_and_job(q):
        return lambda r: matches(r, q)
    statuses = None if q.statuses is None else frozenset(q.statuses)
    jobs = None if q.job_names is None else frozenset(q.job_names)
    cursor, newest = q.cursor, q.order == "newest"
    return lambda r: (
        (statuses is None or r.status in statuses)
        and (jobs is None or r.job_name in jobs)
        and (cursor is None or (r.id < cursor if newest else r.id > cursor))
    )


class MemoryStorage(Storage):
    kind = "memory"
    durable = False
    synchronous_commit = True

    def __init__(self) -> None:
        self._executions: dict[str, ExecutionRecord] = {}
        self._pending: set[str] = set()
        #: The claimable ones in claim order (a claim does not look at all of them).
        self._due = DueIndex(self._executions, self._pending)
        #: Every execution id, ascending: list pages walk it from either end.
        self._ids: list[str] = []
        #: (field, value) -> ids, for parent_id, root_id and replay_of: an execution's family.
        self._linked: dict[tuple[str, str], set[str]] = {}
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
        return self.commit_now(batch)

    def commit_now(self, batch: Batch) -> CommitResult:
        """Synchronous, hence atomic: no other coroutine interleaves. Every commit of
        every execution comes here: the common shapes (a step's record and events, an
        ending's update and event, all fenced) take no call but the record's own."""
        state, executions = self._state, self._executions
        if batch.expect and expectations_fail(batch.expect, state.get):
            return CommitResult(conflict=True)
        # The result's containers are made only when something goes in them (callers
        # only read a result): the shared empty ones stand in otherwise.
        refused, applied, events = _NO_IDS, _NO_BOOLS, _NO_EVENTS
        fences, updates = batch.fences, batch.updates
        if fences:
            for eid, token in fences.items():  # conditions.refused_fences, inline
                cur = executions.get(eid)
                if cur is None or cur.token != token:
                    if refused is _NO_IDS:
                        refused = set()
                    refused.add(eid)
        # Empty parts skipped (a step's batch has no updates, messages or state).
        if updates:
            for upd in updates:
                if not _FIELDS.issuperset(upd.fields):
                    raise ValueError(f"unknown execution field(s) {sorted(set(upd.fields) - _FIELDS)}")
        if batch.executions:
            for rec in batch.executions:
                if rec.id in executions:
                    raise ValueError(f"execution {rec.id!r} already exists")
            for rec in batch.executions:
                self._put(clone(rec))
        if updates:
            applied = []
            for upd in updates:
                cur = executions.get(upd.id)
                ok = update_applies(upd, cur, refused)
                if ok and cur is not None:
                    relinked = not _LINKS.isdisjoint(upd.fields)
                    if relinked:
                        self._link(cur, remove=True)
                    for name, value in upd.fields.items():
                        setattr(cur, name, value)
                    self._index(cur)
                    if relinked:
                        self._link(cur)
                applied.append(ok)
        if batch.steps:
            steps = self._steps
            for step in batch.steps:
                if not refused or step.execution_id not in refused:
                    of = steps.get(step.execution_id)
                    if of is None:
                        steps[step.execution_id] = {step.key: step}
                    else:
                        of[step.key] = step
        if batch.events:
            # The batch hands its records over (Storage.commit): stored as they are,
            # and the result's events are the batch's own list.
            events = batch.events if not refused else [e for e in batch.events if e.execution_id not in refused]
            seqs, by_execution = self._event_seqs, self._by_execution
            first = seq = (seqs[-1] if seqs else 0) + 1
            for ev in events:
                ev.seq = seq
                seq += 1
                owner = ev.execution_id
                if owner:
                    mine = by_execution.get(owner)
                    if mine is None:
                        by_execution[owner] = [ev]
                    else:
                        mine.append(ev)
            self._events.extend(events)
            seqs.extend(range(first, seq))
        if batch.messages:
            for msg in batch.messages:
                self._message_seq += 1
                self._messages.setdefault(msg.pipe, []).append(clone(msg, seq=self._message_seq))
        if batch.state:
            for key, value in batch.state.items():
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = _copy(value)
        controls: dict[str, str | None] = {}
        if fences:
            for eid in fences:
                if eid not in refused:
                    controls[eid] = executions[eid].control
        return CommitResult(applied, refused, controls, events)

    def _put(self, rec: ExecutionRecord) -> None:
        known = rec.id in self._executions
        if not known:
            if not self._ids or rec.id > self._ids[-1]:
                self._ids.append(rec.id)  # the usual case: ids grow with time
            else:
                bisect.insort(self._ids, rec.id)
        self._executions[rec.id] = rec
        # `_index`, inline: a new record stored running (the usual case) needs nothing.
        if rec.status in CLAIMABLE:
            self._pending.add(rec.id)
            self._due.add(rec)
        elif known:
            self._pending.discard(rec.id)
        # Most executions have no family (the _LINKS fields, read here without a call).
        if rec.parent_id is not None or rec.root_id is not None or rec.replay_of is not None:
            self._link(rec)

    def _link(self, rec: ExecutionRecord, *, remove: bool = False) -> None:
        """Keep `rec` in (or, with `remove`, take it out of) its lineage sets."""
        for name in _LINKS:
            value = getattr(rec, name)
            if value is None:
                continue
            key = (name, value)
            if not remove:
                self._linked.setdefault(key, set()).add(rec.id)
            elif (members := self._linked.get(key)) is not None:
                members.discard(rec.id)
                if not members:
                    del self._linked[key]

    def _index(self, rec: ExecutionRecord) -> None:
        if rec.status in CLAIMABLE:
            self._pending.add(rec.id)
            self._due.add(rec)
        else:
            self._pending.discard(rec.id)

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        job_names: Sequence[str] | None = None,
        exclude_jobs: Sequence[str] = (),
    ) -> list[ExecutionRecord]:
        now = now_ms()
        out = []
        for rec in self._due.take(now, limit, _wanted(job_names, exclude_jobs)):
            rec.status = "running"
            rec.worker_id = worker_id
            rec.lease_until = now + lease_ms
            rec.token += 1
            if rec.started_at is None:
                rec.started_at = now
            self._pending.discard(rec.id)
            out.append(clone(rec))
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
        return clone(rec) if rec is not None else None

    async def query(self, query: ExecutionQuery) -> list[ExecutionRecord]:
        family = [(n, getattr(query, n)) for n in _LINKS if getattr(query, n) is not None]
        if query.ids is not None or family:
            if query.ids is not None:
                some: Iterable[str] = dict.fromkeys(query.ids)
            else:  # the smallest of the lineage sets the query names: a superset of the matches
                sets = [self._linked.get(key, set()) for key in family]
                smallest: set[str] = min(sets, key=len)
                some = smallest
            candidates = [r for i in some if (r := self._executions.get(i))]
            return [clone(r) for r in sort_and_page([r for r in candidates if matches(r, query)], query)]
        # In id order from the query's end (from its cursor), stopping at a full page.
        newest = query.order == "newest"
        if query.cursor is None:
            ids = reversed(self._ids) if newest else iter(self._ids)
        elif newest:
            ids = reversed(self._ids[: bisect.bisect_left(self._ids, query.cursor)])
        else:
            ids = iter(self._ids[bisect.bisect_right(self._ids, query.cursor) :])
        found = filter(_matcher(query), map(self._executions.__getitem__, ids))
        end = None if query.limit is None else query.offset + query.limit
        return [clone(r) for r in itertools.islice(found, query.offset, end)]

    async def count(self, query: ExecutionQuery) -> dict[str, int]:
        if only_status_and_job(query):  # a tally, without a match call per execution
            jobs = query.job_names
            tally = Counter(r.status for r in self._executions.values() if jobs is None or r.job_name in jobs)
            wanted = query.statuses
            return {s: n for s, n in tally.items() if wanted is None or s in wanted}
        out: dict[str, int] = {}
        for r in self._executions.values():
            if matches(r, query, paging=False):
                out[r.status] = out.get(r.status, 0) + 1
        return out

    async def delete_executions(self, ids: Sequence[str]) -> list[str]:
        gone = [i for i in dict.fromkeys(ids) if (r := self._executions.get(i)) and r.status in TERMINAL]
        for eid in gone:
            self._link(self._executions[eid], remove=True)
            del self._executions[eid]
            del self._ids[bisect.bisect_left(self._ids, eid)]
            self._pending.discard(eid)
            self._steps.pop(eid, None)
            self._by_execution.pop(eid, None)
        if gone:
            dead = set(gone)
            self._events = [e for e in self._events if e.execution_id not in dead]
            self._event_seqs = [e.seq for e in self._events]
        return gone

    async def aggregate(self, query: ExecutionQuery, buckets: TimeBuckets, *, durations: bool = False) -> Aggregate:
        agg = Aggregate()
        fold(self._executions.values(), query, buckets, agg, durations=durations)
        return finish_aggregate(agg)

    async def get_steps(self, execution_id: str) -> list[StepRecord]:
        return self._steps_of(execution_id)

    async def get_steps_many(self, execution_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        return {eid: self._steps_of(eid) for eid in execution_ids}

    def _steps_of(self, execution_id: str) -> list[StepRecord]:
        steps = self._steps.get(execution_id)
        if not steps:  # a claimed execution that never ran: the usual case
            return []
        return sorted((clone(s) for s in steps.values()), key=lambda s: s.seq)

    async def read_events(
        self, after_seq: int = 0, *, limit: int = 1000, execution_id: str | None = None
    ) -> list[EventRecord]:
        if execution_id is not None:
            events = self._by_execution.get(execution_id, [])
            return [clone(e) for e in events if e.seq > after_seq][:limit]
        start = bisect.bisect_right(self._event_seqs, after_seq)
        return [clone(e) for e in self._events[start : start + limit]]

    async def last_event_seq(self) -> int:
        return self._event_seqs[-1] if self._event_seqs else 0

    async def next_due(
        self, job_names: Sequence[str] | None = None, exclude_jobs: Sequence[str] = ()
    ) -> int | None:
        return self._due.earliest(_wanted(job_names, exclude_jobs))

    async def read_messages(
        self, pipe: str, after_seq: int = 0, *, limit: int = 1000
    ) -> list[PipeMessage]:
        return [clone(m) for m in self._messages.get(pipe, []) if m.seq > after_seq][:limit]

    async def last_message_seq(self, pipe: str) -> int:
        msgs = self._messages.get(pipe)
        return msgs[-1].seq if msgs else 0

    async def get_state(self, keys: Sequence[str]) -> dict[str, Any]:
        return {k: _copy(self._state[k]) for k in keys if k in self._state}

    async def list_state(self, prefix: str) -> dict[str, Any]:
        return {k: _copy(v) for k, v in self._state.items() if k.startswith(prefix)}

    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        self._workers[worker_id] = {"id": worker_id, "info": dict(info), "last_heartbeat": now_ms()}

    async def list_workers(self) -> list[dict[str, Any]]:
        return [dict(w) for w in self._workers.values()]

    async def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)


def _wanted(job_names: Sequence[str] | None, exclude: Sequence[str]) -> Callable[[ExecutionRecord], bool]:
    names = None if job_names is None else frozenset(job_names)
    skip = frozenset(exclude)
    return lambda r: (names is None or r.job_name in names) and r.job_name not in skip


def _copy(value: Any) -> Any:
    """An independent copy of a JSON state value (a pickle round trip: far cheaper than
    deepcopy for the long lists a limit's waiters make)."""
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
