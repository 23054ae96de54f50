"""Flow control at run time: concurrency slots, rate windows, throttle and debounce.

Concurrency, rate windows and throttle gate the *start* of an execution: the
runtime asks the admission ledger (`slots.Ledger`) for everything the job's
options require at once. Refused, the execution goes back to pending in the
same write, as a waiter: a released slot is handed to the next waiter
(priority, then first come) and wakes it; a rate window or throttle reserves
the waiter's own start time and wakes it then. Debounce acts when an execution
is *triggered*: a trigger cancels the pending one it supersedes. Every decision is a
compare-and-set on the state keys (`Batch.expect`), so it holds across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import slot_keeping
from .errors import CancelledError, error_to_dict
from .event_schema import EventKind
from .ids import now_ms
from .limits import Limit, Timed, resolve_concurrency, resolve_timed
from .peers import Peers
from .serialize import load_typed
from .slots import Decision, Ledger, Request, state_key
from .storage.base import Batch, EventRecord, ExecutionQuery, ExecutionRecord, ExecutionUpdate
from .transitions import Transition, hand_over, supersede

if TYPE_CHECKING:
    from .job import Job
    from .runtime import Runtime


#: A waiting execution is due again this long after it was refused (the safety net
#: for a lost hand-off), at least: `poll_interval` x this, if that is longer.
WAITER_SAFETY_MS = 30_000
_SAFETY_POLLS = 10
#: A step waiting for a slot looks again this often at least (the safety net for a
#: lost notification; on SQLite, how soon a slot another process gives back is seen).
STEP_RECHECK_S = 1.0
#: Waiters kept in memory for the in-process hand-off (beyond: claimed as usual).
_PARKED_MAX = 100_000


class Gate:
    """The answer of `FlowControl.admit`: run now, or wait until `retry_at` because
    `reason`. `parked`: the execution was already put back to pending as a waiter."""

    __slots__ = ("ok", "parked", "reason", "retry_at")

    def __init__(self, ok: bool, retry_at: int = 0, reason: str | None = None, parked: bool = False) -> None:
        self.ok, self.retry_at, self.reason, self.parked = ok, retry_at, reason, parked


OPEN = Gate(True)


class FlowControl:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.peers = Peers(self)
        poll_ms = int(runtime.poll_s * 1000)
        self.ledger = Ledger(
            get_state=lambda keys: self.storage.get_state(keys),
            list_state=lambda prefix: self.storage.list_state(prefix),
            commit=lambda batch: runtime.committer.submit(batch, beside=False),
            running=self._statuses,
            kick=runtime.kick,
            recheck_s=max(STEP_RECHECK_S, runtime.poll_s),
            far_ms=max(WAITER_SAFETY_MS, _SAFETY_POLLS * poll_ms),
            claim_here=self._claim_here,
            claimed_here=self._claimed_here,
            at_once=not runtime.storage.synchronous_commit,
            # Kept keys save their writes (round trips, except on memory) and the decision
            # rounds (on every adapter: a start with room, a release with no one in line).
            keeper=self.peers,
        )
        #: Executions this process parked as waiters of one slot: (job, record, history, that slot's limit).
        self.parked: dict[str, tuple[Job, ExecutionRecord, dict[str, Any], Limit]] = {}
        #: The slot keys each execution admitted here holds, as its admission resolved them:
        #: its release gives back exactly those, without calling the user's fn(input) again.
        self._holds: dict[str, list[str]] = {}
        #: The queue's limit (`_queue_limit`).
        self._queue_lim: Limit | None = None
        #: `_limits` of jobs whose options are not functions of the input.
        self._static_limits: dict[tuple[Job, bool, int | None], tuple[Timed | None, list[Limit]] | None] = {}

    @property
    def storage(self) -> Any:
        return self.runtime.storage

    def gated(self, job: Job) -> bool:
        return (
            job.options.concurrency is not None
            or job.options.throttle is not None
            or self.runtime.queue.concurrency is not None
        )

    def _queue_limit(self) -> Limit | None:
        """The queue's `concurrency`: executions of all its jobs running at once, in all
        processes (made once: asked twice per execution, at its start and its end)."""
        n = self.runtime.queue.concurrency
        if not n:
            return None
        if self._queue_lim is None or self._queue_lim.limit != n:
            self._queue_lim = Limit("queue:" + ",".join(sorted(self.runtime.queue.definitions)), n)
        return self._queue_lim

    async def _statuses(self, ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            query = ExecutionQuery(ids=ids[start : start + 500], statuses=["running", "pending"])
            out.update((r.id, r.status) for r in await self.storage.query(query))
        return out

    # -- in-process hand-off ---------------------------------------------------------------------
    def _claim_here(self, holder: str, now: int) -> ExecutionUpdate | None:
        """The write that claims a granted waiter parked here, if this process can run it now."""
        entry = self.parked.get(holder)
        rt = self.runtime
        if entry is None or not self.peers.alone or rt.closing or entry[0].name in rt.paused_jobs or len(rt.contexts) >= rt.max_active:
            return None
        return hand_over(entry[1], rt.worker_id, now=now, lease_until=now + rt.clock_offset_ms + rt.lease_ms).update

    def _claimed_here(self, holder: str, ok: bool) -> None:
        entry = self.parked.pop(holder, None)
        if entry is None or not ok:
            return
        job, rec, history, limit = entry
        self._hold(rec.id, [limit])
        rt = self.runtime
        now = now_ms()
        hand_over(rec, rt.worker_id, now=now, lease_until=now + rt.clock_offset_ms + rt.lease_ms).apply_to(rec)
        rec.control = None
        rt.run_admitted(job, rec, history)

    def holds_or_parks(self, execution_id: str) -> bool:
        """An execution admitted here holds its slots, or waits parked here."""
        return execution_id in self._holds or execution_id in self.parked

    async def close(self) -> None:
        await self.peers.close()

    # -- step slots ----------------------------------------------------------------------------
    async def acquire_step(self, limit: Limit, holder: str, priority: int) -> None:
        """Wait for a slot of a step's `concurrency` (handed over when one is released)."""
        await self.ledger.acquire_step(limit, holder, priority)

    async def give_back(self, limit: Limit, holder: str) -> None:
        if limit.window_ms is None:
            await self.ledger.release(holder, [state_key(limit)])

    def give_back_nowait(self, limit: Limit, holder: str) -> None:
        """Give back a step's slot without waiting for the write: queued now, so that the
        step's own commit queued right after it shares its transaction (a failed write is
        logged; the next waiter's look at the holders then frees the slot)."""
        if limit.window_ms is None:
            self.ledger.give_back(holder, [state_key(limit)], f"could not give back the step slot of {holder}")

    # -- gates at the start of a claimed execution ----------------------------------------------
    def admit_now(self, job: Job, rec: ExecutionRecord, first_start: bool) -> tuple[Timed | None, list[Limit]] | None:
        """The admission of a claimed execution decided without a round: None when it is
        admitted (nothing to ask; or each limit a slot key kept here with room and no one
        in line: no round, and, claimed already, no write); else what to ask `admit` for.
        Throttle and rate windows count starts: only an execution's first start.
        Concurrency slots count what runs: every activation (resumes included)."""
        self.peers.look()
        gate = self._limits(job, rec, first_start)
        if gate is None:
            return None
        throttle, limits = gate
        if throttle is None and self.ledger.kept:
            keys = slot_keeping.admit(self.ledger, rec.id, limits, stored=True)
            if keys is not None:
                self.parked.pop(rec.id, None)  # as a round's grant: a waiter run by a claim waits no more
                self._hold_keys(rec.id, keys)
                return None
        return gate

    async def admit(
        self,
        job: Job,
        rec: ExecutionRecord,
        wanted: tuple[Timed | None, list[Limit]],
        park: Callable[[int, str], Batch] | None = None,
        history: dict[str, Any] | None = None,
    ) -> Gate:
        """Ask a round for what `admit_now` could not decide. Refused, `park(run_at,
        reason)`'s writes (back to pending) share the decision's write."""
        throttle, limits = wanted
        request = Request(rec.id, (-rec.priority, rec.created_at), limits, throttle, park)
        if history is not None:
            self._keep_parked(request, job, rec, history)
        decision: Decision = await self.ledger.request(request)
        if not decision.parked:
            self.parked.pop(rec.id, None)
        if decision.ok:
            self._hold(rec.id, limits)
            return OPEN
        return Gate(False, decision.at, decision.reason, decision.parked)

    def keeps_at_creation(self, job: Job) -> bool:
        """Whether a new execution of `job` may be admitted as it is created, in this
        process's memory (`admit_kept_now`; any adapter): a limit, no throttle."""
        return self.gated(job) and job.options.throttle is None

    def admits_at_creation(self, job: Job) -> bool:
        """Whether a new execution of `job` is admitted in the write that creates it
        (`admit_new`): not with a throttle (in discard mode it would have to be created
        cancelled), nor on a storage that commits in memory (no round trip to save, and
        `start()` would return after the decision, a round later, instead of at once: a
        producer of sequential starts would go in lock-step with the admission rounds)."""
        return self.keeps_at_creation(job) and not self.storage.synchronous_commit

    async def admit_new(self, job: Job, rec: ExecutionRecord, trigger: EventRecord) -> Gate | None:
        """Admission of an execution this process creates, claimed, to run here: the
        decision, the slot state and the record itself are one write. Refused, it is
        created pending (a waiter) instead, until the grant or `retry_at`. None: created
        claimed, undecided (the user's fn(input) raised: `admit` reports it as it runs).
        Asked only for what `admit_kept_now` did not admit (`Creation.create_many`)."""
        self.peers.look()
        request, settle = self._new_request(job, rec, trigger)
        return settle(await self.ledger.request(request))

    def admit_kept_now(self, job: Job, rec: ExecutionRecord) -> list[str] | None:
        """Admit new execution `rec`, to be stored claimed by this process, at once: its
        keys are kept here with room and no one in line, so nothing is decided in a round
        nor written of it. Returns the keys it holds (the caller then stores `rec` and
        reports with `created_kept`), or None: decide with a request."""
        self.peers.look()
        if not self.ledger.kept:
            return None
        try:
            gate = self._limits(job, rec, True)
        except Exception:  # the request reports it
            return None
        if gate is None or gate[0] is not None:
            return None
        keys = slot_keeping.admit(self.ledger, rec.id, gate[1])
        if keys is not None:
            rec.run_at, rec.wait_reason = rec.created_at, None
        return keys

    def created_kept(self, execution_id: str, keys: list[str], stored: bool) -> None:
        """The write creating an execution `admit_kept_now` admitted is done: it holds its
        keys (released as it ends), or, not stored, gives them back."""
        self.ledger.settle_holder(execution_id)
        if stored:
            self._hold_keys(execution_id, keys)
        else:
            self.ledger.give_back(execution_id, keys, f"could not give back the slot of execution {execution_id}")

    async def admit_new_many(
        self, job: Job, new: Sequence[tuple[ExecutionRecord, EventRecord]]
    ) -> list[Gate | BaseException | None]:
        """`admit_new` of each (a bulk start), decided together in one round: one write
        for them all instead of one decision, batch and commit each."""
        self.peers.look()
        pairs = [self._new_request(job, rec, trigger) for rec, trigger in new]
        decisions = await self.ledger.request_many([request for request, _ in pairs])
        return [d if isinstance(d, BaseException) else settle(d) for (_, settle), d in zip(pairs, decisions, strict=True)]

    def _new_request(
        self, job: Job, rec: ExecutionRecord, trigger: EventRecord
    ) -> tuple[Request, Callable[[Decision], Gate | None]]:
        """The ledger request admitting new execution `rec`, and what turns its decision into the gate."""
        try:
            gate = self._limits(job, rec, True)
            undecided = False
        except Exception:
            gate, undecided = None, True
        claimed = (rec.status, rec.worker_id, rec.token, rec.started_at, rec.lease_until)

        def create(decision: Decision) -> Batch:
            # Called per round attempt (a conflict decides again): the record follows the decision.
            rec.status, rec.worker_id, rec.token, rec.started_at, rec.lease_until = claimed
            rec.run_at, rec.wait_reason = rec.created_at, None
            events = [trigger]
            if not decision.ok:
                rec.status, rec.worker_id, rec.token, rec.started_at, rec.lease_until = "pending", None, 0, None, None
                rec.run_at, rec.wait_reason = decision.at, decision.reason
                events.append(EventRecord(rec.id, job.name, EventKind.QUEUED, {"reason": decision.reason, "retry_at": decision.at}, rec.created_at))
            return Batch(executions=[rec], events=events)

        throttle, limits = gate if gate is not None else (None, [])
        request = Request(rec.id, (-rec.priority, rec.created_at), limits, throttle, carry=create)
        if not undecided:
            self._keep_parked(request, job, rec, {})

        def settle(decision: Decision) -> Gate | None:
            if not decision.parked:
                self.parked.pop(rec.id, None)
            if undecided:
                return None
            if decision.ok:
                self._hold(rec.id, limits)
                return OPEN
            return Gate(False, decision.at, decision.reason, decision.parked)

        return request, settle

    def _limits(self, job: Job, rec: ExecutionRecord, first_start: bool) -> tuple[Timed | None, list[Limit]] | None:
        """What admitting `rec` asks for (rate windows first: a start waiting for its
        window holds no slot meanwhile), or None: nothing. Options that are not
        functions of the input resolve the same every time: kept per job (callers
        only read the list)."""
        opts = job.options
        if callable(opts.concurrency) or callable(opts.throttle):
            return self._resolve_limits(job, rec, first_start)
        cache_key = (job, first_start, self.runtime.queue.concurrency)
        if cache_key not in self._static_limits:
            self._static_limits[cache_key] = self._resolve_limits(job, rec, first_start)
        return self._static_limits[cache_key]

    def _resolve_limits(self, job: Job, rec: ExecutionRecord, first_start: bool) -> tuple[Timed | None, list[Limit]] | None:
        opts = job.options
        # The input is typed only for an option that is a function of it (a queue limit alone needs none).
        typed = load_typed(opts.input, rec.input) if callable(opts.concurrency) or callable(opts.throttle) else None
        throttle = resolve_timed(job.name, opts.throttle, typed, "throttle") if first_start else None
        limits: list[Limit] = []
        queue_limit = self._queue_limit()
        if queue_limit is not None:
            limits.append(queue_limit)
        limit = resolve_concurrency(job.name, opts.concurrency, typed)
        if limit is not None and (limit.window_ms is None or first_start):
            limits.append(limit)
        if throttle is None and not limits:
            return None
        limits.sort(key=lambda lim: lim.window_ms is None)
        return throttle, limits

    def _keep_parked(self, request: Request, job: Job, rec: ExecutionRecord, history: dict[str, Any]) -> None:
        """A waiter of one slot is kept here for the in-process hand-off; kept before the
        decision, as a grant may come in the round right after it."""
        single = request.throttle is None and len(request.limits) == 1 and request.limits[0].window_ms is None
        if single and len(self.parked) < _PARKED_MAX:
            self.parked[rec.id] = (job, rec, history, request.limits[0])

    def _hold(self, execution_id: str, limits: Sequence[Limit]) -> None:
        """Remember the slots (not rate starts: they stay counted) an admission took."""
        self._hold_keys(execution_id, [state_key(lim) for lim in limits if lim.window_ms is None])

    def _hold_keys(self, execution_id: str, keys: list[str]) -> None:
        if len(self._holds) >= _PARKED_MAX:  # releases that never came (a lost storage): resolved again then
            self._holds.clear()
        self._holds[execution_id] = keys

    async def release(self, job: Job, rec: ExecutionRecord) -> None:
        fut = self.release_nowait(job, rec)
        if fut is not None:
            await fut

    def release_nowait(self, job: Job, rec: ExecutionRecord, quiet: bool = False) -> asyncio.Future[Decision] | None:
        """Give back the execution's slots, queued at once (see `Ledger.release_nowait`).
        `quiet`: nobody awaits it (`Ledger.give_back`; None is returned)."""
        held = self._holds.pop(rec.id, None)
        keys = held if held is not None else self._slot_keys(job, rec)
        if not keys or (self.ledger.kept and slot_keeping.release(self.ledger, rec.id, keys)):
            return None
        if quiet:
            self.ledger.give_back(rec.id, keys, f"could not give back the slot of execution {rec.id}")
            return None
        return self.ledger.release_nowait(rec.id, keys)

    def _slot_keys(self, job: Job, rec: ExecutionRecord) -> list[str]:
        """The slot keys `rec` holds, resolved again from the job's options (an execution
        admitted before `_holds` knew it, e.g. handed over by the dispatcher's claim)."""
        keys: list[str] = []
        queue_limit = self._queue_limit()
        if queue_limit is not None:
            keys.append(state_key(queue_limit))
        if job.options.concurrency is not None:
            try:
                limit = resolve_concurrency(job.name, job.options.concurrency, load_typed(job.options.input, rec.input))
            except Exception:  # the user's fn(input) failed: admit() reported it already
                limit = None
            if limit is not None and limit.window_ms is None:
                keys.append(state_key(limit))
        return keys

    # -- debounce, when triggered ----------------------------------------------------------------
    async def plan(self, job: Job, rec: ExecutionRecord, typed: Any) -> tuple[Batch, Transition | None]:
        """The writes that trigger `rec`, and the cancelling of the pending execution it supersedes.

        Trailing: `rec` waits `interval` (capped by `timeout` since the first trigger of
        the series); the series' previous pending execution is cancelled with reason
        `debounced` in the same transaction, so only the last input runs. Leading: `rec`
        runs at once unless the window of an earlier start is open; then it behaves as
        trailing. The update on the previous execution only applies while it is still
        pending: one claimed in the meantime runs (it started before this trigger)."""
        trigger = EventRecord(rec.id, job.name, EventKind.TRIGGER, {"input": rec.input, "parent_id": rec.parent_id}, rec.created_at)
        d = resolve_timed(job.name, job.options.debounce, typed, "debounce")
        if d is None:
            return Batch(executions=[rec], events=[trigger]), None
        key = "debounce:" + d.key
        state = (await self.storage.get_state([key])).get(key)
        now = now_ms()
        first = int(state["first"]) if state is not None else now
        in_series = state is not None and (d.timeout_ms is None or now < first + d.timeout_ms)
        if d.mode == "leading" and not (in_series and now < int(state.get("until", 0))):
            new = {"execution": rec.id, "first": now, "until": now + d.interval_ms}
            return Batch(executions=[rec], events=[trigger], state={key: new}, expect={key: state}), None
        if not in_series:
            first = now
        rec.run_at = now + d.interval_ms if d.timeout_ms is None else min(now + d.interval_ms, first + d.timeout_ms)
        rec.wait_reason = f"debounced ({d.mode}, {d.interval_ms} ms)"
        new = {"execution": rec.id, "first": first, "until": rec.run_at}
        batch = Batch(executions=[rec], events=[trigger], state={key: new}, expect={key: state})
        previous = await self.storage.get_execution(state["execution"]) if in_series else None
        if previous is None or previous.status != "pending":
            return batch, None
        error = error_to_dict(CancelledError(f"execution {previous.id} was debounced by {rec.id}", "debounced"))
        change = supersede(previous, by=rec.id, error=error, now=now)
        batch.updates.append(change.update)
        return batch, change

    async def debounced(self, job: Job, change: Transition, by: ExecutionRecord) -> None:
        """After the commit that applied `change` (cancelling the execution `by`
        supersedes): its event, hooks and waiters."""
        await self.runtime.committer.commit(Batch(events=change.events))
        rec = await self.storage.get_execution(change.update.id)
        if rec is None:
            return
        await self.runtime.settled_hooks(job, rec, None, None, "debounced")
        self.runtime.resolve(rec)
