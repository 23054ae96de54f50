"""The SQL adapters' event rows: a commit's events of one execution in one row.

A 1-step job writes five events; its `start`, `step_start` and `step_success`
follow one another in the same commit (a fast step ends before the group commit
flushes, and the committer keeps a batch's writes in order). Each event as its
own row cost about 9 µs of the dq process's CPU on PostgreSQL plus the server's
insert into a table with two indexes (docs/benchmarks.md, "what one event
costs"). So a run of a commit's consecutive events of one execution is stored in
one row, up to `MAX_BUNDLE`: the first event in the row's own columns, the rest in
`more` (a JSON array of [type, data, at]), and `upto`, the last one's seq. The
order of the events is the commit's, as before.

Seqs stay one per event: the counter advances by events, a row's seq is its
first event's, and the events after it have the seqs after it. `read_events`
expands the rows, so readers (the bus, the dashboard, `Execution.events()`) see
the same events as ever. Rows of one event (and every row written before
migration 11) have both columns NULL. Every SQL commit path writes them: the
Python one, PostgreSQL's log statement (`sql_pg_inserts.LOG`) and its commit
function (`dq_commit_v2`); a batch that only creates executions has one event
per execution, a row each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from .base import EventRecord
from .sql_tables import dumps_data

#: Events per row, at most: a reader after seq N looks at rows from N - MAX_BUNDLE + 1.
MAX_BUNDLE = 16

#: A row to insert: its events (in order), and (execution_id, job_name, type, data,
#: at, more) of the first with the rest in `more`.
Row = tuple[list[EventRecord], tuple[Any, ...]]

_encode = msgspec.json.Encoder().encode


def bundle(events: Sequence[EventRecord]) -> list[Row]:
    """The rows of a commit's events, in their order: a run of consecutive events of
    one execution is one row (up to MAX_BUNDLE); an event of no execution (a
    trigger's error) is a row of its own."""
    rows: list[Row] = []
    group: list[EventRecord] = []
    for ev in events:
        if group and (ev.execution_id is None or ev.execution_id != group[0].execution_id or len(group) >= MAX_BUNDLE):
            rows.append(_row(group))
            group = []
        group.append(ev)
    if group:
        rows.append(_row(group))
    return rows


def _row(group: list[EventRecord]) -> Row:
    first = group[0]
    more = None
    if len(group) > 1:
        more = _encode([[ev.type, msgspec.Raw(dumps_data(ev.data).encode()), ev.at] for ev in group[1:]]).decode()
    return group, (first.execution_id, first.job_name, first.type, dumps_data(first.data), first.at, more)


def count(rows: Sequence[Row]) -> int:
    return sum(len(evs) for evs, _ in rows)


def number(rows: Sequence[Row], first_seq: int) -> list[EventRecord]:
    """Give the rows' events their seqs from `first_seq` on; returns them in seq order."""
    events: list[EventRecord] = []
    for evs, _ in rows:
        events.extend(evs)
    for seq, ev in enumerate(events, start=first_seq):
        ev.seq = seq  # the batch's records are handed over (Storage.commit)
    return events


def numbered_values(rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    """Each row's values in BUNDLE_COLUMNS order (seq, ..., more, upto), its events numbered."""
    return [(evs[0].seq, *row, evs[-1].seq if len(evs) > 1 else None) for evs, row in rows]


def offsets(rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    """The rows for a statement that numbers them itself: (offset of the first event,
    offset of the last or None, *values), offsets from 1 (seq = the counter before
    the commit + offset)."""
    out: list[tuple[Any, ...]] = []
    at = 1
    for evs, row in rows:
        n = len(evs)
        out.append((at, at + n - 1 if n > 1 else None, *row))
        at += n
    return out


def expand(execution_id: str | None, job_name: str | None, type: str, data: str, at: int, seq: int,
           more: str | None) -> list[EventRecord]:  # fmt: skip
    """The events of one stored row."""
    out = [EventRecord(execution_id, job_name, type, json.loads(data), at, seq)]
    if more is not None:
        for i, (t, d, a) in enumerate(json.loads(more), 1):
            out.append(EventRecord(execution_id, job_name, t, d, a, seq + i))
    return out
