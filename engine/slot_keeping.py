"""A lone process keeps a concurrency key in memory: no slot write per take and release.

Shared, every take and release of a slot is a compare-and-set write of the key's
state (`slots.py`): what makes a limit hold across processes, and what a start
and an end under a limit pay beside the work itself. While a process is the only
live one on the storage, it *keeps* the keys it uses: one write marks a key as
kept, its holders `["@<worker id>"] * limit` (so any other process finds it full),
and from then on the ledger decides the key in this process's memory and writes
nothing of it; executions and steps are admitted, parked and handed slots exactly
as before, only their state is not stored.

A key is taken only when everything in it (holders, and executions or steps in
line) is of this process, by a compare-and-set like any other round: two
processes starting at once cannot both take it. The keeper gives the key back — writes its holders and waiters as a
shared key's, merged with the waiters other processes put in line meanwhile, and
hands free slots to them — as soon as it sees another live process (its
heartbeat; looked at every second while it keeps a key), and when it closes.
Another process that finds the marker waits in line as for any full key; if the
keeper stops without giving back (a crash), its marker holders are dropped like
those of a crashed execution once its heartbeat is stale, and its own waiting
executions run after their safety delay. So a limit is never exceeded, and a
second process waits at most about a second longer than it would for a shared key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import slot_lines
from .ids import now_ms
from .limits import Limit
from .slot_requests import Check, Release, Request, Round, copy_state, fill, state_key
from .storage.base import Batch

if TYPE_CHECKING:
    from .slots import Ledger

log = logging.getLogger("dq")

#: How long after a lost take the key is not tried again (another process uses it).
_RETAKE_MS = 1000
#: Attempts at giving the kept keys back, each after a lost compare-and-set.
_GIVE_BACK_TRIES = 50


class Keeper(Protocol):
    """What the ledger asks of its process (`flow.FlowControl`)."""

    @property
    def worker_id(self) -> str:
        """The marker's holder name: "@" + this."""

    def is_alone(self) -> bool:
        """No other live process shares the storage (as last looked), nor is this one closing."""

    async def live(self, worker_ids: list[str]) -> set[str]:
        """Those of `worker_ids` whose heartbeat is fresh."""

    def is_local(self, holder: str) -> bool:
        """`holder` (an execution, or `execution|step`) holds or waits in this process."""

    def took(self) -> None:
        """A key is now kept: look for other processes until none is."""


def marker(worker_id: str, limit: int) -> dict[str, Any]:
    return {"limit": limit, "holders": ["@" + worker_id] * limit, "waiters": []}


async def take(ledger: Ledger, keys: list[str], ops: list[Request | Release | Check]) -> None:
    """Try to keep `keys` (empty slot keys that `ops` ask for): one compare-and-set write of
    their markers, once this process's writes in flight are settled. Lost: read again, and
    not tried for a second."""
    keeper = ledger.keeper
    if not keys or keeper is None:
        return
    limits: dict[str, int] = {}
    for op in ops:
        if isinstance(op, Request):
            for lim in op.limits:
                if lim.window_ms is None:
                    limits.setdefault(state_key(lim), lim.limit)
    keys = [k for k in keys if k in limits]
    if not keys:
        return
    while ledger._flight:
        await asyncio.wait(list(ledger._flight))
    before = await ledger._states(keys)
    until = now_ms() + _RETAKE_MS
    candidates = []
    for k in keys:
        if takeable(keeper, before.get(k)):
            candidates.append(k)
        else:  # not looked at again for a while: the at-once path would detour into a round each time
            ledger._no_take[k] = until
    keys = candidates
    if not keys:
        return
    markers = {k: marker(keeper.worker_id, limits[k]) for k in keys}
    batch = Batch()
    rnd = Round(now_ms())
    for k in keys:  # the line moves into memory: its rows go
        for w in (before.get(k) or {}).get("waiters", ()):
            rnd.left(k, w[2])
    slot_lines.write(batch, markers, before, keys, rnd)
    try:
        result = await ledger._commit(batch)
    except Exception:  # the round that follows reads afresh and decides as shared
        result = None
    if result is None or result.conflict:
        ledger._stale.update(keys)
        ledger._no_take.update(dict.fromkeys(keys, now_ms() + _RETAKE_MS))
        return
    for k in keys:
        ledger.kept[k] = copy_state(before.get(k))
        ledger._cache[k] = markers[k]
        ledger._stale.discard(k)  # its state is this process's own now
    keeper.took()


def takeable(keeper: Keeper, state: Any) -> bool:
    """A key whose holders and waiters are all of this process (or none) can be kept."""
    if state is None:
        return True
    local = keeper.is_local
    return all(local(h) for h in state.get("holders", ())) and all(local(w[2]) for w in state.get("waiters", ()))


def keep(kept: dict[str, Any], changed: dict[str, Any], keys: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A round's changes to kept keys go to memory; what is left (changes, and keys to
    expect) is written as usual."""
    if not any(k in kept for k in keys):
        return changed, keys
    for k in keys:
        if k in kept and k in changed:
            kept[k] = changed[k]
    return {k: v for k, v in changed.items() if k not in kept}, [k for k in keys if k not in kept]


async def give_back_all(ledger: Ledger) -> None:
    """(In the ledger's round task, nothing else deciding) write every kept key as a
    shared one; then resolve `ledger._letting`. A key's stored state may have gained
    waiters of other processes (in line behind the marker): they join this process's
    line in their order, and free slots go to the head of the merged line."""
    done = ledger._letting
    try:
        for _ in range(_GIVE_BACK_TRIES):
            if not ledger.kept or await _give_back_once(ledger):
                break
        else:
            log.warning("dq: could not give back the kept concurrency keys: %s", sorted(ledger.kept))
    except Exception as exc:  # kept: the next look for peers tries again
        log.warning("dq: could not give back the kept concurrency keys: %s", exc)
    finally:
        ledger._letting = None
        if done is not None and not done.done():
            done.set_result(None)


async def _give_back_once(ledger: Ledger) -> bool:
    keeper = ledger.keeper
    assert keeper is not None
    while ledger._flight:
        await asyncio.wait(list(ledger._flight))
    keys = sorted(ledger.kept)
    stored = await ledger._get_state(keys)
    mark = "@" + keeper.worker_id
    rnd = Round(now_ms())
    before: dict[str, Any] = {}
    work: dict[str, Any] = {}
    saved = dict(ledger.kept)
    for k in keys:
        theirs = stored.get(k) or {}
        if theirs:
            before[k] = theirs
        mine = saved[k] or {"holders": [], "waiters": []}
        holders = [h for h in theirs.get("holders", []) if h != mark]
        holders += [h for h in mine["holders"] if h not in holders]
        line: dict[str, list[Any]] = {}
        regrant = []
        for w in theirs.get("waiters", []):
            if w[2] in holders:
                # Granted here (made due), then claimed by another process that found the
                # marker and put it in line: it holds the slot; made due again to run.
                rnd.left(k, w[2])
                regrant.append((k, w[2]))
            else:
                line[w[2]] = w
        for w in mine["waiters"]:
            if w[2] not in line and w[2] not in holders:
                line[w[2]] = w
                rnd.joined(k, w)
        st: dict[str, Any] = {"limit": mine.get("limit") or theirs.get("limit") or 1, "holders": holders, "waiters": sorted(line.values())}
        if "v" in theirs:
            st["n"], st["v"] = theirs["n"], theirs["v"]
        fill(k, st, rnd)
        rnd.granted.extend(regrant)
        work[k] = st if st["holders"] or st["waiters"] else None
    changed = {k: v for k, v in work.items() if v != before.get(k)}
    for k in keys:
        del ledger.kept[k]
    commit = ledger._send([], [], Batch(), changed, before, rnd, keys)
    if commit is None:
        return True
    try:
        result = await commit
    except Exception:
        ledger.kept.update(saved)
        raise
    if result.conflict:  # another process wrote the key meanwhile: merge again
        ledger.kept.update(saved)
        return False
    return True


def admit(ledger: Ledger, holder: str, limits: Sequence[Limit], stored: bool = False) -> list[str] | None:
    """Admit `holder` at once when each limit is a slot key kept here with room and no
    one in line: nothing to decide in a round, nothing of it to write. Returns the keys
    it now holds, or None: ask with a request. Unless `stored` (an execution claimed
    already), the holder counts as alive until the ledger's `settle_holder` (the write
    that stores it)."""
    if not ledger.idle():
        return None
    kept = ledger.kept
    keys = []
    for lim in limits:
        key = state_key(lim)
        st = kept.get(key, False)
        if lim.window_ms is not None or st is False:
            return None
        if st is not None and (st["waiters"] or len(st["holders"]) >= lim.limit or holder in st["holders"]):
            return None
        keys.append(key)
    for key, lim in zip(keys, limits, strict=True):
        st = kept[key]
        holders = [holder] if st is None else [*st["holders"], holder]
        kept[key] = {"limit": lim.limit, "holders": holders, "waiters": []}
    if not stored:
        ledger._unsettled[holder] = ledger._unsettled.get(holder, 0) + 1  # until `Ledger.settle_holder`
    return keys


def release(ledger: Ledger, holder: str, keys: list[str]) -> bool:
    """Give back `holder`'s slots of kept keys that no one waits for, at once (nothing to
    hand over, nothing to write); False: release as usual."""
    if not ledger.idle():
        return False
    kept = ledger.kept
    for key in keys:
        st = kept.get(key)
        if st is None or st["waiters"] or holder not in st["holders"]:
            return False
    for key in keys:
        st = kept[key]
        holders = [h for h in st["holders"] if h != holder]
        kept[key] = {"limit": st["limit"], "holders": holders, "waiters": []} if holders else None
    return True
