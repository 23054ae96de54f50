"""How a concurrency slot's state is laid out in storage: a small head, and one
state row per waiter.

The admission ledger (`slots.py`) works on a slot's whole state, `{"limit",
"holders", "waiters"}`. Stored as one value, every take and release would rewrite
and compare the whole line: with a backlog of N waiters each commit carries O(N)
bytes and a run of N jobs O(N²) (a limit of 10 over 5,000 jobs on SQLite ran at a
fifth of the unlimited speed). So the line is kept in rows of its own:

- the head, under the slot's key `slots:K`: `{"limit", "holders", "n", "v"}`, `n` the
  waiters in line and `v` a random tag that every write of the slot changes;
- each waiter under `slots:K|w|<holder>`: its entry `[-priority, seq, holder]`.

A write sets the head and only the rows of the waiters that joined or left, and its
compare-and-set expects the head (with its tag): two writers' changes to one line
are ordered by it. A read takes the head first, then the rows: rows newer than
that head belong to a write whose tag the head read does not have, so a round
decided on them loses its compare-and-set and reads again.

A head written before this layout holds its line inline (`"waiters"`, no `"v"`):
read as it is, expected as it is, and the next write moves its line into rows.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from .slot_requests import Round
from .storage.base import Batch
from .storage.conditions import SLOT_LINE as LINE

_PREFIX = "slots:"

GetState = Callable[[list[str]], Awaitable[dict[str, Any]]]
ListState = Callable[[str], Awaitable[dict[str, Any]]]


def _rows(value: Any) -> bool:
    """Whether a slot state (as the ledger holds it) keeps its line in rows."""
    return isinstance(value, dict) and "v" in value


async def read(get_state: GetState, list_state: ListState, keys: list[str]) -> dict[str, Any]:
    """The present `keys` with their values, a slot's line read from its rows."""
    out = await get_state(keys)
    for key, head in out.items():
        if key.startswith(_PREFIX) and _rows(head):
            line: list[Any] = []
            if head.get("n"):
                prefix = key + LINE
                for row_key, entry in (await list_state(prefix)).items():
                    # Only this key's own rows: a key may itself begin like `K|w|...`.
                    if (
                        isinstance(entry, list)
                        and len(entry) == 3
                        and row_key == prefix + str(entry[2])
                    ):
                        line.append(entry)
                line.sort()
            out[key] = {**head, "waiters": line}
    return out


def head(value: Any) -> Any:
    """What the storage holds under a slot's key for `value` (the ledger's whole state)."""
    if not _rows(value):
        return value
    return {"limit": value["limit"], "holders": value["holders"], "n": value["n"], "v": value["v"]}


def write(
    batch: Batch,
    changed: Mapping[str, Any],
    before: Mapping[str, Any],
    keys: Sequence[str],
    rnd: Round,
) -> None:
    """Put into `batch` the writes of round `rnd`, which changes `changed` from `before`,
    and its compare-and-set on every key it decided on (`keys`). A changed slot state
    gets its new tag and count in place: it is what the ledger remembers as written."""
    state = batch.state
    for key, value in changed.items():
        if not key.startswith(_PREFIX):
            state[key] = value
            continue
        prefix = key + LINE
        if _rows(before.get(key)):
            joined, left = rnd.lines.get(key, ({}, set()))
            for holder in left:
                state[prefix + holder] = None
            for holder, entry in joined.items():
                state[prefix + holder] = entry
        elif value is not None:  # its line was inline (or empty): all of it into rows
            for entry in value["waiters"]:
                state[prefix + entry[2]] = entry
        if value is None:
            state[key] = None
            continue
        value["n"] = len(value["waiters"])
        value["v"] = random.getrandbits(52)
        state[key] = head(value)
    batch.expect.update(
        {k: head(before.get(k)) if k.startswith(_PREFIX) else before.get(k) for k in keys}
    )
