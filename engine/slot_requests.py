"""What the admission ledger (`slots.Ledger`) is asked and answers, and how one
round changes a limit's state: takes and places in line, releases that hand a
slot to the next waiter, all or nothing per request."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .limits import Limit, Timed, window_reserve
from .storage.base import Batch, CommitResult

log = logging.getLogger("dq")


@dataclass(slots=True)
class Decision:
    """What a request got: start now, wait until `at` (`parked`: the request's own
    park writes were committed with the decision), or be discarded (throttle)."""

    ok: bool
    at: int = 0
    reason: str | None = None
    parked: bool = False
    discard: bool = False


@dataclass(slots=True)
class Request:
    holder: str
    #: (-priority, seq): admission order among the waiters of a key.
    order: tuple[int, int]
    #: Slot limits and rate limits, checked in this order; all or nothing.
    limits: Sequence[Limit] = ()
    throttle: Timed | None = None
    #: Writes that put the holder's execution back to pending until `at`, with
    #: a reason: committed in the same batch as a refusal. None: a step waiter.
    park: Callable[[int, str], Batch] | None = None
    #: Writes that share the decision's transaction, given the decision (the creation
    #: of the execution itself: admitted claimed, or refused as a waiter). Called again
    #: if the round is decided again.
    carry: Callable[[Decision], Batch] | None = None
    #: Ask the storage whether the key's holders still run before refusing.
    recheck: bool = False
    fut: asyncio.Future[Decision] | None = None
    #: The write of the round that decided it, once sent.
    commit: asyncio.Future[CommitResult] | None = None
    #: Rounds this request lost to another process's write.
    tries: int = 0

    def keys(self) -> list[str]:
        out = [state_key(lim) for lim in self.limits]
        if self.throttle is not None:
            out.append("throttle:" + self.throttle.key)
        return out


@dataclass(slots=True)
class Release:
    holder: str
    keys: list[str]
    fut: asyncio.Future[Decision] | None = None
    tries: int = 0
    #: No future (nobody awaits it): a failure is logged with this message instead.
    warn: str | None = None


@dataclass(slots=True)
class Check:
    """Look whether the holders of `keys` still run (a grant whose update did not apply)."""

    keys: list[str]
    fut: asyncio.Future[Decision] | None = None
    tries: int = 0


@dataclass(slots=True)
class Round:
    now: int
    #: (key, holder) slots handed to waiters in this round.
    granted: list[tuple[str, str]] = field(default_factory=list)
    #: Slot keys whose state this round has put in shape (`slot_state`).
    owned: set[str] = field(default_factory=set)
    #: Per slot key, the waiters this round put in line (holder -> entry) and those that
    #: left it: what its write changes of the line's rows (`slot_lines.write`).
    lines: dict[str, tuple[dict[str, list[Any]], set[str]]] = field(default_factory=dict)

    def joined(self, key: str, entry: list[Any]) -> None:
        joined, left = self.lines.setdefault(key, ({}, set()))
        joined[entry[2]] = entry
        left.discard(entry[2])

    def left(self, key: str, holder: str) -> None:
        joined, left = self.lines.setdefault(key, ({}, set()))
        if joined.pop(holder, None) is None:  # in line before this round: its row goes
            left.add(holder)


def state_key(limit: Limit) -> str:
    return ("slots:" if limit.window_ms is None else "rate:") + limit.key


def keys_of(ops: Sequence[Request | Release | Check]) -> list[str]:
    return sorted({k for op in ops for k in (op.keys() if isinstance(op, Request) else op.keys)})


def copy_state(state: Any) -> Any:
    """A copy a round may change: its dict and lists are new; their items are shared, as
    no round changes an item in place (a waiter entry or a rate start is replaced whole)."""
    if not isinstance(state, dict):
        return state
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}


def fail(ops: Sequence[Request | Release | Check], exc: BaseException) -> None:
    for op in ops:
        if op.fut is None and isinstance(op, Release) and op.warn is not None:
            # It no longer runs: the next waiter's look at the holders frees the slot.
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("dq: %s: %s", op.warn, exc)
        elif op.fut is not None and not op.fut.done():
            if isinstance(exc, asyncio.CancelledError):
                op.fut.cancel()
            else:
                op.fut.set_exception(exc)


def decide(req: Request, work: dict[str, Any], rnd: Round, far_ms: int) -> Decision:
    """`req` against the round's `work` state (changed in place): throttle, rate
    windows, then slots, all or nothing; refused, a slot waiter is due again after `far_ms`."""
    now = rnd.now
    if req.throttle is not None:
        t = req.throttle
        key = "throttle:" + t.key
        at, new = window_reserve(Limit(t.key, 1, t.interval_ms), work[key], now, req.holder)
        if at > now:
            if t.mode == "discard":
                return Decision(False, -1, f"discarded by throttle ({t.interval_ms} ms for {t.key})", discard=True)
            work[key] = new
            return Decision(False, at, f"throttled: one start per {t.interval_ms} ms for {t.key}")
        work[key] = new
    taken: list[str] = []
    for lim in req.limits:
        key = state_key(lim)
        if lim.window_ms is not None:
            at, work[key] = window_reserve(lim, work[key], now, req.holder)
            if at > now:
                return Decision(False, at, f"rate limited: {lim.describe()}")
            continue
        if key not in rnd.owned:
            work[key] = slot_state(work[key], lim.limit)
            rnd.owned.add(key)
        st = work[key]
        st["limit"] = lim.limit
        if req.holder not in st["holders"]:
            # Its place in line is its order (a pure function of the request: priority,
            # then creation): found, or put there, by bisection, not a look at every waiter.
            entry, waiters = [*req.order, req.holder], st["waiters"]
            i = bisect.bisect_left(waiters, entry)
            if i == len(waiters) or waiters[i] != entry:
                waiters.insert(i, entry)
                rnd.joined(key, entry)
            fill(key, st, rnd)
        if req.holder not in st["holders"]:
            for other in taken:  # all or nothing: what this request took goes on
                leave(work, other, req.holder, rnd)
            return Decision(False, now + far_ms, f"waiting for a slot: {lim.describe()}")
        taken.append(key)
    return Decision(True)


def slot_state(state: Any, limit: int) -> dict[str, Any]:
    """`state` (a round's copy, `copy_state`: its lists are its own) as a slot's state."""
    st = state if isinstance(state, dict) else {}
    out = {"limit": limit, "holders": st.get("holders") or [], "waiters": st.get("waiters") or []}
    if "v" in st:  # its stored head's tag and count (slot_lines.py): unchanged unless written
        out["n"], out["v"] = st["n"], st["v"]
    return out


def fill(key: str, st: dict[str, Any], rnd: Round) -> None:
    while st["waiters"] and len(st["holders"]) < int(st.get("limit", 1)):
        holder = st["waiters"].pop(0)[2]
        rnd.left(key, holder)
        st["holders"].append(holder)
        rnd.granted.append((key, holder))


def leave(work: dict[str, Any], key: str, holder: str, rnd: Round) -> None:
    """`holder` gives its slot (or its place in the line) back; the slot goes on to the next waiter."""
    st = work.get(key)
    if not isinstance(st, dict) or "holders" not in st:
        return  # a rate start stays counted for its window
    if holder in st["holders"]:
        st["holders"].remove(holder)
        rnd.granted[:] = [(k, h) for k, h in rnd.granted if (k, h) != (key, holder)]
    else:  # a holder is never in line as well: only one that gives up its place is looked for there
        line = st.get("waiters", [])
        st["waiters"] = [w for w in line if w[2] != holder]
        if len(st["waiters"]) < len(line):
            rnd.left(key, holder)
    fill(key, st, rnd)
    if not st["holders"] and not st["waiters"]:
        work[key] = None
        rnd.owned.discard(key)


def extend(batch: Batch, other: Batch) -> None:
    batch.executions.extend(other.executions)
    batch.steps.extend(other.steps)
    batch.updates.extend(other.updates)
    batch.events.extend(other.events)
    batch.fences.update(other.fences)
