"""PostgreSQL's commit as one round trip: the server-side function `dq_commit_v1`.

`SqlStorage._commit` takes 5-9 round trips on PostgreSQL (BEGIN, the FOR UPDATE
read, the state keys' advisory locks and read, the writes, the log, COMMIT). Under
a concurrency limit the commits of successive generations are sequential, so that
latency is the whole cost. `dq_commit_v1(batch jsonb) RETURNS jsonb` makes the same
decisions in the same order inside the server, called as one autocommit statement:

1. lock the touched execution rows (sorted ids, FOR UPDATE), then the state keys'
   advisory locks (sorted; the same keys and space as `PostgresStorage._LOCK_STATE`,
   so the Python path and the function interlock), then read the expected state.
   The function is VOLATILE: in READ COMMITTED each of its statements takes a new
   snapshot, so the read postdates the locks (tests/storage/test_pg_commit.py);
2. `Batch.expect` fails -> conflict, nothing written;
3. a new execution an update or fence names that exists already -> error; fences;
   updates in batch order (conditions.py), an update of a new row folded into its insert;
4. writes in `_commit`'s order: executions insert, updates (only the listed fields),
   steps upsert (minus refused), state upsert and delete, then events and pipe
   messages numbered from the seq counter row (its lock taken last, see
   `PostgresStorage._LOCK_STATE`), and the NOTIFY when `_commit` would send it.

The batch comes as one JSON object (keys below); touched executions are referred to
by their 1-based index in the sorted id list `i`, so the function keeps its per-id
state in plain arrays. The result: {"r": refused ids, "a": applied flags, "c": the
touched rows' controls (by index), "e"/"m": first event/message seq} or {"x": true}
(conflict) or {"d": id} (a new execution that exists).

The function is created by a migration, so its text is frozen per version: a change
(of it, or of the columns below) is a new function `dq_commit_vN` and a new migration.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .base import CLAIMABLE, Batch, CommitResult, EventRecord
from .conditions import hands_a_step_slot, lock_keys
from .sql import _Prepared
from .sql_pg_function import (
    FUNCTION,
    V1_EVENT_COLUMNS,
    V1_EXECUTION_FIELDS,
    V1_MESSAGE_COLUMNS,
    V1_STEP_FIELDS,
)
from .sql_tables import (
    EVENT_COLUMNS,
    EXECUTION_FIELDS,
    MESSAGE_COLUMNS,
    STEP_FIELDS,
    dumps,
)

if (EXECUTION_FIELDS, STEP_FIELDS, EVENT_COLUMNS, MESSAGE_COLUMNS) != (
    V1_EXECUTION_FIELDS, V1_STEP_FIELDS, V1_EVENT_COLUMNS, V1_MESSAGE_COLUMNS,
):  # fmt: skip
    raise RuntimeError(f"the stored columns changed: {FUNCTION} needs a successor (and a migration)")

CALL = f"SELECT {FUNCTION}($1::jsonb)::text"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Call:
    """One batch as the function's argument, and its result decoded into a CommitResult."""

    __slots__ = ("arg", "batch", "ids")

    def __init__(self, batch: Batch, prepared: _Prepared, notify: tuple[str, str]) -> None:
        self.batch = batch
        ids = sorted(set(batch.fences).union(u.id for u in batch.updates))
        index = {eid: i for i, eid in enumerate(ids, 1)}
        seen: set[str] = set()
        new_rows: list[list[Any]] = []
        new_touched: list[list[Any]] = []
        wake = bool(batch.messages)
        for rec, row in zip(batch.executions, prepared.new_rows, strict=True):
            if rec.id in seen:
                raise ValueError(f"execution {rec.id!r} appears twice in one batch")
            seen.add(rec.id)
            at = index.get(rec.id, 0)
            new_rows.append([at, *[row[c] for c in EXECUTION_FIELDS]])
            if at:
                new_touched.append([at, rec.token, rec.status, rec.control])
            wake = wake or rec.status in CLAIMABLE
        # A slot handed to a step waiting in another process: wake that process.
        wake = wake or hands_a_step_slot(batch.state)
        arg: dict[str, Any] = {
            "i": ids,
            "k": lock_keys(batch.expect, batch.state),
            "x": [[k, None if v is None else dumps(v)] for k, v in batch.expect.items()],
            "n": new_rows,
            "nt": new_touched,
            "f": [[index[eid], token] for eid, token in batch.fences.items()],
            "u": [
                [index[u.id], u.token, None if u.statuses is None else list(u.statuses), fields]
                for u, fields in prepared.updates
            ],
            "s": [prepared.steps[k] for k in sorted(prepared.steps)],  # sorted: lock order
            "ss": prepared.state_set,
            "sd": [k for (k,) in prepared.state_del],
            "e": [[*values, len(evs)] for evs, values in prepared.events],  # a row and its number of events
            "m": prepared.messages,
            "w": wake,
            "cl": CLAIMABLE,
            "ch": notify[0],
            "pl": notify[1],
        }
        self.arg = _encode(arg).decode()
        self.ids = ids

    def result(self, text: str) -> CommitResult:
        out = _decode(text)
        if "d" in out:
            raise ValueError(f"execution {out['d']!r} already exists")
        if "x" in out:
            return CommitResult(conflict=True)
        batch = self.batch
        refused = set(out["r"])
        controls = out["c"]
        index = {eid: i for i, eid in enumerate(self.ids)}
        result = CommitResult(
            applied=out["a"],
            refused=refused,
            controls={eid: controls[index[eid]] for eid in batch.fences if eid not in refused},
        )
        events: list[EventRecord] = batch.events
        if refused:
            events = [ev for ev in events if ev.execution_id not in refused]
        for seq, ev in enumerate(events, start=out["e"] or 0):
            ev.seq = seq  # the batch's records are handed over (Storage.commit)
        result.events = events if events is not batch.events else list(events)
        for seq, msg in enumerate(batch.messages, start=out["m"] or 0):
            msg.seq = seq
        return result
