"""PostgreSQL's commit of new executions and their events in one statement.

A batch that only creates executions (what `start()` and `start_many()` write)
has nothing to lock and no condition to decide in Python, so it needs no
transaction block: one statement in autocommit, sent on the raw asyncpg
connection, is one round trip instead of six (BEGIN, INSERT, seq counter,
INSERT events, NOTIFY, COMMIT), and needs no SQLAlchemy parameter building.

The statement inserts the executions first and takes the seq counter's row
lock last (its WHERE waits for the INSERT's row count), as every commit does
(see PostgresStorage._LOCK_STATE's comment): seqs become visible in order, and no cycle of
waits can form.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg
from sqlalchemy import Table

from .base import Batch, CommitResult
from .sql_tables import (
    BUNDLE_COLUMNS,
    EVENT_COLUMNS,
    EVENTS,
    EXECUTION_FIELDS,
    EXECUTIONS,
    MESSAGE_COLUMNS,
    PIPE_MESSAGES,
    dumps_rows,
    event_values,
    execution_values,
)


def _fields(table: Table, columns: tuple[str, ...], first: int = 0) -> str:
    """`columns` read from a JSON array `r`, from its element `first` on."""
    return ", ".join(
        f"(r->>{i})::bigint" if table.c[c].type.python_type is int else f"(r->>{i})"
        for i, c in enumerate(columns, start=first)
    )


def _statement(notify: bool) -> str:
    """$1: the executions' rows and $2 the events' rows (without seq), each as one
    JSON array of arrays (see sql._Compiled); $3: the number of events."""
    cols = ", ".join(f'"{c}"' for c in EXECUTION_FIELDS)
    ev_cols = EVENT_COLUMNS[1:]
    ev_names = ", ".join(f'"{c}"' for c in ev_cols)
    tail = ", pg_notify($4, $5)" if notify else ""
    return (
        f"WITH x AS (INSERT INTO executions ({cols}) SELECT {_fields(EXECUTIONS, EXECUTION_FIELDS)}"
        " FROM jsonb_array_elements($1::jsonb) AS j(r) RETURNING 1),"
        " s AS (UPDATE seq_counters SET events = events + $3"
        " WHERE id = 1 AND (SELECT count(*) FROM x) >= 0 RETURNING events),"
        f" e AS (INSERT INTO events (seq, {ev_names})"
        f" SELECT s.events - $3 + u.n, {_fields(EVENTS, ev_cols)}"
        " FROM s, jsonb_array_elements($2::jsonb) WITH ORDINALITY AS u(r, n))"
        f" SELECT s.events{tail} FROM s"
    )


_PLAIN = _statement(notify=False)
_NOTIFY = _statement(notify=True)


def _log_statement(notify: bool) -> str:
    """$1, $2: the numbers of events and messages; $3: the event rows as
    `sql_events.offsets` makes them (first and last event's offset, then the values
    in BUNDLE_COLUMNS order without seq and upto), $4: the messages' rows without
    seq, each one JSON array of arrays; $5, $6: the NOTIFY's channel and payload."""
    ev_cols = BUNDLE_COLUMNS[1:-1]
    msg_cols = MESSAGE_COLUMNS[1:]
    tail = ", pg_notify($5, $6)" if notify else ""
    return (
        "WITH s AS (UPDATE seq_counters SET events = events + $1, messages = messages + $2"
        " WHERE id = 1 RETURNING events, messages),"
        f" e AS (INSERT INTO events (seq, upto, {', '.join(ev_cols)})"
        f" SELECT s.events - $1 + (r->>0)::bigint, s.events - $1 + (r->>1)::bigint, {_fields(EVENTS, ev_cols, 2)}"
        " FROM s, jsonb_array_elements($3::jsonb) AS u(r)),"
        f" m AS (INSERT INTO pipe_messages (seq, {', '.join(msg_cols)})"
        f" SELECT s.messages - $2 + u.n, {_fields(PIPE_MESSAGES, msg_cols)}"
        " FROM s, jsonb_array_elements($4::jsonb) WITH ORDINALITY AS u(r, n))"
        f" SELECT s.events, s.messages{tail} FROM s"
    )


#: The events and pipe messages of a transaction, numbered by the seq counter whose
#: row lock the statement takes (the commit's last lock), and its NOTIFY if any.
LOG = _log_statement(notify=False)
LOG_NOTIFY = _log_statement(notify=True)


async def commit_inserts(
    conn: asyncpg.Connection, batch: Batch, notify: tuple[str, str] | None, claimable: Collection[str]
) -> CommitResult:
    """Commit an `inserts_only` batch on `conn` (outside any transaction block).
    `notify` (channel, payload) is sent when an execution is claimable now."""
    recs = batch.executions
    ids = [rec.id for rec in recs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"execution {dup!r} appears twice in one batch")
    values = [event_values(ev) for ev in batch.events]
    columns: list[Any] = [dumps_rows([execution_values(rec) for rec in recs]), dumps_rows(values), len(values)]
    wake = notify is not None and any(rec.status in claimable for rec in recs)
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
