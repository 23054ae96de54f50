"""PostgreSQL's commit of new executions and their events in one statement.

A batch that only creates executions (what `start()` and `start_many()` write)
has nothing to lock and no condition to decide in Python, so it needs no
transaction block: one statement in autocommit, sent on the raw asyncpg
connection, is one round trip instead of six (BEGIN, INSERT, seq counter,
INSERT events, NOTIFY, COMMIT), and needs no SQLAlchemy parameter building.

The statement inserts the executions first and takes the seq counter's row
lock last (its WHERE waits for the INSERT's row count), as every commit does
(see PostgresStorage._RESERVE): seqs become visible in order, and no cycle of
waits can form.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg
from sqlalchemy import Table

from .base import Batch, CommitResult
from .sql_tables import (
    EVENT_COLUMNS,
    EVENTS,
    EXECUTION_FIELDS,
    EXECUTIONS,
    event_values,
    execution_row,
)


def _array(table: Table, column: str) -> str:
    return "bigint" if table.c[column].type.python_type is int else "text"


def _statement(notify: bool) -> str:
    cols = ", ".join(f'"{c}"' for c in EXECUTION_FIELDS)
    arrays = ", ".join(f"${i}::{_array(EXECUTIONS, c)}[]" for i, c in enumerate(EXECUTION_FIELDS, start=1))
    n = len(EXECUTION_FIELDS)
    ev_cols = EVENT_COLUMNS[1:]
    ev_arrays = ", ".join(f"${n + i}::{_array(EVENTS, c)}[]" for i, c in enumerate(ev_cols, start=1))
    count = n + len(ev_cols) + 1
    ev_names = ", ".join(f'"{c}"' for c in ev_cols)
    tail = f", pg_notify(${count + 1}, ${count + 2})" if notify else ""
    return (
        f"WITH x AS (INSERT INTO executions ({cols}) SELECT * FROM unnest({arrays}) RETURNING 1),"
        f" s AS (UPDATE seq_counters SET events = events + ${count}"
        " WHERE id = 1 AND (SELECT count(*) FROM x) >= 0 RETURNING events),"
        f" e AS (INSERT INTO events (seq, {ev_names})"
        f" SELECT s.events - ${count} + u.n, {', '.join('u.' + c for c in ev_names.split(', '))}"
        f" FROM s, unnest({ev_arrays}) WITH ORDINALITY AS u({ev_names}, n))"
        f" SELECT s.events{tail} FROM s"
    )


_PLAIN = _statement(notify=False)
_NOTIFY = _statement(notify=True)


async def commit_inserts(
    conn: asyncpg.Connection, batch: Batch, notify: tuple[str, str] | None, claimable: Collection[str]
) -> CommitResult:
    """Commit an `inserts_only` batch on `conn` (outside any transaction block).
    `notify` (channel, payload) is sent when an execution is claimable now."""
    rows = [execution_row(rec) for rec in batch.executions]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"execution {dup!r} appears twice in one batch")
    columns: list[Any] = [[r[c] for r in rows] for c in EXECUTION_FIELDS]
    values = [event_values(ev) for ev in batch.events]
    if values:
        columns.extend(list(col) for col in zip(*values, strict=True))
    else:
        columns.extend([] for _ in EVENT_COLUMNS[1:])
    columns.append(len(values))
    wake = notify is not None and any(r["status"] in claimable for r in rows)
    if wake:
        assert notify is not None
        columns.extend(notify)
    try:
        last = await conn.fetchval(_NOTIFY if wake else _PLAIN, *columns)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "executions_pkey":
            raise ValueError(f"an execution of the batch already exists: {exc} {exc.detail or ''}".rstrip()) from exc
        raise
    result = CommitResult()
    for seq, ev in enumerate(batch.events, start=int(last) - len(values) + 1):
        ev.seq = seq
        result.events.append(ev)
    return result
