"""The admission ledger: concurrency slots and rate starts, decided in rounds, handed over on release.

Every take, release and rate reservation of this process goes through one
`Ledger`. A round decides requests on the state this process last wrote or
read of their keys, and writes one compare-and-set batch (`Batch.expect`, on every
key it decided on, also those it leaves unchanged):
at once, in the requester's step, when it needs no read (its write then joins
the commit the requester queues right after it, e.g. a release and the end
of its execution); else in a round of everything that queued meanwhile. The
next round does not wait for a write in flight: it is decided on the state
that write leaves, and expects exactly that (the committer puts such a chain
in one transaction). A conflict means another process wrote first: the round
and those decided on it are decided again on fresh state. So a limit is never
exceeded, across processes too, and N executions arriving at once cost a
couple of transactions, not N.

Slot state, per key: `{"limit": n, "holders": [...], "waiters": [[-priority,
seq, holder], ...]}`, waiters in admission order (priority, then arrival); stored as
a head and one row per waiter (`slot_lines.py`), so a take or a release writes what
it changes, not the whole line.
A slot is never simply freed while someone waits: the round that releases it
gives it to the head waiter in the same write.

- A waiting *execution* (holder = its id) was put back to pending by the
  round that refused it (same write), due only at a distant safety time. The
  grant makes it due now (`run_at`): this process's dispatcher is kicked; in
  other processes the adapter's notification (LISTEN/NOTIFY, pub/sub) wakes
  theirs, and on SQLite their next poll claims it. Claimed, it finds itself
  among the holders and starts without another write.
- A waiting *step* (holder = `execution id|step key`) awaits a future in its
  process: resolved by the round here, or by a re-check when the adapter
  notifies that another process wrote slot state; a re-check every
  `recheck_s` is the safety net for a lost notification.

Holders that stopped without giving back (a crash) are found by asking the
storage which of them still run; that question is asked only when a key is
full and a newcomer or a safety-net re-check wants in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import slot_keeping, slot_lines
from .ids import now_ms
from .limits import Limit
from .slot_keeping import Keeper
from .slot_requests import (
    Check,
    Decision,
    Release,
    Request,
    Round,
    copy_state,
    decide,
    extend,
    fail,
    fill,
    keys_of,
    leave,
    state_key,
)
from .storage.base import Batch, CommitResult, ExecutionUpdate
from .transitions import due_now

__all__ = ["Decision", "Ledger", "Request", "state_key"]

#: Rounds decided again after a compare-and-set conflict before giving up.
_CAS_TRIES = 50
#: Rounds whose write is in flight at once: the next round is decided on the state the
#: one before writes (its compare-and-set expects exactly that, so a round that loses
#: makes the ones after it lose too, and all are decided again).
_IN_FLIGHT = 4
#: Rounds in flight beyond which a request waits for the next round instead of being
#: decided at once (the chain of writes that one lost write would undo).
_IN_FLIGHT_NOW = 1000
#: State keys whose last value this process remembers.
_CACHE_MAX = 10_000
#: How a refused request waits: "slot" (a holder must give one back), or "rate"
#: (until the reserved start time).
Wait = str


class Ledger:
    def __init__(
        self,
        get_state: Callable[[list[str]], Awaitable[dict[str, Any]]],
        list_state: Callable[[str], Awaitable[dict[str, Any]]],
        commit: Callable[[Batch], asyncio.Future[CommitResult]],
        running: Callable[[list[str]], Awaitable[dict[str, str]]],
        kick: Callable[[], None],
        recheck_s: float,
        far_ms: int,
        claim_here: Callable[[str, int], ExecutionUpdate | None] = lambda _holder, _now: None,
        claimed_here: Callable[[str, bool], None] = lambda _holder, _ok: None,
        at_once: bool = True,
        keeper: Keeper | None = None,
    ) -> None:
        self._commit, self._running, self._kick = commit, running, kick
        #: Slot heads as stored (their holders; the lines stay in their rows), and the
        #: whole state of keys, each slot's line read from its rows (written by `_send`:
        #: slot_lines.py).
        self._get_heads = get_state
        self._get_state: Callable[[list[str]], Awaitable[dict[str, Any]]] = lambda keys: slot_lines.read(
            get_state, list_state, keys
        )
        #: In-process hand-off: a granted execution parked by this process is claimed by
        #: the grant's own write (`claim_here` gives that update, or None), and then run
        #: at once (`claimed_here`): no claim round trip, no poll.
        self._claim_here, self._claimed_here = claim_here, claimed_here
        #: Safety net: a waiting step re-checks this often; a waiting execution is due this much later.
        self.recheck_s, self.far_ms = recheck_s, far_ms
        #: Decide a request at once when it needs no read (`_now`): for a storage whose
        #: commits are round trips. On one that commits in memory, a round of all that
        #: queued meanwhile costs less (one write, one copy of the state, for many).
        self.at_once = at_once
        #: A request was decided at once in this turn of the loop: the requests that
        #: come in the same turn wait for one round together (`_submit`).
        self._burst = False
        self._ops: list[Request | Release | Check] = []
        #: Ops of rounds that lost, to decide again first (in the order they came).
        self._retry: list[Request | Release | Check] = []
        self._task: asyncio.Task[None] | None = None
        #: Rounds whose write is in flight, oldest first.
        self._flight: list[asyncio.Future[CommitResult]] = []
        #: Keys to read afresh: a round that wrote them lost, or failed.
        self._stale: set[str] = set()
        #: Holders admitted by writes still in flight (count per holder).
        self._unsettled: dict[str, int] = {}
        #: Keys the round being decided read afresh.
        self._fresh: set[str] = set()
        #: Step waiters of this process: holder -> future (True: granted, False: re-check).
        self._local: dict[str, asyncio.Future[bool]] = {}
        #: The state key each of those waits on.
        self._local_keys: dict[str, str] = {}
        self._look: asyncio.Task[None] | None = None
        #: A notification came while `_look` was reading: it reads once more.
        self._look_more = False
        #: The step waiters' next safety-net re-check (`_recheck`), while any waits.
        self._tick: asyncio.TimerHandle | None = None
        #: Key -> the value this process last wrote or read (None: absent).
        self._cache: dict[str, Any] = {}
        #: Key -> when its holders were last checked for liveness.
        self._checked: dict[str, int] = {}
        #: Rounds written (tests and benchmarks count them).
        self.rounds = 0
        #: Slot keys this process keeps in memory while it is alone (`slot_keeping.py`):
        #: key -> their whole state (None: empty); the storage holds a marker meanwhile.
        self.kept: dict[str, Any] = {}
        self.keeper = keeper
        #: Key -> when taking it may be tried again (a take lost to another writer).
        self._no_take: dict[str, int] = {}
        #: Set while the kept keys are being given back: every op waits for a round after it.
        self._letting: asyncio.Future[None] | None = None

    # -- the requests ----------------------------------------------------------------------
    async def request(self, req: Request) -> Decision:
        req.fut = asyncio.get_running_loop().create_future()
        self._submit(req)
        if req.commit is not None and not req.fut.done():
            # Woken by the write itself (its delivery is the callback before ours), not a
            # step later by the decision: what the caller queues next meets the same commit.
            try:
                await req.commit
            except Exception:  # delivered as the decision's exception
                pass
        return await req.fut

    async def request_many(self, reqs: list[Request]) -> list[Decision | BaseException]:
        """Requests decided together in one round, one write (a bulk creation): not at
        once one by one, which would cost a decision, a batch and a commit each."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Decision]] = [loop.create_future() for _ in reqs]
        for req, fut in zip(reqs, futs, strict=True):
            req.fut = fut
        self._queue(reqs)
        return await asyncio.gather(*futs, return_exceptions=True)

    async def release(self, holder: str, keys: list[str]) -> None:
        await self.release_nowait(holder, keys)

    def release_nowait(self, holder: str, keys: list[str]) -> asyncio.Future[Decision]:
        """Queue the release now (so that its write can share the transaction of a
        commit queued right after it); the future resolves once it is written."""
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._submit(Release(holder, keys, fut))
        return fut

    def give_back(self, holder: str, keys: list[str], warn: str) -> None:
        """`release_nowait` that nobody awaits: no future (nor a callback on it, a loop
        handle per release); a failed write is logged with `warn`."""
        self._submit(Release(holder, keys, warn=warn))

    async def acquire_step(self, limit: Limit, holder: str, priority: int) -> None:
        """Wait until `holder` holds a slot of `limit`, in this process's memory (a
        step waits inside its running handler). Cancelling gives the place back."""
        order = (-priority, now_ms())
        recheck = False
        try:
            while True:
                fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._local[holder] = fut
                self._local_keys[holder] = state_key(limit)
                decision = await self.request(Request(holder, order, (limit,), recheck=recheck))
                if decision.ok:
                    return
                if self._tick is None:
                    self._tick = asyncio.get_running_loop().call_later(self.recheck_s, self._recheck)
                if await fut:
                    return
                recheck = True
        except BaseException:
            self._local.pop(holder, None)
            self._local_keys.pop(holder, None)
            await asyncio.shield(self.release(holder, [state_key(limit)]))
            raise
        finally:
            if self._local.get(holder) is fut:
                del self._local[holder]
                self._local_keys.pop(holder, None)

    # -- keys kept in memory (slot_keeping.py) ------------------------------------------------
    @property
    def keeps(self) -> bool:
        return bool(self.kept)

    async def let_go(self) -> None:
        """Give the kept keys back to the storage (another process appeared, or this one
        closes): their holders and waiters written as a shared key's, in one round."""
        self.begin_let_go()
        if self._letting is not None:
            await asyncio.shield(self._letting)

    def begin_let_go(self) -> None:
        """`let_go` without waiting: from now on nothing is decided on the kept keys (every
        request waits for a round after the give-back)."""
        if self.kept and self._letting is None:
            self._letting = asyncio.get_running_loop().create_future()
            self._queue([])

    def idle(self) -> bool:
        """Nothing queued, being decided or given back: a decision made now comes in order."""
        return not (self._ops or self._retry or self._letting is not None or (self._task is not None and not self._task.done()))

    def settle_holder(self, holder: str) -> None:
        """A write that admits `holder` is done (or failed): it no longer counts as alive
        for that write's sake (`_drop_dead`)."""
        n = self._unsettled.get(holder, 0) - 1
        if n > 0:
            self._unsettled[holder] = n
        else:
            self._unsettled.pop(holder, None)

    def _may_take(self, key: str) -> bool:
        """Whether a round should try to keep `key` in memory now: a slot key whose
        holders and waiters (as last seen here) are all of this process, while this
        process is alone (the keeper says)."""
        if key in self.kept or not key.startswith("slots:") or self.keeper is None:
            return False
        return (
            self.keeper.is_alone()
            and self._no_take.get(key, 0) <= now_ms()
            and slot_keeping.takeable(self.keeper, self._cache.get(key))
        )

    def _recheck(self) -> None:
        """The safety net's look, one timer for all step waiters (not a timeout each): every
        waiter asks again, and so has its key's holders checked, within `recheck_s`."""
        self._tick = None
        for fut in self._local.values():
            if not fut.done():
                fut.set_result(False)

    def on_wakeup(self) -> None:
        """Another process may have handed a slot to a step waiting here: one read of
        the keys they wait on (coalesced: notifications may come in bursts)."""
        if not self._local:
            return
        if self._look is not None and not self._look.done():
            # Its read may have begun before the write this notification announces: one
            # more read after it (dropping the notification lost a grant until the safety net).
            self._look_more = True
            return
        self._look = asyncio.create_task(self._look_again(), name="dq-admission-look")

    async def _look_again(self) -> None:
        while True:
            self._look_more = False
            await asyncio.sleep(0)  # let a burst of notifications arrive first
            try:
                states = await self._get_heads(sorted(set(self._local_keys.values())))  # holders only
            except Exception:  # the safety-net re-check will look again
                return
            for holder, key in list(self._local_keys.items()):
                fut = self._local.get(holder)
                if fut is not None and not fut.done() and holder in (states.get(key) or {}).get("holders", ()):
                    fut.set_result(True)
            if not self._look_more or not self._local:
                return

    def _submit(self, op: Request | Release | Check) -> None:
        # At once: its write joins the commit its caller queues next (a release, its
        # execution's end). But the requests that follow one decided at once in the same
        # turn of the loop (a burst: `gather` of starts, the step waiters one commit
        # woke) are decided in one round together: one state copy, decision pass and
        # batch for them all instead of one each. A request's write has no commit of its
        # caller to join (a new execution's creation is carried by it).
        if self.at_once and not (self._burst and type(op) is Request) and self._now(op):
            if type(op) is Request and not self._burst:
                self._burst = True
                asyncio.get_running_loop().call_soon(self._turn_over)
            return
        self._queue([op])

    def _turn_over(self) -> None:
        self._burst = False

    def _queue(self, ops: Sequence[Request | Release | Check]) -> None:
        """`ops` for the next round, started unless one is being decided."""
        self._ops.extend(ops)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dq-admission")

    async def _run(self) -> None:
        while self._ops or self._retry or self._letting is not None:
            if self._letting is not None:
                await slot_keeping.give_back_all(self)
                continue
            ops, self._ops, self._retry = [*self._retry, *self._ops], [], []
            try:
                await self._round(ops)
            except BaseException as exc:
                fail(ops, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            while len(self._flight) >= _IN_FLIGHT:
                await asyncio.wait([self._flight[0]])

    # -- one round ---------------------------------------------------------------------------
    async def _round(self, ops: list[Request | Release | Check]) -> None:
        """Decide `ops` and send the round's write; its outcome is delivered once it is
        committed (`_settle`), while the next round is decided on the state it writes."""
        keys = keys_of(ops)
        checks = {k for op in ops if isinstance(op, Check) for k in op.keys}
        if self.keeper is not None and self._letting is None:
            await slot_keeping.take(self, [k for k in keys if self._may_take(k)], ops)
        while True:
            before = await self._states(keys)
            work = {k: copy_state(before.get(k)) for k in keys}
            rnd = Round(now_ms())
            await self._drop_dead(work, rnd, self._suspects(ops, work, rnd, checks))
            decisions, batch, changed = self._decide_all(ops, work, before, rnd)
            shared = [k for k in keys if k not in self.kept]
            if shared and changed.keys().isdisjoint(shared):
                # A decision that writes nothing has no compare-and-set to check it: it is
                # only taken on fresh state, with no write of ours in flight (a kept key's
                # state is this process's own: always fresh).
                if self._flight:
                    await asyncio.wait(list(self._flight))
                    continue
                if not self._fresh.issuperset(shared):
                    self._stale.update(shared)
                    continue
            break
        self._send(ops, decisions, batch, changed, before, rnd, keys)

    def _now(self, op: Request | Release | Check) -> bool:
        """Decide `op` at once, in the caller's step, when nothing needs a read: no round
        is being decided, its keys are known here, and no holder is to be suspected. Its
        write then joins the transaction of what the caller queues right after it (a
        release, the end of the execution; an admission, the step before it)."""
        if not self.idle():
            return False
        if len(self._flight) >= _IN_FLIGHT_NOW or isinstance(op, Check):
            return False
        keys = keys_of([op])
        if self._stale and not self._stale.isdisjoint(keys):
            return False
        kept = self.kept
        if self.keeper is not None and type(op) is Request and any(self._may_take(k) for k in keys):
            return False  # a round takes the key first
        try:
            before = {}
            for k in keys:
                value = kept[k] if k in kept else self._cache.setdefault(k, None)
                if value is not None:
                    before[k] = value
            work = {k: copy_state(before.get(k)) for k in keys}
            rnd = Round(now_ms())
            if isinstance(op, Request) and self._suspects([op], work, rnd, set()):  # a release suspects no one
                return False
            decisions, batch, changed = self._decide_all([op], work, before, rnd)
            shared = [k for k in keys if k not in kept]
            if shared and changed.keys().isdisjoint(shared):
                return False
            self._send([op], decisions, batch, changed, before, rnd, keys)
        except Exception as exc:  # e.g. the user's fn(input) raised: the requester gets it
            self._stale.update(keys)
            fail([op], exc)
        return True

    def _decide_all(
        self, ops: list[Request | Release | Check], work: dict[str, Any], before: dict[str, Any], rnd: Round
    ) -> tuple[list[Decision | None], Batch, dict[str, Any]]:
        decisions: list[Decision | None] = []
        batch = Batch()
        for op in ops:
            if isinstance(op, Check):
                decisions.append(None)
                continue
            if isinstance(op, Release):
                for key in op.keys:
                    leave(work, key, op.holder, rnd)
                decisions.append(None)
                continue
            decision = decide(op, work, rnd, self.far_ms)
            if op.carry is not None:
                decision.parked = not decision.ok and not decision.discard
                extend(batch, op.carry(decision))
            elif not decision.ok and not decision.discard and op.park is not None:
                decision.parked = True
                extend(batch, op.park(decision.at, decision.reason or ""))
            decisions.append(decision)
        changed = {k: v for k, v in work.items() if v != before.get(k)}
        return decisions, batch, changed

    def _send(
        self,
        ops: list[Request | Release | Check],
        decisions: list[Decision | None],
        batch: Batch,
        changed: dict[str, Any],
        before: dict[str, Any],
        rnd: Round,
        keys: list[str],
    ) -> asyncio.Future[CommitResult] | None:
        """Send the round's write (None: it writes nothing; delivered at once)."""
        own = {op.holder for op, d in zip(ops, decisions, strict=True) if isinstance(op, Request) and d and d.ok}
        # Most rounds (a start decided at once, a release nobody waits on) grant nothing.
        grants = [(k, h) for k, h in rnd.granted if h not in own] if rnd.granted else []
        jobs = [h for _, h in grants if "|" not in h] if grants else []
        direct: set[str] = set()
        for holder in jobs:
            update = self._claim_here(holder, rnd.now)
            if update is None:
                update = due_now(holder, now=rnd.now).update
            else:
                direct.add(holder)
            batch.updates.append(update)
        if self.kept:
            changed, keys = slot_keeping.keep(self.kept, changed, keys)
        # A grant of a kept key writes nothing of it, but is still delivered once the
        # commit its caller queues next (the holder's end, its step) is done, as a
        # shared key's hand-over: the empty batch joins that commit.
        if not changed and not batch and not grants:
            self._deliver(ops, decisions, grants, jobs, direct, CommitResult())
            return None
        # The compare-and-set covers every key the round decided on, not only those it
        # changes: a refusal that changes nothing (already in line) was decided on that
        # key's state too, and its park must not be written if another process granted
        # the slot meanwhile.
        slot_lines.write(batch, changed, before, keys, rnd)
        self._cache.update(changed)  # the next round is decided on what this one writes
        for k in changed:
            if before.get(k) is None:  # found empty: none of its holders to suspect yet
                self._checked.setdefault(k, rnd.now)
        # Holders this write admits are alive whatever the storage says until it is
        # committed (a new execution is only created by it).
        admitted = [*own, *(h for _, h in grants)] if grants else list(own)
        unsettled = self._unsettled
        for h in admitted:
            unsettled[h] = unsettled.get(h, 0) + 1
        written = _Written(ops, decisions, grants, jobs, direct, changed, before, rnd.now, admitted, keys)
        # Queued with the storage at once: a commit queued right after joins its transaction.
        commit = self._commit(batch)
        if commit.done():  # a synchronous adapter: delivered without a task in between
            self._settled(commit, written)
            return commit
        self._flight.append(commit)
        commit.add_done_callback(lambda done: self._settle(done, written))
        for op in ops:
            if isinstance(op, Request):
                op.commit = commit
        return commit

    def _settle(self, commit: asyncio.Future[CommitResult], w: _Written) -> None:
        self._flight.remove(commit)
        self._settled(commit, w)

    def _settled(self, commit: asyncio.Future[CommitResult], w: _Written) -> None:
        for h in w.admitted:
            self.settle_holder(h)
        exc = asyncio.CancelledError() if commit.cancelled() else commit.exception()
        if exc is not None or commit.result().conflict:
            self._stale.update(w.keys)
            for k in w.changed:  # its holders were not all ours after all
                if w.before.get(k) is None and self._checked.get(k) == w.now:
                    del self._checked[k]
        if exc is not None:
            fail(w.ops, exc)
            return
        result = commit.result()
        if result.conflict:  # another process wrote first (or a round before this one lost)
            again = [op for op in w.ops if op.tries < _CAS_TRIES]
            for op in w.ops:
                op.tries += 1
                if op.tries > _CAS_TRIES and op.fut is not None and not op.fut.done():
                    op.fut.set_result(Decision(False, now_ms() + 250, "contended: the limit's state kept changing"))
                elif op.tries > _CAS_TRIES:
                    fail([op], RuntimeError("the limit's state kept changing"))
            self._retry.extend(again)
            if again and (self._task is None or self._task.done()):
                self._task = asyncio.create_task(self._run(), name="dq-admission")
            return
        self.rounds += 1
        self._deliver(w.ops, w.decisions, w.grants, w.jobs, w.direct, result)

    async def _states(self, keys: list[str]) -> dict[str, Any]:
        """The state of `keys`: this process's last write or read of each (the
        compare-and-set catches any other process's write since), else read. A key never
        seen here is taken as absent without a read: most are (a limit's first use), and
        the compare-and-set that expects it absent says otherwise (then it is read)."""
        self._fresh = set()
        kept = self.kept
        stale = [k for k in keys if k in self._stale and k not in kept]
        if stale:
            fresh = await self._get_state(stale)
            for k in stale:
                self._cache[k] = fresh.get(k)
                self._stale.discard(k)
            self._fresh = set(stale)
        for k in keys:
            if k not in self._cache and k not in kept:
                self._cache[k] = None
        if len(self._cache) > _CACHE_MAX and not self._flight:
            self._cache = {k: self._cache[k] for k in keys if k in self._cache}
        out = {}
        for k in keys:
            value = kept[k] if k in kept else self._cache[k]
            if value is not None:
                out[k] = value
        return out

    def _deliver(
        self,
        ops: list[Request | Release | Check],
        decisions: list[Decision | None],
        grants: list[tuple[str, str]],
        jobs: list[str],
        direct: set[str],
        result: CommitResult,
    ) -> None:
        for op, decision in zip(ops, decisions, strict=True):
            if op.fut is not None and not op.fut.done():
                op.fut.set_result(decision or Decision(True))
        # Only the grant updates' outcomes follow the park updates in `applied`.
        applied = result.applied[len(result.applied) - len(jobs) :] if jobs else []
        for holder, ok in zip(jobs, applied, strict=True):
            if holder in direct:
                self._claimed_here(holder, ok)
            if not ok:  # cancelled, paused or claimed meanwhile: if it no longer runs, its slot goes on
                self._submit(Check([k for k, h in grants if h == holder]))
        if len(direct) < len(jobs):
            self._kick()
        # A step waiter whose future is already done is between two looks (a re-check
        # or a timeout): its next request finds the slot; a cancelled one gives it back.
        for _key, holder in grants:
            fut = self._local.get(holder) if "|" in holder else None
            if fut is not None and not fut.done():
                fut.set_result(True)

    def _suspects(
        self, ops: list[Request | Release | Check], work: dict[str, Any], rnd: Round, checks: set[str]
    ) -> dict[str, list[str]]:
        """Key -> holders to ask about: of full keys a request waits on (at most every
        `recheck_s`, or when it asks again), and of `checks`."""
        suspects: dict[str, list[str]] = {
            k: list(work[k]["holders"]) for k in checks if isinstance(work.get(k), dict) and work[k].get("holders")
        }
        for op in ops:
            if not isinstance(op, Request):
                continue
            for lim in op.limits:
                key = state_key(lim)
                st = work.get(key)
                if lim.window_ms is not None or not st or op.holder in st.get("holders", []):
                    continue
                if len(st["holders"]) < lim.limit:
                    continue
                stale = rnd.now - self._checked.get(key, 0) > self.recheck_s * 1000
                if op.recheck or stale:
                    suspects[key] = list(st["holders"])
        return suspects

    async def _drop_dead(self, work: dict[str, Any], rnd: Round, suspects: dict[str, list[str]]) -> None:
        """Free the slots of holders that no longer run (crashed, or stopped without giving back)."""
        if not suspects:
            return
        ids = sorted({h.split("|", 1)[0] for hs in suspects.values() for h in hs if h[:1] != "@"})
        status = await self._running(ids) if ids else {}
        keepers = {h[1:] for hs in suspects.values() for h in hs if h[:1] == "@"}
        live = await self.keeper.live(sorted(keepers)) if keepers and self.keeper is not None else set()
        for key, holders in suspects.items():
            self._checked[key] = rnd.now
            st = work[key]
            # An execution holds its slot while running, and while pending once granted
            # (until its dispatcher claims it); a step only while its execution runs.
            # A process that keeps the key in memory holds it while it is alive.
            alive = [
                h for h in holders
                if (h[1:] in live if h[:1] == "@" else
                    self._unsettled.get(h, 0) > 0 or status.get(h.split("|", 1)[0]) in (("running",) if "|" in h else ("running", "pending")))
            ]  # fmt: skip
            if len(alive) < len(holders):
                st["holders"] = alive
                fill(key, st, rnd)


@dataclass(slots=True)
class _Written:
    """A round whose write is in flight: what to deliver once it is committed."""

    ops: list[Request | Release | Check]
    decisions: list[Decision | None]
    grants: list[tuple[str, str]]
    jobs: list[str]
    direct: set[str]
    changed: dict[str, Any]
    before: dict[str, Any]
    now: int
    admitted: list[str]
    #: The keys the round was decided on (all expected by its write).
    keys: list[str]
