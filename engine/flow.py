"""Flow control at run time: concurrency slots, rate windows, throttle and debounce.

Concurrency and throttle gate the *start* of an execution: after a claim, the
runtime takes a slot (or a window start); when it can't, the execution goes back
to pending with the reason and the time worth retrying. Debounce acts when an
execution is *triggered*: a trigger cancels the pending one it supersedes. Every decision is one
compare-and-set on a state key (`Batch.expect`), so it holds across processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CancelledError, error_to_dict
from .ids import now_ms
from .limits import Limit, Timed, resolve_concurrency, resolve_timed, window_admits
from .serialize import load_typed
from .storage.base import Batch, EventRecord, ExecutionQuery, ExecutionRecord
from .transitions import Transition, supersede

if TYPE_CHECKING:
    from .job import Job
    from .runtime import Runtime

_CAS_TRIES = 50


class Gate:
    """The answer of `FlowControl.admit`: run now, or wait until `retry_at` because `reason`."""

    __slots__ = ("ok", "reason", "retry_at")

    def __init__(self, ok: bool, retry_at: int = 0, reason: str | None = None) -> None:
        self.ok, self.retry_at, self.reason = ok, retry_at, reason


OPEN = Gate(True)


class FlowControl:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

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
        """The queue's `concurrency`: executions of all its jobs running at once, in all processes."""
        n = self.runtime.queue.concurrency
        return Limit("queue:" + ",".join(sorted(self.runtime.queue.definitions)), n) if n else None

    # -- concurrency slots and rate windows --------------------------------------------------
    async def take(self, limit: Limit, holder: str, live_id: str) -> Gate:
        """Take a slot of `limit` for `holder` (whose execution is `live_id`)."""
        key = ("slots:" if limit.window_ms is None else "rate:") + limit.key
        for _ in range(_CAS_TRIES):
            state = (await self.storage.get_state([key])).get(key)
            now = now_ms()
            if limit.window_ms is None:
                holders = list((state or {}).get("holders", []))
                if holder in holders:
                    return OPEN
                if len(holders) >= limit.limit:
                    holders = await self._alive(holders)
                    if len(holders) >= limit.limit:
                        return Gate(False, now + self.runtime.slot_retry_ms, f"waiting for a slot: {limit.describe()}")
                new: Any = {"holders": [*holders, holder]}
            else:
                ok, new, retry_at = window_admits(limit, state, now)
                if not ok:
                    return Gate(False, retry_at, f"rate limited: {limit.describe()}")
            result = await self.runtime.committer.commit(Batch(state={key: new}, expect={key: state}))
            if not result.conflict:
                return OPEN
        return Gate(False, now_ms() + self.runtime.slot_retry_ms, f"contended: {limit.describe()}")

    async def _alive(self, holders: list[str]) -> list[str]:
        """Holders whose execution is still running: a crashed, finished, suspended
        or cancelled holder gives its slot back without having to say so."""
        ids = sorted({h.split("|", 1)[0] for h in holders})
        live = {r.id for r in await self.storage.query(ExecutionQuery(ids=ids, statuses=["running"]))}
        return [h for h in holders if h.split("|", 1)[0] in live]

    async def give_back(self, limit: Limit, holder: str) -> None:
        if limit.window_ms is not None:
            return  # a start in a window stays counted for the window
        key = "slots:" + limit.key
        for _ in range(_CAS_TRIES):
            state = (await self.storage.get_state([key])).get(key)
            holders = list((state or {}).get("holders", []))
            if holder not in holders:
                return
            holders.remove(holder)
            new = {"holders": holders} if holders else None
            result = await self.runtime.committer.commit(Batch(state={key: new}, expect={key: state}))
            if not result.conflict:
                self.runtime.kick()
                return

    # -- gates at the start of a claimed execution ----------------------------------------------
    async def admit(self, job: Job, rec: ExecutionRecord, first_start: bool) -> Gate:
        """Throttle and rate windows count starts: only an execution's first start.
        Concurrency slots count what runs: every activation (resumes included)."""
        typed = load_typed(job.options.input, rec.input)
        throttle = resolve_timed(job.name, job.options.throttle, typed, "throttle") if first_start else None
        if throttle is not None:
            gate = await self._throttle(throttle, rec)
            if not gate.ok:
                return gate
        queue_limit = self._queue_limit()
        if queue_limit is not None:
            gate = await self.take(queue_limit, rec.id, rec.id)
            if not gate.ok:
                return gate
        limit = resolve_concurrency(job.name, job.options.concurrency, typed)
        if limit is not None and (limit.window_ms is None or first_start):
            gate = await self.take(limit, rec.id, rec.id)
            if not gate.ok and queue_limit is not None:
                await self.give_back(queue_limit, rec.id)
            return gate
        return OPEN

    async def release(self, job: Job, rec: ExecutionRecord) -> None:
        queue_limit = self._queue_limit()
        if queue_limit is not None:
            await self.give_back(queue_limit, rec.id)
        if job.options.concurrency is None:
            return
        try:
            limit = resolve_concurrency(job.name, job.options.concurrency, load_typed(job.options.input, rec.input))
        except Exception:  # the user's fn(input) failed: admit() reported it already
            return
        if limit is not None:
            await self.give_back(limit, rec.id)

    async def _throttle(self, t: Timed, rec: ExecutionRecord) -> Gate:
        """At most one start per interval per key; `discard` drops what comes too early."""
        key = "throttle:" + t.key
        for _ in range(_CAS_TRIES):
            state = (await self.storage.get_state([key])).get(key)
            now = now_ms()
            if state is not None and state.get("execution") == rec.id:
                return OPEN  # this execution already took its turn (a replay after a crash)
            next_at = int((state or {}).get("next", 0))
            if now < next_at:
                if t.mode == "discard":
                    return Gate(False, -1, f"discarded by throttle ({t.interval_ms} ms for {t.key})")
                return Gate(False, next_at, f"throttled: one start per {t.interval_ms} ms for {t.key}")
            new = {"next": now + t.interval_ms, "execution": rec.id}
            result = await self.runtime.committer.commit(Batch(state={key: new}, expect={key: state}))
            if not result.conflict:
                return OPEN
        return Gate(False, now_ms() + self.runtime.slot_retry_ms, f"contended throttle for {t.key}")

    # -- debounce, when triggered ----------------------------------------------------------------
    async def plan(self, job: Job, rec: ExecutionRecord, typed: Any) -> tuple[Batch, Transition | None]:
        """The writes that trigger `rec`, and the cancelling of the pending execution it supersedes.

        Trailing: `rec` waits `interval` (capped by `timeout` since the first trigger of
        the series); the series' previous pending execution is cancelled with reason
        `debounced` in the same transaction, so only the last input runs. Leading: `rec`
        runs at once unless the window of an earlier start is open; then it behaves as
        trailing. The update on the previous execution only applies while it is still
        pending: one claimed in the meantime runs (it started before this trigger)."""
        trigger = EventRecord(rec.id, job.name, "trigger", {"input": rec.input, "parent_id": rec.parent_id}, rec.created_at)
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
