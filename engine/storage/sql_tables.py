"""The SQL schema (SQLModel table classes) and its numbered migrations.

Columns mirror the records of base.py. JSON values are TEXT (compact
`json.dumps`), times are BIGINT milliseconds. The schema is versioned: open()
applies the MIGRATIONS newer than the version recorded in `schema_version`, in
order, inside the caller's write transaction, and records each one.

Migration 1 is `create_all` of the tables as declared below. A later migration
that changes a table must leave a fresh database and a migrated one with the same
schema: migration 3 drops a column only where migration 1 created it (databases
made before it). A migration that adds to a table would need migration 1 frozen
as explicit DDL first (copy the DDL that `create_all` emits today).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from operator import attrgetter
from typing import Any

import msgspec
from sqlalchemy import (
    BigInteger,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Text,
    inspect,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import Field, SQLModel

from ..errors import DqError
from .base import EventRecord, ExecutionRecord, PipeMessage, StepRecord
from .sql_pg_function import CREATE_FUNCTION, CREATE_FUNCTION_V2

# SQLite makes a single INTEGER primary key an alias of the rowid (no second index).
_SEQ = BigInteger().with_variant(Integer(), "sqlite")
# Ids are ordered and compared byte-wise everywhere (like Python's str), whatever the
# PostgreSQL database's collation is (keyset pagination relies on it).
_ID = String().with_variant(String(collation="C"), "postgresql")


class ExecutionRow(SQLModel, table=True):
    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_status_run_at", "status", "run_at"),
        # No index on job_name alone (migration 9 drops it): the two below lead with it.
        # Migration 2 makes these two partial (WHERE ... IS NOT NULL).
        Index("ix_executions_parent_id", "parent_id"),
        Index("ix_executions_root_id", "root_id"),
        # Migration 4 makes this one partial too.
        Index("ix_executions_idempotency_key", "idempotency_key"),
        # Migration 6 creates these (the time ones partial: WHERE ... IS NOT NULL).
        Index("ix_executions_started_at", "started_at"),
        Index("ix_executions_completed_at", "completed_at"),
        Index("ix_executions_job_name_status_id", "job_name", "status", "id"),
        # Migration 7 creates this one.
        Index("ix_executions_job_name_created_at", "job_name", "created_at"),
    )

    id: str = Field(primary_key=True, sa_type=_ID)
    job_name: str
    status: str
    input: str | None = Field(default=None, sa_type=Text)
    output: str | None = Field(default=None, sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)
    retry_count: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    priority: int = 0
    created_at: int = Field(sa_type=BigInteger)
    run_at: int = Field(sa_type=BigInteger)
    started_at: int | None = Field(default=None, sa_type=BigInteger)
    completed_at: int | None = Field(default=None, sa_type=BigInteger)
    worker_id: str | None = None
    lease_until: int | None = Field(default=None, sa_type=BigInteger)
    token: int = Field(default=0, sa_type=BigInteger)
    control: str | None = None
    wait_reason: str | None = None
    current_step: str | None = None
    # Added by migration 4 (a fresh database gets it from migration 1's create_all).
    idempotency_key: str | None = None
    # Added by migration 5 (a fresh database gets it from migration 1's create_all).
    replay_of: str | None = None


class StepRow(SQLModel, table=True):
    __tablename__ = "steps"

    execution_id: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    name: str
    kind: str
    status: str
    attempt: int = 1
    output: str | None = Field(default=None, sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)
    started_at: int = Field(sa_type=BigInteger)
    completed_at: int | None = Field(default=None, sa_type=BigInteger)
    job_attempt: int = 0
    seq: int = 0
    line: int | None = None


class EventRow(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_execution_id_seq", "execution_id", "seq"),)

    seq: int = Field(primary_key=True, sa_type=_SEQ, sa_column_kwargs={"autoincrement": False})
    execution_id: str | None = None
    job_name: str | None = None
    type: str
    data: str = Field(sa_type=Text)
    at: int = Field(sa_type=BigInteger)
    #: A row may hold the events after its own of the same execution and commit
    #: (sql_events.py): `more` their [type, data, at] as a JSON array, `upto` the
    #: last one's seq. Both NULL for a row of one event.
    upto: int | None = Field(default=None, sa_type=BigInteger)
    more: str | None = Field(default=None, sa_type=Text)


class PipeMessageRow(SQLModel, table=True):
    __tablename__ = "pipe_messages"
    __table_args__ = (Index("ix_pipe_messages_pipe_seq", "pipe", "seq"),)

    seq: int = Field(primary_key=True, sa_type=_SEQ, sa_column_kwargs={"autoincrement": False})
    pipe: str
    data: str | None = Field(default=None, sa_type=Text)
    at: int = Field(sa_type=BigInteger)


class StateRow(SQLModel, table=True):
    __tablename__ = "state"

    key: str = Field(primary_key=True)
    value: str = Field(sa_type=Text)


class WorkerRow(SQLModel, table=True):
    __tablename__ = "workers"

    id: str = Field(primary_key=True)
    info: str = Field(sa_type=Text)
    last_heartbeat: int = Field(sa_type=BigInteger)


class SeqCounterRow(SQLModel, table=True):
    """The last event and message seq handed out (one row, id 1).

    PostgreSQL assigns seqs by bumping this row, whose lock serialises
    concurrent committers (see PostgresStorage). SQLite has one writer and
    takes max(seq) + 1 instead; it leaves this row alone.
    """

    __tablename__ = "seq_counters"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    events: int = Field(default=0, sa_type=BigInteger)
    messages: int = Field(default=0, sa_type=BigInteger)


class SchemaVersionRow(SQLModel, table=True):
    __tablename__ = "schema_version"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    description: str
    applied_at: int = Field(sa_type=BigInteger)


def _table(model: type[SQLModel]) -> Table:
    table = SQLModel.metadata.tables[str(model.__tablename__)]
    return table


EXECUTIONS = _table(ExecutionRow)
STEPS = _table(StepRow)
EVENTS = _table(EventRow)
PIPE_MESSAGES = _table(PipeMessageRow)
STATE = _table(StateRow)
WORKERS = _table(WorkerRow)
SEQ_COUNTERS = _table(SeqCounterRow)
SCHEMA_VERSION = _table(SchemaVersionRow)
DATA_TABLES = (EXECUTIONS, STEPS, EVENTS, PIPE_MESSAGES, STATE, WORKERS, SEQ_COUNTERS)

# --- records <-> rows ----------------------------------------------------------

EXECUTION_FIELDS = tuple(f.name for f in fields(ExecutionRecord))
STEP_FIELDS = tuple(f.name for f in fields(StepRecord))
JSON_EXECUTION_FIELDS = frozenset({"input", "output", "error"})
JSON_STEP_FIELDS = frozenset({"output", "error"})


def _not_serialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


if c_make_encoder is not None:
    # json.dumps(v, separators=(",", ":")) builds its C encoder on every call; this
    # one is built once (4x faster on small values). No circular-reference check:
    # a cycle ends in RecursionError instead of ValueError.
    _encode = c_make_encoder(
        None, _not_serialisable, encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def dumps(value: Any) -> str:
        """Compact JSON text, as json.dumps(value, separators=(",", ":"))."""
        return "".join(_encode(value, 0))

else:  # pragma: no cover - interpreters without the C accelerator
    _encoder = json.JSONEncoder(separators=(",", ":"))

    def dumps(value: Any) -> str:
        """Compact JSON text, as json.dumps(value, separators=(",", ":"))."""
        return _encoder.encode(value)


_encode_rows = msgspec.json.Encoder().encode


def dumps_rows(rows: Any) -> str:
    """JSON text of a list of rows whose values are str, int, bool or None (JSON
    fields already encoded by `dumps`): PostgreSQL's one-parameter multi-row
    statements. msgspec's encoder takes about 3/4 of the time of the C encoder's
    chunk list and join; for these values the JSON is the same, except that
    non-ASCII text comes as UTF-8 instead of \\u escapes (the server reads equal strings)."""
    return _encode_rows(rows).decode()


def dumps_opt(value: Any) -> str | None:
    return None if value is None else dumps(value)


def loads_opt(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_execution_attrs = attrgetter(*EXECUTION_FIELDS)
_EXECUTION_JSON_AT = [i for i, name in enumerate(EXECUTION_FIELDS) if name in JSON_EXECUTION_FIELDS]


def execution_values(rec: ExecutionRecord) -> list[Any]:
    """An execution's column values, in EXECUTION_FIELDS order (no dict per row:
    PostgreSQL's insert of new executions sends these lists as they are)."""
    values = list(_execution_attrs(rec))
    for i in _EXECUTION_JSON_AT:
        if values[i] is not None:
            values[i] = dumps(values[i])
    return values


def execution_row(rec: ExecutionRecord) -> dict[str, Any]:
    """`execution_values` by column name."""
    return dict(zip(EXECUTION_FIELDS, execution_values(rec), strict=True))


def execution_record(row: Sequence[Any]) -> ExecutionRecord:
    """From a row whose columns are EXECUTION_FIELDS, in order."""
    values = dict(zip(EXECUTION_FIELDS, row, strict=True))
    for name in JSON_EXECUTION_FIELDS:
        values[name] = loads_opt(values[name])
    return ExecutionRecord(**values)


_step_attrs = attrgetter(*STEP_FIELDS)
_STEP_JSON_AT = [i for i, name in enumerate(STEP_FIELDS) if name in JSON_STEP_FIELDS]


def step_values(step: StepRecord) -> tuple[Any, ...]:
    """A step's column values, in STEP_FIELDS order."""
    values = list(_step_attrs(step))
    for i in _STEP_JSON_AT:
        values[i] = dumps_opt(values[i])
    return tuple(values)


def step_record(row: Sequence[Any]) -> StepRecord:
    """From a row whose columns are STEP_FIELDS, in order."""
    values = dict(zip(STEP_FIELDS, row, strict=True))
    for name in JSON_STEP_FIELDS:
        values[name] = loads_opt(values[name])
    return StepRecord(**values)


#: Insert column order of events and messages; `seq` is prepended at commit.
EVENT_COLUMNS = ("seq", "execution_id", "job_name", "type", "data", "at")
#: The same for a row of one or more events (sql_events.py).
BUNDLE_COLUMNS = (*EVENT_COLUMNS, "more", "upto")
MESSAGE_COLUMNS = ("seq", "pipe", "data", "at")


# Exact types (an IntEnum or a str subclass goes to `dumps`, which encodes it its own way).
_FLAT = frozenset({str, int, bool, type(None)})


def dumps_data(data: Any) -> str:
    """`dumps(data)` of an event's data. Most are flat dicts of str, int, bool and
    None (the attempt's and the steps' events): msgspec encodes those in about a
    third of the time, with the same JSON except non-ASCII text, which it writes as
    UTF-8 (equal strings when read). Anything else, or text msgspec refuses (a lone
    surrogate), goes to `dumps`."""
    if type(data) is dict:
        for k, v in data.items():
            if type(k) is not str or type(v) not in _FLAT:
                return dumps(data)
        try:
            return _encode_rows(data).decode()
        except UnicodeEncodeError:
            return dumps(data)
    return dumps(data)


def event_values(ev: EventRecord) -> tuple[Any, ...]:
    return (ev.execution_id, ev.job_name, ev.type, dumps_data(ev.data), ev.at)


def message_values(msg: PipeMessage) -> tuple[Any, ...]:
    return (msg.pipe, dumps_opt(msg.data), msg.at)


for _record, _table_ in ((ExecutionRecord, EXECUTIONS), (StepRecord, STEPS)):
    _missing = [f.name for f in fields(_record) if f.name not in _table_.c]
    if _missing:  # a record grew: its table needs the column (and a migration)
        raise RuntimeError(f"{_record.__name__} fields {_missing} have no column in {_table_.name}")


# --- migrations -------------------------------------------------------------

Migration = tuple[int, str, Callable[[Connection], None]]


def _initial(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=list(DATA_TABLES), checkfirst=False)
    conn.execute(SEQ_COUNTERS.insert().values(id=1, events=0, messages=0))


def _partial_lineage_indexes(conn: Connection) -> None:
    # Most executions are top-level (no parent, no root): indexing their NULLs cost
    # two index entries per insert and per status change for nothing. Queries by
    # parent_id / root_id always give a value, which implies IS NOT NULL, so both
    # PostgreSQL and SQLite still use these indexes for them.
    for column in ("parent_id", "root_id"):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_executions_{column}")
        conn.exec_driver_sql(
            f"CREATE INDEX ix_executions_{column} ON executions ({column})"
            f" WHERE {column} IS NOT NULL"
        )


def _idempotency_key(conn: Connection) -> None:
    # Migration 1 is create_all of the current tables, so a database created by this
    # version has the column already; one created before it gets it here.
    if "idempotency_key" not in {c["name"] for c in inspect(conn).get_columns("executions")}:
        conn.exec_driver_sql("ALTER TABLE executions ADD COLUMN idempotency_key VARCHAR")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_executions_idempotency_key")
    conn.exec_driver_sql(
        "CREATE INDEX ix_executions_idempotency_key ON executions (idempotency_key)"
        " WHERE idempotency_key IS NOT NULL"
    )


def _dashboard_indexes(conn: Connection) -> None:
    # The dashboard reads "what started / ended in this window" (throughput, failure
    # groups, the started and completed filters with their status counts): without
    # these they scan every execution. Partial: an execution gets an entry when it
    # starts and one when it ends, none while it has no such time; `col > ?` implies
    # IS NOT NULL, so both databases use them.
    for column in ("started_at", "completed_at"):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_executions_{column}")
        conn.exec_driver_sql(
            f"CREATE INDEX ix_executions_{column} ON executions ({column})"
            f" WHERE {column} IS NOT NULL"
        )
    # The executions list filtered by job and status, newest first: walked backwards
    # from (job, status, newest id), a page costs its own rows instead of sorting
    # every execution of that status; its status counts read the index alone.
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_executions_job_name_status_id")
    conn.exec_driver_sql("CREATE INDEX ix_executions_job_name_status_id ON executions (job_name, status, id)")


def _job_created_at_index(conn: Connection) -> None:
    # The jobs list and the job page count their jobs' last 24 hours by created_at
    # (runs, failure rate, p50/p95, the hourly sparkline): without it they read every
    # execution of those jobs. (job_name, created_at) reads one range per job: the
    # day's rows of that job only. Neither column changes after the insert, so
    # SQLite never rewrites its entries.
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_executions_job_name_created_at")
    conn.exec_driver_sql(
        "CREATE INDEX ix_executions_job_name_created_at ON executions (job_name, created_at)"
    )


def _drop_job_name_index(conn: Connection) -> None:
    # (job_name) alone is served by the two indexes that lead with job_name
    # (migrations 6 and 7): a lookup or `IN` on job_name uses either. It only cost
    # writes: every version of a row gets an entry (on PostgreSQL the claim and the
    # completion are not HOT updates, so 3 entries per job), about 5% of the
    # buffers a 1-step job touches on the server.
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_executions_job_name")


def _drop_concurrency_key(conn: Connection) -> None:
    # Never written or read: concurrency keys live in the limit state. Migration 1
    # (create_all of today's tables) no longer creates it, so only databases made
    # before this migration have it; both end with the same schema.
    if "concurrency_key" in {c["name"] for c in inspect(conn).get_columns("executions")}:
        conn.exec_driver_sql("ALTER TABLE executions DROP COLUMN concurrency_key")


def _replays_and_input_index(conn: Connection) -> None:
    # Idempotent, whatever migrations 3 and 4 did: a database created after this
    # column was declared already has it from migration 1.
    columns = {c["name"] for c in inspect(conn).get_columns("executions")}
    if "replay_of" not in columns:
        conn.exec_driver_sql("ALTER TABLE executions ADD COLUMN replay_of VARCHAR")
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_executions_replay_of ON executions (replay_of)"
        " WHERE replay_of IS NOT NULL"
    )
    # The `input={...}` filter is jsonb containment on PostgreSQL; jsonb_path_ops is
    # the smaller GIN operator class and answers exactly `@>`. The expression must
    # stay the one sql_postgres._input_contains writes. SQLite has no index that
    # serves a subset match of any shape: the filter scans what the others leave.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_executions_input ON executions"
            " USING gin ((CAST(input AS JSONB)) jsonb_path_ops)"
        )


def _pg_commit_function(conn: Connection) -> None:
    # PostgreSQL's commit in one round trip (sql_pg_commit.py). SQLite has no such
    # function: its commit stays in Python (the version is still recorded).
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(CREATE_FUNCTION)


def _state_key_byte_order_index(conn: Connection) -> None:
    # list_state(prefix) reads a range of keys in byte order (a slot's line is one
    # row per waiter: slot_lines.py); the primary key's index is in the database's
    # collation, which may order keys otherwise. SQLite's primary key is byte order.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql('CREATE INDEX IF NOT EXISTS ix_state_key_c ON state (key COLLATE "C")')


def _event_bundles(conn: Connection) -> None:
    # A commit's events of one execution stored in one row (sql_events.py): fewer
    # rows and index entries per job. Rows written before keep one event each
    # (both columns NULL), and are read as they were.
    columns = {c["name"] for c in inspect(conn).get_columns("events")}
    for name, sql_type in (("upto", "BIGINT"), ("more", "TEXT")):
        if name not in columns:
            conn.exec_driver_sql(f"ALTER TABLE events ADD COLUMN {name} {sql_type}")


def _pg_commit_function_v2(conn: Connection) -> None:
    # dq_commit_v2: v1 with events a few to a row (migration 11). v1 stays: nothing
    # calls it, and a migration never takes back what an earlier one made.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(CREATE_FUNCTION_V2)


#: Numbered, applied in order, never edited once released (add a new one instead).
#: Numbers are unique but need not be contiguous: branches reserve theirs, and
#: `migrate` applies every one a database has not recorded, so a database that got
#: 5 first still gets 3 and 4 when they arrive. A migration therefore must not
#: depend on the ones numbered below it that it was not written after.
MIGRATIONS: tuple[Migration, ...] = (
    (1, "initial schema", _initial),
    (2, "partial indexes on executions.parent_id and root_id", _partial_lineage_indexes),
    (3, "drop the unused executions.concurrency_key column", _drop_concurrency_key),
    (4, "executions.idempotency_key", _idempotency_key),
    (5, "executions.replay_of; GIN index on executions.input as jsonb (PostgreSQL)", _replays_and_input_index),
    (6, "indexes for the dashboard: started_at, completed_at (partial), (job_name, status, id)", _dashboard_indexes),
    (7, "index on executions (job_name, created_at): the dashboard's 24-hour job figures", _job_created_at_index),
    (8, "function dq_commit_v1: PostgreSQL's commit in one round trip", _pg_commit_function),
    (9, "drop the index on executions (job_name): the (job_name, ...) indexes serve it", _drop_job_name_index),
    (10, "index on state (key) in byte order (PostgreSQL): list_state's prefix ranges", _state_key_byte_order_index),
    (11, "events.upto and events.more: a commit's events of one execution in one row", _event_bundles),
    (12, "function dq_commit_v2: dq_commit_v1 writing events a few to a row", _pg_commit_function_v2),
)


class SchemaTooNewError(DqError, RuntimeError):
    """The database was migrated by a newer dq than this one."""


async def migrate(conn: AsyncConnection, now_ms: int) -> list[int]:
    """Apply the pending migrations on `conn` (inside the caller's transaction,
    which must already exclude concurrent migrators). Returns the versions applied."""

    def create_version_table(sync_conn: Connection) -> None:
        SQLModel.metadata.create_all(sync_conn, tables=[SCHEMA_VERSION], checkfirst=True)

    await conn.run_sync(create_version_table)
    recorded = {int(v) for v in (await conn.execute(select(SCHEMA_VERSION.c.version))).scalars()}
    unknown = recorded - {version for version, _, _ in MIGRATIONS}
    if unknown:
        raise SchemaTooNewError(
            f"database schema has migrations {sorted(unknown)} that this dq does not know "
            f"(it knows {[v for v, _, _ in MIGRATIONS]}); upgrade dq"
        )
    applied: list[int] = []
    # Every version not recorded yet, not only those above the highest: migrations
    # developed in parallel are numbered apart (3 and 6 here), and a database that
    # reached 6 before 3 was released still needs 3.
    for version, description, apply in MIGRATIONS:
        if version in recorded:
            continue
        await conn.run_sync(apply)
        row: dict[str, Any] = {
            "version": version,
            "description": description,
            "applied_at": now_ms,
        }
        await conn.execute(SCHEMA_VERSION.insert(), row)
        applied.append(version)
    return applied
