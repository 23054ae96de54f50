"""The pure "does this batch apply" decision, written once for the adapters that decide
in Python (memory, SQL); Redis makes the same decision inside its COMMIT script
(redis_scripts.py), where Python cannot run. The contract is `Storage.commit`'s.
Beside it, two facts about a batch's state writes that the SQL adapters share:
which keys a commit locks for its compare-and-set (`lock_keys`), and whether it
must wake other processes for a step waiting on a slot (`hands_a_step_slot`).

1. Every `Batch.expect` key must hold its value, or nothing applies (`conflict`).
2. A fenced execution whose stored token differs from the writer's is refused:
   none of its updates, steps or events apply.
3. An update applies when its execution exists, is not refused, still has the
   token it names (if any) and one of the statuses it names (if any). Updates
   apply in batch order, so a later update sees the state an earlier one left.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .base import ExecutionUpdate


class Current(Protocol):
    """What the conditions read of a stored execution (a record, or a row's columns)."""

    token: int
    status: str
    control: str | None


def expectations_fail(expect: Mapping[str, Any], state_now: Callable[[str], Any]) -> bool:
    """Whether a compare-and-set precondition does not hold (JSON values compare by equality)."""
    return any(state_now(key) != value for key, value in expect.items())


def refused_fences(
    fences: Mapping[str, int], current: Callable[[str], Current | None], refused: set[str]
) -> set[str]:
    """Add to `refused` (and return it) the fenced executions whose writer's token is
    stale, or that do not exist."""
    for eid, token in fences.items():
        cur = current(eid)
        if cur is None or cur.token != token:
            refused.add(eid)
    return refused


def update_applies(upd: ExecutionUpdate, cur: Current | None, refused: set[str]) -> bool:
    """Whether `upd` applies to the execution as it stands now."""
    return (
        cur is not None
        and upd.id not in refused
        and (upd.token is None or cur.token == upd.token)
        and (upd.statuses is None or cur.status in upd.statuses)
    )


#: Between a slot's key and a waiter's holder in the key of that waiter's row (slot_lines.py).
SLOT_LINE = "|w|"


def lock_keys(expect: Mapping[str, Any], state: Mapping[str, Any]) -> list[str]:
    """The state keys a commit locks (sorted: the lock order) for its compare-and-set:
    those it expects or writes, but a slot waiter's row (`<slot key>|w|<holder>`)
    whose slot key is among them. A row is only ever written beside its slot's head
    (slot_lines.py), whose lock orders every writer of the line: locking each row
    too cost a lock per waiter (a bulk start of 1,000 into a full slot: 1,000)."""
    keys = set(expect).union(state)
    out = []
    for k in keys:
        i = k.find(SLOT_LINE)
        while i > 0:
            if k[:i] in keys:
                break
            i = k.find(SLOT_LINE, i + 1)
        else:
            out.append(k)
    out.sort()
    return out


def hands_a_step_slot(state: Mapping[str, Any]) -> bool:
    """Whether a batch's state writes may hand a concurrency slot to a step waiting in
    another process, which only the adapter's notification wakes: a slot's head
    written with a step among its holders (`execution id|step key`). A waiting
    execution is woken by its own update instead (made due), and a job limit's
    holders are execution ids: its takes and releases notify no one."""
    for key, value in state.items():
        if key.startswith("slots:") and isinstance(value, dict):
            if any("|" in str(h) for h in value.get("holders") or ()):
                return True
    return False
