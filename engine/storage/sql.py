"""SQL storage: SQLite through aiosqlite, PostgreSQL through asyncpg (SQLAlchemy async core).

`SqlStorage` holds every query; the dialect subclasses (sql_sqlite.py,
sql_postgres.py) supply hooks: how a write transaction begins, the clock, row
locks, how sequence numbers are serialised, wake-up notifications and which
driver errors mean what. The schema and its migrations are in sql_tables.py.

`commit`, the group-commit hot path, runs a constant number of statements
whatever the batch size: one SELECT of the executions the batch touches
(locked on PostgreSQL), fence and update conditions decided in Python while
those rows are held, then one executemany per table (and per distinct set of
updated fields). Its statements are compiled once and fed positional tuples;
SQLAlchemy's per-row parameter handling would cost more than the database's
work on this path. SQLite runs the whole transaction in one call on its driver's
thread (`_commit_once`, sql_sqlite.py), `_commit` included.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import (
    URL,
    ColumnElement,
    Dialect,
    Executable,
    Insert,
    Select,
    String,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ..errors import StorageBusyError
from ..ids import now_ms
from . import sql_events
from .base import (
    CLAIMABLE,
    DURATIONS_LIMIT,
    TERMINAL,
    Aggregate,
    Batch,
    CommitResult,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionUpdate,
    PipeMessage,
    StepRecord,
    Storage,
    TimeBuckets,
    exception_chain,
    positive_bound,
)
from .conditions import (
    expectations_fail,
    hands_a_step_slot,
    lock_keys,
    refused_fences,
    update_applies,
)
from .query import json_leaves, prefix_end
from .sql_tables import (
    BUNDLE_COLUMNS,
    EVENTS,
    EXECUTION_FIELDS,
    EXECUTIONS,
    JSON_EXECUTION_FIELDS,
    MESSAGE_COLUMNS,
    PIPE_MESSAGES,
    SCHEMA_VERSION,
    STATE,
    STEP_FIELDS,
    STEPS,
    WORKERS,
    dumps,
    dumps_opt,
    dumps_rows,
    execution_record,
    execution_row,
    loads_opt,
    message_values,
    migrate,
    step_record,
    step_values,
)

log = logging.getLogger("dq.storage.sql")

_E = EXECUTIONS
_EXEC_COLS = [_E.c[name] for name in EXECUTION_FIELDS]
_UPDATABLE = frozenset(EXECUTION_FIELDS) - {"id"}
_COMMIT_ATTEMPTS = 3
Rows = list[dict[str, Any]]


#: One statement of a commit: SQL, parameters, and whether they are many rows.
Write = tuple[str, Any, bool]


class CommitIO(Protocol):
    """The statements of one commit transaction, at driver level."""

    async def fetch(self, sql: str, params: tuple[Any, ...]) -> Sequence[Sequence[Any]]: ...

    async def run(self, writes: list[Write]) -> None:
        """Execute `writes` in order; raise the first error once all have finished."""


class _Compiled:
    """Statements compiled once for a dialect: SQL text and parameter order.

    With `unnest` (PostgreSQL), a statement over many rows becomes one statement
    over a single parameter, the rows as one JSON array of arrays:
    `INSERT ... SELECT (r->>0), (r->>1)::bigint, ... FROM jsonb_array_elements($1)`.
    The server plans and runs it once instead of once per row, and the rows are
    encoded by the C JSON encoder in one call (asyncpg's array encoding checks
    every element against collections.abc, the largest cost of a commit in Python).
    """

    def __init__(self, dialect: Dialect, *, unnest: bool = False) -> None:
        self._dialect = dialect
        self._unnest = unnest
        self._cache: dict[object, tuple[str, tuple[str, ...], bool]] = {}
        self._update_columns: dict[tuple[str, ...], tuple[str, ...]] = {}

    def _compile(self, stmt: Executable) -> tuple[str, tuple[str, ...], bool]:
        compiled = stmt.compile(dialect=self._dialect)  # type: ignore[attr-defined]
        names = tuple(compiled.positiontup or ())
        sql: str = compiled.string
        if self._unnest and isinstance(stmt, Insert):
            return self._unnest_insert(stmt, sql, names), names, False
        if self._unnest and isinstance(stmt, Update) and names and names[-1] == "pk_":
            return self._unnest_update(stmt, names), names, False
        return sql, names, True

    @staticmethod
    def _field(table: Table, column: str, i: int) -> str:
        """Element `i` of a row `r` of the JSON parameter, as the column's type."""
        return f"(r->>{i})::bigint" if table.c[column].type.python_type is int else f"(r->>{i})"

    def _unnest_insert(self, stmt: Insert, sql: str, names: tuple[str, ...]) -> str:
        table = stmt.table
        assert isinstance(table, Table)
        quote = self._dialect.identifier_preparer.quote
        fields = ", ".join(self._field(table, n, i) for i, n in enumerate(names))
        cols = ", ".join(quote(n) for n in names)
        tail = sql[sql.index(" ON CONFLICT") :] if " ON CONFLICT" in sql else ""
        return f"INSERT INTO {quote(table.name)} ({cols}) SELECT {fields} FROM jsonb_array_elements($1::jsonb) AS j(r){tail}"

    def _unnest_update(self, stmt: Update, names: tuple[str, ...]) -> str:
        """An `_update_by_id` statement over all rows at once. The rows are already
        locked (commit's first SELECT), so the join's order takes no lock in a
        different order."""
        table = stmt.table
        assert isinstance(table, Table)
        quote = self._dialect.identifier_preparer.quote
        fields = [n[2:] for n in names[:-1]]  # v_<column>
        cols = [f"{self._field(table, f, i)} AS {quote(n)}" for i, (f, n) in enumerate(zip(fields, names[:-1], strict=True))]
        cols.append(f"(r->>{len(fields)}) AS pk_")
        sets = ", ".join(f"{quote(f)} = u.{quote(n)}" for f, n in zip(fields, names[:-1], strict=True))
        return (
            f"UPDATE {quote(table.name)} AS t SET {sets}"
            f" FROM (SELECT {', '.join(cols)} FROM jsonb_array_elements($1::jsonb) AS j(r)) AS u"
            " WHERE t.id = u.pk_"
        )

    def _get(
        self, key: object, build: Callable[[], Executable]
    ) -> tuple[str, tuple[str, ...], bool]:
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = self._compile(build())
        return entry

    def write(self, key: object, build: Callable[[], Executable], rows: Rows) -> Write:
        """`build()` for each of `rows` (dicts keyed by parameter name)."""
        sql, names, many = self._get(key, build)
        return self._write(sql, many, [tuple([row[n] for n in names]) for row in rows])

    def write_updates(self, names: tuple[str, ...], rows: list[tuple[str, dict[str, Any]]]) -> Write:
        """`_update_by_id(names)` for each `(id, fields)` of `rows`: the values go
        straight into the statement's parameter order (no dict per row)."""
        sql, order, many = self._get(names, _update_by_id(names))
        cols = self._update_columns.get(order)
        if cols is None:  # v_<column> ..., then pk_ (the WHERE comes after SET)
            assert order[-1] == "pk_"
            cols = self._update_columns[order] = tuple(n[2:] for n in order[:-1])
        return self._write(sql, many, [(*map(fields.__getitem__, cols), eid) for eid, fields in rows])

    def write_tuples(
        self,
        key: object,
        build: Callable[[], Executable],
        names: tuple[str, ...],
        rows: list[tuple[Any, ...]],
    ) -> Write:
        """`build()` for each of `rows` (tuples of the parameters `names`, in order)."""
        sql, order, many = self._get(key, build)
        if order != names:
            index = [names.index(n) for n in order]
            rows = [tuple([row[i] for i in index]) for row in rows]
        return self._write(sql, many, rows)

    @staticmethod
    def _write(sql: str, many: bool, rows: list[tuple[Any, ...]]) -> Write:
        return (sql, rows, True) if many else (sql, (dumps_rows(rows),), False)


@dataclass(slots=True)
class _Prepared:
    """A batch serialised before the write transaction (no JSON work under the lock)."""

    new_rows: Rows
    updates: list[tuple[ExecutionUpdate, dict[str, Any]]]
    steps: dict[tuple[str, str], tuple[Any, ...]]  # the last record of a key wins
    events: list[sql_events.Row]
    messages: list[tuple[Any, ...]]
    state_set: list[tuple[str, str]]
    state_del: list[tuple[str]]

    @classmethod
    def of(cls, batch: Batch) -> _Prepared:
        state = sorted(batch.state.items())
        # A fast step's start and end records usually share a group: only the last is encoded.
        last_steps = {(s.execution_id, s.key): s for s in batch.steps}
        return cls(
            new_rows=[execution_row(rec) for rec in batch.executions],
            updates=[(u, _update_fields(u.id, u.fields)) for u in batch.updates],
            steps={k: step_values(s) for k, s in last_steps.items()},
            events=sql_events.bundle(batch.events),
            messages=[message_values(msg) for msg in batch.messages],
            state_set=[(k, dumps(v)) for k, v in state if v is not None],
            state_del=[(k,) for k, v in state if v is None],
        )


_S = TypeVar("_S", bound="SqlStorage")
_P = ParamSpec("_P")
_T = TypeVar("_T")


def runs_to_end(
    method: Callable[Concatenate[_S, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, _T]]:
    """Run a write to its end (COMMIT or ROLLBACK) even when its caller is cancelled
    (a shutdown does that): the caller gets CancelledError at once and, as after a
    lost connection, does not know the outcome. A write cut off half-way would leave
    its connection to SQLAlchemy's cancellation handling, which closes it without
    waiting and, on SQLite, can leave the write lock held until garbage collection."""

    async def run(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        self._inflight.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    functools.update_wrapper(run, method)
    return run


def _update_by_id(names: tuple[str, ...]) -> Callable[[], Executable]:
    """UPDATE executions SET <names> WHERE id = :pk_ (bound as v_<name> and pk_).
    Built only when called: `_Compiled` calls it once per set of names."""

    def build() -> Executable:
        values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in names}
        return update(_E).where(_E.c.id == bindparam("pk_")).values(values)

    return build


@dataclass(slots=True)
class _Row:
    """The columns of a stored execution the batch's conditions read (see conditions.py)."""

    token: int
    status: str
    control: str | None


def _update_fields(upd_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    if not _UPDATABLE.issuperset(fields):  # no set built on the usual path
        unknown = set(fields) - _UPDATABLE
        raise ValueError(f"update of execution {upd_id!r} sets unknown fields {sorted(unknown)}")
    return {k: dumps_opt(v) if k in JSON_EXECUTION_FIELDS else v for k, v in fields.items()}


class BoundedPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's queue pool, sized explicitly: a call waits for a free connection
    (back-pressure); past the pool's timeout, dq's StorageBusyError (nothing was sent)."""

    def _do_get(self) -> Any:
        try:
            return super()._do_get()
        except sa_exc.TimeoutError as exc:
            raise StorageBusyError(
                f"no database connection became free within {self.timeout()} s "
                f"(pool size {self.size()}); nothing was sent"
            ) from exc


# SQLAlchemy names a pool's logger after its class, which puts it under dq's logger:
# its INFO lines (pool disposed / recreating at shutdown) are not dq's news.
logging.getLogger(f"{__name__}.{BoundedPool.__name__}").setLevel(logging.WARNING)


class SqlStorage(Storage):
    """Storage on a SQL database. Build it with `SqlStorage.sqlite(path)` or
    `SqlStorage.postgres(dsn)`; `open()` connects and migrates the schema."""

    kind = "sql"
    #: Connections the pool holds at most, and how long a call waits for one
    #: before raising StorageBusyError.
    max_connections = 10
    acquire_timeout_s = 30.0

    def __init__(self, url: URL, *, max_connections: int | None = None, acquire_timeout_s: float | None = None) -> None:
        self.max_connections = int(positive_bound(max_connections, "max_connections", self.max_connections))
        self.acquire_timeout_s = float(positive_bound(acquire_timeout_s, "acquire_timeout", self.acquire_timeout_s))
        self._url = url
        self._engine: AsyncEngine | None = None
        self._compiled: _Compiled | None = None
        self._open_lock = asyncio.Lock()
        self._wakeup_callbacks: list[Callable[[], None]] = []
        self._inflight: set[asyncio.Future[Any]] = set()

    def _write_done(self, task: asyncio.Future[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here: its caller may have been cancelled and gone.
            log.debug("%s storage: write failed: %r", self.kind, task.exception())

    def pool_options(self) -> dict[str, Any]:
        """`create_async_engine` options that bound the connections (see BoundedPool).
        LIFO: a checkout takes the connection used last, whose statements are prepared and
        whose server backend has its caches filled; FIFO rotated serial commits (a limit's
        generations) over every connection a burst had opened, each preparing anew."""
        return {
            "poolclass": BoundedPool, "pool_size": self.max_connections, "max_overflow": 0,
            "pool_timeout": self.acquire_timeout_s, "pool_use_lifo": True,
        }  # fmt: skip

    # The dialects subclass SqlStorage, so they are imported here, when chosen
    # (deliberately: tests/engine/test_imports.py lists these two); the module of
    # the one not chosen, and its driver, are never loaded.
    @classmethod
    def sqlite(cls, path: str, **bounds: Any) -> SqlStorage:
        from .sql_sqlite import SqliteStorage

        return SqliteStorage(str(path), **bounds)

    @classmethod
    def postgres(cls, dsn: str, **bounds: Any) -> SqlStorage:
        from .sql_postgres import PostgresStorage

        return PostgresStorage(dsn, **bounds)

    # --- dialect hooks ----------------------------------------------------

    @abc.abstractmethod
    def _create_engine(self) -> AsyncEngine: ...

    @abc.abstractmethod
    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction, committed when the block exits normally."""

    def _commit_txn(self) -> AbstractAsyncContextManager[CommitIO]:
        """The write transaction of `commit`, at driver level (see `_commit_once`)."""
        raise NotImplementedError

    async def _commit_once(self, batch: Batch, prepared: _Prepared) -> CommitResult:
        """One attempt of `commit`: `_commit` in a `_commit_txn` transaction. SQLite
        runs the whole transaction in its driver's thread instead."""
        async with self._commit_txn() as io:
            return await self._commit(io, batch, prepared)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self.engine.connect()

    @abc.abstractmethod
    def _now_sql(self) -> ColumnElement[int]:
        """The storage clock as an SQL expression (evaluated inside the transaction)."""

    @abc.abstractmethod
    def _ids_in(self, column: ColumnElement[Any], ids: Iterable[str]) -> ColumnElement[bool]:
        """`column IN ids`, bound as one parameter (no limit on the number of ids)."""

    def _contains_ci(self, column: ColumnElement[Any], needle: str) -> ColumnElement[bool]:
        # instr/strpos rather than LIKE: no wildcard escaping, exact substring semantics.
        return func.instr(func.upper(column), func.upper(literal(needle, String))) > 0

    def _input_contains(self, column: ColumnElement[Any], sub: dict[str, Any]) -> ColumnElement[bool]:
        """`query.json_contains(column, sub)` in SQL. This form is SQLite's JSON1: one
        json_type check per leaf (JSON's types, so true is not 1) and json_extract
        for its value; a scan of the rows the other conditions leave."""
        conds: list[ColumnElement[bool]] = [func.json_type(column) == "object"]
        for path, value in json_leaves(sub):
            # Keys as the stored text spells them (ASCII escapes): SQLite matches path
            # keys against the raw text.
            where = literal("$" + "".join("." + encode_basestring_ascii(key) for key in path), String)
            kind = func.json_type(column, where)
            if isinstance(value, bool) or value is None:
                conds.append(kind == ("null" if value is None else str(value).lower()))
            elif isinstance(value, dict):
                conds.append(kind == "object")
            elif isinstance(value, list):
                conds.append(and_(kind == "array", func.json_extract(column, where) == func.json(dumps(value))))
            elif isinstance(value, str):
                conds.append(and_(kind == "text", func.json_extract(column, where) == value))
            else:
                conds.append(and_(kind.in_(("integer", "real")), func.json_extract(column, where) == value))
        return and_(*conds)

    def _key_prefix(self, prefix: str) -> list[ColumnElement[bool]]:
        """State keys starting with `prefix` (case-sensitive, no wildcards): the range
        [prefix, `prefix_end`) in byte order, which an index serves (a slot's line is
        one row per waiter: `slot_lines.py`)."""
        end = prefix_end(prefix)
        if end is None:  # no successor: the scan reads them all
            return [func.substr(STATE.c.key, 1, len(prefix)) == prefix]
        key = self._state_key_in_byte_order()
        return [key >= prefix, key < end]

    def _state_key_in_byte_order(self) -> ColumnElement[str]:
        """`state.key` compared in byte order: SQLite's own (its primary key's index)."""
        return STATE.c.key

    def _beside_window(self, cond: ColumnElement[bool]) -> ColumnElement[bool]:
        """`cond` marked as not the one to pick an index by, beside a time window
        (`aggregate`): PostgreSQL's planner knows from its statistics."""
        return cond

    def _locking(self, ids: Select[Any], *, skip_locked: bool) -> Select[Any]:
        """`ids` (a SELECT of execution ids) as a subquery for `WHERE id IN (...)`
        that row-locks them first, in its order, where writers are concurrent;
        `skip_locked` leaves out rows another transaction holds."""
        return ids

    @abc.abstractmethod
    async def _read_touched(
        self, io: CommitIO, ids: set[str], state_keys: list[str], expect: list[str]
    ) -> tuple[dict[str, list[Any]], dict[str, Any], tuple[int, int] | None]:
        """What the batch's conditions depend on, held until the transaction ends:
        id -> [token, status, control] of the existing `ids`; the present `expect`
        state keys with their (decoded) values, with every one of the sorted
        `state_keys` (those the batch expects or writes, `lock_keys`) kept from other writers;
        and the last event/message seqs if they came along."""

    async def _append_log(
        self, io: CommitIO, events: list[tuple[Any, ...]], n_events: int, messages: list[tuple[Any, ...]],
        notify: bool,
    ) -> tuple[int, int]:  # fmt: skip
        """Insert the commit's event rows (`sql_events.offsets`: `n_events` events in
        all) and pipe messages (their values without seq) with the next seqs, and send
        the wake-up if `notify`; returns the last event and message seqs before them.
        Needed by dialects whose `_read_touched` does not return the last seqs."""
        raise NotImplementedError

    #: Whether commit reads the batch's new execution ids (to refuse existing ones with a
    #: clear error). Where a read would also lock rows, the INSERT's primary key refuses
    #: them instead (`_is_duplicate_execution`).
    _look_up_new_ids = True

    #: A statement that tells other processes that work became due (sent on COMMIT).
    _notify_sql: tuple[str, tuple[Any, ...]] | None = None

    async def _migration_lock(self, conn: AsyncConnection) -> None:
        """Exclude concurrent migrators for the rest of the transaction."""

    @abc.abstractmethod
    def _insert(self) -> Any:
        """The dialect's INSERT construct (it has `on_conflict_do_update`)."""

    #: The errors a commit's statements raise (the driver's own where commit bypasses
    #: SQLAlchemy): `_is_retryable` and `_is_duplicate_execution` classify them.
    _statement_errors: tuple[type[Exception], ...] = (DBAPIError,)

    @abc.abstractmethod
    def _is_duplicate_execution(self, exc: Exception) -> bool:
        """A unique violation of the executions' primary key (a concurrent insert)."""

    def _is_retryable(self, exc: Exception) -> bool:
        return False

    async def _before_migrations(self) -> None:
        """Prepare the database (SQLite: WAL mode)."""

    async def _after_open(self) -> None:
        """Start dialect background work (PostgreSQL: LISTEN)."""

    async def _before_close(self) -> None:
        """Stop dialect background work."""

    # --- lifecycle --------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"{self.kind} storage is not open: await storage.open() first")
        return self._engine

    async def open(self) -> None:
        async with self._open_lock:
            if self._engine is not None:
                return
            self._engine = self._create_engine()
            self._compiled = _Compiled(self._engine.dialect, unnest=self.kind == "postgres")
            try:
                await self._before_migrations()
                async with self._write() as conn:
                    await self._migration_lock(conn)
                    applied = await migrate(conn, now_ms())
                if applied:
                    log.info("%s storage: applied schema migrations %s", self.kind, applied)
                await self._after_open()
            except BaseException:
                await self._before_close()
                engine, self._engine = self._engine, None
                await engine.dispose()
                raise

    async def aclose(self) -> None:
        async with self._open_lock:
            if self._engine is None:
                return
            while self._inflight:  # writes whose callers were cancelled
                await asyncio.gather(*self._inflight, return_exceptions=True)
            await self._before_close()
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def schema_version(self) -> int:
        """The version recorded by the last applied migration."""
        stmt = select(func.max(SCHEMA_VERSION.c.version))
        async with self._read() as conn:
            return int((await conn.execute(stmt)).scalar() or 0)

    async def now(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(select(self._now_sql()))).scalar_one())

    # --- commit (the hot path) --------------------------------------------

    @runs_to_end
    async def commit(self, batch: Batch) -> CommitResult:
        if not batch and not batch.fences and not batch.expect:
            return CommitResult()
        prepared = _Prepared.of(batch)
        return await self._retrying(lambda: self._commit_once(batch, prepared))

    async def _retrying(self, attempt_once: Callable[[], Awaitable[CommitResult]]) -> CommitResult:
        """`attempt_once()` (one commit transaction), again after a deadlock or a
        serialization failure; a duplicate execution id becomes a ValueError."""
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                return await attempt_once()
            except self._statement_errors as exc:
                orig = getattr(exc, "orig", exc)
                if self._is_retryable(exc) and attempt < _COMMIT_ATTEMPTS:
                    log.info("%s storage: commit retried after %s", self.kind, orig)
                    continue
                if self._is_duplicate_execution(exc):
                    details = [getattr(e, "detail", None) for e in exception_chain(exc)]
                    detail = next((d for d in details if d), "")  # PostgreSQL: Key (id)=(...)
                    raise ValueError(
                        f"an execution of the batch already exists: {orig} {detail}".rstrip()
                    ) from exc
                raise
        raise AssertionError("unreachable")

    async def _commit(self, io: CommitIO, batch: Batch, prepared: _Prepared) -> CommitResult:
        result = CommitResult()
        refused = result.refused
        sql = self._compiled
        assert sql is not None
        new_rows = [dict(row) for row in prepared.new_rows]  # updates fold into these
        new_by_id: dict[str, dict[str, Any]] = {}
        for row in new_rows:
            if new_by_id.setdefault(row["id"], row) is not row:
                raise ValueError(f"execution {row['id']!r} appears twice in one batch")

        # 1. Read (and on PostgreSQL lock) what the batch's conditions depend on.
        touched = set(batch.fences).union(u.id for u in batch.updates)
        if self._look_up_new_ids:
            touched.update(new_by_id)
        state_keys = lock_keys(batch.expect, batch.state)
        current, state_now, last_seqs = await self._read_touched(
            io, touched, state_keys, list(batch.expect)
        )
        if expectations_fail(batch.expect, state_now.get):
            result.conflict = True  # a compare-and-set lost: write nothing
            return result
        for eid in new_by_id:
            if eid in current:
                raise ValueError(f"execution {eid!r} already exists")

        # 2. Decide fences and update conditions in Python while the rows are held.
        # id -> the conditions' columns, as the updates apply
        sim = {eid: _Row(*row) for eid, row in current.items()}
        sim.update((r["id"], _Row(r["token"], r["status"], r["control"])) for r in new_rows)
        refused_fences(batch.fences, sim.get, refused)
        merged: dict[str, dict[str, Any]] = {}
        notify = bool(batch.messages) or any(r["status"] in CLAIMABLE for r in new_rows)
        for upd, fields in prepared.updates:
            cur = sim.get(upd.id)
            ok = update_applies(upd, cur, refused)
            result.applied.append(ok)
            if not ok or cur is None:
                continue
            for name in ("token", "status", "control"):
                if name in fields:
                    setattr(cur, name, fields[name])
            notify = notify or fields.get("status") in CLAIMABLE or "run_at" in fields
            if upd.id in new_by_id:
                new_by_id[upd.id].update(fields)  # fold into the insert
            else:
                merged.setdefault(upd.id, {}).update(fields)

        # 3. Writes: one statement per table / per distinct set of updated fields.
        writes: list[Write] = []
        if new_rows:
            writes.append(sql.write("insert_executions", _E.insert, new_rows))
        groups: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
        for eid in sorted(merged):  # sorted: the same lock order in every writer
            fields = merged[eid]
            groups.setdefault(tuple(sorted(fields)), []).append((eid, fields))
        for names, rows in groups.items():
            writes.append(sql.write_updates(names, rows))
        steps = prepared.steps
        if refused:
            steps = {k: v for k, v in steps.items() if k[0] not in refused}
        if steps:  # sorted, as above
            step_rows = [steps[k] for k in sorted(steps)]
            stmt = self._upsert_steps
            writes.append(sql.write_tuples("upsert_steps", stmt, STEP_FIELDS, step_rows))
        if prepared.state_set:
            stmt = self._upsert_state
            writes.append(
                sql.write_tuples("upsert_state", stmt, ("key", "value"), prepared.state_set)
            )
        if prepared.state_del:
            writes.append(
                sql.write_tuples("delete_state", _delete_state, ("key",), prepared.state_del)
            )
        events = prepared.events
        if refused:  # a row is one execution's: dropped whole
            events = [row for row in events if row[0][0].execution_id not in refused]
        messages = prepared.messages
        # A slot handed to a step waiting in another process: wake that process.
        notify = notify or hands_a_step_slot(batch.state)
        if (events or messages) and last_seqs is None:
            # The dialect numbers and inserts them in the commit's last statement (the
            # seq counter's lock is taken last: see PostgresStorage._LOCK_STATE's comment).
            await io.run(writes)
            writes = []
            n_events = sql_events.count(events)
            last_seqs = await self._append_log(io, sql_events.offsets(events), n_events, messages, notify)
            notify = False
            result.events.extend(sql_events.number(events, last_seqs[0] + 1))
            for seq, msg in enumerate(batch.messages, start=last_seqs[1] + 1):
                msg.seq = seq
        elif events or messages:
            assert last_seqs is not None
            if events:
                result.events.extend(sql_events.number(events, last_seqs[0] + 1))
                event_rows = sql_events.numbered_values(events)
                stmt = EVENTS.insert
                writes.append(sql.write_tuples("insert_events", stmt, BUNDLE_COLUMNS, event_rows))
            if messages:
                message_rows = []
                for seq, (msg, values) in enumerate(
                    zip(batch.messages, messages, strict=True), start=last_seqs[1] + 1
                ):
                    msg.seq = seq
                    message_rows.append((seq, *values))
                stmt = PIPE_MESSAGES.insert
                writes.append(
                    sql.write_tuples("insert_messages", stmt, MESSAGE_COLUMNS, message_rows)
                )
        if notify and self._notify_sql is not None:
            writes.append((*self._notify_sql, False))
        await io.run(writes)
        for eid in batch.fences:
            if eid not in refused:
                result.controls[eid] = sim[eid].control
        return result

    def _upsert_steps(self) -> Executable:
        stmt = self._insert()(STEPS)
        keys = {"execution_id", "key"}
        upsert: Executable = stmt.on_conflict_do_update(
            index_elements=[STEPS.c.execution_id, STEPS.c.key],
            set_={c.name: stmt.excluded[c.name] for c in STEPS.c if c.name not in keys},
        )
        return upsert

    def _upsert_state(self) -> Executable:
        stmt = self._insert()(STATE)
        upsert: Executable = stmt.on_conflict_do_update(
            index_elements=[STATE.c.key], set_={"value": stmt.excluded.value}
        )
        return upsert

    # --- leases -----------------------------------------------------------

    @staticmethod
    def _job_filter(
        job_names: Sequence[Any] | None, exclude_jobs: Sequence[Any]
    ) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = []
        if job_names is not None:
            conds.append(_E.c.job_name.in_(list(job_names)))
        if exclude_jobs:
            conds.append(_E.c.job_name.not_in(list(exclude_jobs)))
        return conds

    @runs_to_end
    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        job_names: Sequence[str] | None = None,
        exclude_jobs: Sequence[str] = (),
    ) -> list[ExecutionRecord]:
        if limit <= 0:
            return []
        rows = await self._claim_rows(worker_id, limit, lease_ms, job_names, list(exclude_jobs))
        recs = [execution_record(r) for r in rows]
        recs.sort(key=lambda r: (-r.priority, r.run_at, r.id))
        return recs

    async def _claim_rows(
        self, worker_id: str, limit: int, lease_ms: int, job_names: Sequence[str] | None, exclude_jobs: list[str]
    ) -> Iterable[Sequence[Any]]:
        """The claimed rows of `claim` (`_EXEC_COLS`), in one write transaction."""
        async with self._write() as conn:
            stmt = self._claim_statement(
                worker_id, now=self._now_sql(), lease_ms=lease_ms, limit=limit,
                job_names=job_names, exclude_jobs=exclude_jobs,
            )  # fmt: skip
            return list(await conn.execute(stmt))

    def _claim_statement(
        self,
        worker_id: Any,
        *,
        now: Any,
        lease_ms: Any,
        limit: Any,
        job_names: Sequence[Any] | None,
        exclude_jobs: Sequence[Any],
    ) -> Executable:
        """`claim`'s UPDATE ... RETURNING the claimed rows. The arguments are values
        or SQL expressions (SQLite binds them all, to compile the statement once)."""
        due = select(_E.c.id).where(
            _E.c.status.in_(CLAIMABLE),
            _E.c.run_at <= now,
            *self._job_filter(job_names, exclude_jobs),
        )
        due = due.order_by(_E.c.priority.desc(), _E.c.run_at, _E.c.id).limit(limit)
        return (
            update(_E)
            .where(
                _E.c.id.in_(self._locking(due, skip_locked=True)),
                _E.c.status.in_(CLAIMABLE),
            )
            .values(
                status="running",
                worker_id=worker_id,
                lease_until=now + lease_ms,
                token=_E.c.token + 1,
                started_at=func.coalesce(_E.c.started_at, now),
            )
            .returning(*_EXEC_COLS)
        )

    @runs_to_end
    async def renew(
        self, worker_id: str, ids: Sequence[str], lease_ms: int
    ) -> dict[str, str | None]:
        if not ids:
            return {}
        held = (_E.c.status == "running", _E.c.worker_id == worker_id)
        mine = select(_E.c.id).where(self._ids_in(_E.c.id, ids), *held).order_by(_E.c.id)
        async with self._write() as conn:
            stmt = (
                update(_E)
                .where(_E.c.id.in_(self._locking(mine, skip_locked=False)), *held)
                .values(lease_until=self._now_sql() + lease_ms)
                .returning(_E.c.id, _E.c.control)
            )
            return {r[0]: r[1] for r in await conn.execute(stmt)}

    @runs_to_end
    async def reclaim(self, dead_workers: Sequence[str] = ()) -> list[str]:
        async with self._write() as conn:
            expired: ColumnElement[bool] = _E.c.lease_until < self._now_sql()
            if dead_workers:
                expired = or_(expired, _E.c.worker_id.in_(list(dead_workers)))
            lost = select(_E.c.id).where(_E.c.status == "running", expired).order_by(_E.c.id)
            # A row being written right now is skipped: the next reclaim sees it again.
            stmt = (
                update(_E)
                .where(
                    _E.c.id.in_(self._locking(lost, skip_locked=True)),
                    _E.c.status == "running",
                    expired,
                )
                .values(status="pending", worker_id=None, lease_until=None, token=_E.c.token + 1)
                .returning(_E.c.id)
            )
            ids = [r[0] for r in await conn.execute(stmt)]
            if ids and self._notify_sql is not None:
                await conn.exec_driver_sql(*self._notify_sql)
        return sorted(ids)

    # --- reads ------------------------------------------------------------

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(*_EXEC_COLS).where(_E.c.id == execution_id))).first()
        return None if row is None else execution_record(row)

    def _where(self, q: ExecutionQuery, *, paging: bool) -> list[ColumnElement[bool]]:
        """The SQL form of `query.matches`: same fields, same strict bounds."""
        c = _E.c
        conds: list[ColumnElement[bool]] = []
        if q.statuses is not None:
            conds.append(c.status.in_(list(q.statuses)))
        if q.job_names is not None:
            conds.append(c.job_name.in_(list(q.job_names)))
        if q.ids is not None:
            conds.append(self._ids_in(c.id, q.ids))
        if q.id_contains:
            conds.append(self._contains_ci(c.id, q.id_contains))
        if q.parent_id is not None:
            conds.append(c.parent_id == q.parent_id)
        if q.root_id is not None:
            conds.append(c.root_id == q.root_id)
        if q.replay_of is not None:
            conds.append(c.replay_of == q.replay_of)
        for col, after, before in (
            (c.created_at, q.created_after, q.created_before),
            (c.started_at, q.started_after, q.started_before),
            (c.completed_at, q.completed_after, q.completed_before),
        ):
            if after is not None:
                conds.append(col > after)
            if before is not None:
                conds.append(col < before)
        if q.retry_count is not None:
            conds.append(c.retry_count == q.retry_count)
        if q.retry_count_less_than is not None:
            conds.append(c.retry_count < q.retry_count_less_than)
        if q.retry_count_greater_than is not None:
            conds.append(c.retry_count > q.retry_count_greater_than)
        if q.idempotency_key is not None:
            conds.append(c.idempotency_key == q.idempotency_key)
        if q.input is not None:
            conds.append(self._input_contains(c.input, q.input))
        if paging and q.cursor is not None:
            conds.append(c.id < q.cursor if q.order == "newest" else c.id > q.cursor)
        return conds

    async def query(self, query: ExecutionQuery) -> list[ExecutionRecord]:
        stmt = select(*_EXEC_COLS).where(*self._where(query, paging=True))
        stmt = stmt.order_by(_E.c.id.desc() if query.order == "newest" else _E.c.id.asc())
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        if query.offset:
            stmt = stmt.offset(query.offset)
        async with self._read() as conn:
            return [execution_record(r) for r in await conn.execute(stmt)]

    async def count(self, query: ExecutionQuery) -> dict[str, int]:
        stmt = select(_E.c.status, func.count()).where(*self._where(query, paging=False))
        async with self._read() as conn:
            return {r[0]: int(r[1]) for r in await conn.execute(stmt.group_by(_E.c.status))}

    async def aggregate(self, query: ExecutionQuery, buckets: TimeBuckets, *, durations: bool = False) -> Aggregate:
        """One GROUP BY for the counts (and one narrow SELECT for the run times)."""
        c = _E.c
        col = c[buckets.field]
        # The time window leads: its index (started_at, completed_at; (job_name,
        # created_at) with the jobs) reads only the window's rows, whatever else the
        # query filters on.
        where = [col >= buckets.start, col < buckets.end, *map(self._beside_window, self._where(query, paging=False))]
        window = ((col - buckets.start) // buckets.width_ms).label("window")
        stmt = select(c.job_name, c.status, window, func.count()).where(*where)
        agg = Aggregate()
        async with self._read() as conn:
            for job_name, status, i, n in await conn.execute(stmt.group_by(c.job_name, c.status, window)):
                row = agg.counts.setdefault((job_name, status), [0] * buckets.n)
                row[int(i)] += int(n)
            if durations:
                done = and_(c.status == "completed", c.started_at.is_not(None), c.completed_at.is_not(None))
                took = select(c.job_name, c.completed_at - c.started_at).where(*where, self._beside_window(done))
                took = took.order_by(c.id.desc()).limit(DURATIONS_LIMIT)
                for job_name, ms in await conn.execute(took):
                    agg.durations.setdefault(job_name, []).append(int(ms))
        for values in agg.durations.values():
            values.sort()
        return agg

    async def get_steps(self, execution_id: str) -> list[StepRecord]:
        stmt = (
            select(*(STEPS.c[name] for name in STEP_FIELDS))
            .where(STEPS.c.execution_id == execution_id)
            .order_by(STEPS.c.seq, STEPS.c.key)
        )
        async with self._read() as conn:
            return [step_record(r) for r in await conn.execute(stmt)]

    async def get_steps_many(self, execution_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """One SELECT, the ids bound as one parameter (`_ids_in`)."""
        out: dict[str, list[StepRecord]] = {eid: [] for eid in execution_ids}
        if not out:
            return out
        stmt = (
            select(*(STEPS.c[name] for name in STEP_FIELDS))
            .where(self._ids_in(STEPS.c.execution_id, list(out)))
            .order_by(STEPS.c.execution_id, STEPS.c.seq, STEPS.c.key)
        )
        async with self._read() as conn:
            for row in await conn.execute(stmt):
                step = step_record(row)
                out[step.execution_id].append(step)
        return out

    async def read_events(
        self, after_seq: int = 0, *, limit: int = 1000, execution_id: str | None = None
    ) -> list[EventRecord]:
        ev = EVENTS.c
        stmt = select(ev.execution_id, ev.job_name, ev.type, ev.data, ev.at, ev.seq, ev.more)
        # The rows holding an event past `after_seq`: those after it, and a row of
        # several that starts at most MAX_BUNDLE - 1 before it and ends past it.
        stmt = stmt.where(
            ev.seq > after_seq - sql_events.MAX_BUNDLE + 1, or_(ev.seq > after_seq, ev.upto > after_seq)
        )
        if execution_id is not None:
            stmt = stmt.where(ev.execution_id == execution_id)
        async with self._read() as conn:
            rows = (await conn.execute(stmt.order_by(ev.seq).limit(limit))).all()
        out = [e for r in rows for e in sql_events.expand(*r) if e.seq > after_seq]
        return out[:limit]

    async def last_event_seq(self) -> int:
        ev = EVENTS.c
        async with self._read() as conn:
            row = (await conn.execute(select(ev.seq, ev.upto).order_by(ev.seq.desc()).limit(1))).first()
        return 0 if row is None else int(row[1] if row[1] is not None else row[0])

    async def next_due(
        self, job_names: Sequence[str] | None = None, exclude_jobs: Sequence[str] = ()
    ) -> int | None:
        stmt = select(func.min(_E.c.run_at)).where(
            _E.c.status.in_(CLAIMABLE), *self._job_filter(job_names, exclude_jobs)
        )
        async with self._read() as conn:
            value = (await conn.execute(stmt)).scalar()
        return None if value is None else int(value)

    async def read_messages(
        self, pipe: str, after_seq: int = 0, *, limit: int = 1000
    ) -> list[PipeMessage]:
        m = PIPE_MESSAGES.c
        stmt = select(m.pipe, m.data, m.at, m.seq).where(m.pipe == pipe, m.seq > after_seq)
        async with self._read() as conn:
            rows = (await conn.execute(stmt.order_by(m.seq).limit(limit))).all()
        return [PipeMessage(r[0], loads_opt(r[1]), r[2], r[3]) for r in rows]

    async def last_message_seq(self, pipe: str) -> int:
        stmt = select(func.max(PIPE_MESSAGES.c.seq)).where(PIPE_MESSAGES.c.pipe == pipe)
        async with self._read() as conn:
            return int((await conn.execute(stmt)).scalar() or 0)

    async def get_state(self, keys: Sequence[str]) -> dict[str, Any]:
        if not keys:
            return {}
        stmt = select(STATE.c.key, STATE.c.value).where(self._ids_in(STATE.c.key, keys))
        async with self._read() as conn:
            return {r[0]: json.loads(r[1]) for r in await conn.execute(stmt)}

    async def list_state(self, prefix: str) -> dict[str, Any]:
        stmt = select(STATE.c.key, STATE.c.value).order_by(STATE.c.key)
        if prefix:
            stmt = stmt.where(*self._key_prefix(prefix))
        async with self._read() as conn:
            return {r[0]: json.loads(r[1]) for r in await conn.execute(stmt)}

    # --- workers ----------------------------------------------------------

    @runs_to_end
    async def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        async with self._write() as conn:
            stmt = self._insert()(WORKERS).values(
                id=worker_id, info=dumps(info), last_heartbeat=self._now_sql()
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[WORKERS.c.id],
                set_={"info": stmt.excluded.info, "last_heartbeat": stmt.excluded.last_heartbeat},
            )
            await conn.execute(stmt)

    async def list_workers(self) -> list[dict[str, Any]]:
        w = WORKERS.c
        async with self._read() as conn:
            rows = (await conn.execute(select(w.id, w.info, w.last_heartbeat).order_by(w.id))).all()
        return [{"id": r[0], "info": json.loads(r[1]), "last_heartbeat": r[2]} for r in rows]

    @runs_to_end
    async def remove_worker(self, worker_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(delete(WORKERS).where(WORKERS.c.id == worker_id))

    async def delete_executions(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        async with self._write() as conn:
            stmt = delete(_E).where(_E.c.id.in_(list(ids)), _E.c.status.in_(sorted(TERMINAL)))
            gone = [str(i) for i in (await conn.execute(stmt.returning(_E.c.id))).scalars()]
            if gone:
                await conn.execute(delete(STEPS).where(STEPS.c.execution_id.in_(gone)))
                await conn.execute(delete(EVENTS).where(EVENTS.c.execution_id.in_(gone)))
        return gone


def _delete_state() -> Executable:
    return delete(STATE).where(STATE.c.key == bindparam("key"))
