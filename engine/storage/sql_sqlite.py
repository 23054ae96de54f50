"""SQLite through aiosqlite: one writer (BEGIN IMMEDIATE), WAL, the local clock.

`commit` runs its whole transaction in one call on aiosqlite's thread, with the
sqlite3 connection used synchronously there (`_SyncIO`): one hop to the thread
and one wake-up of the event loop per commit, where a statement at a time took
a hop each (BEGIN, the read, each write, COMMIT). Under a limit the commits of
successive generations follow each other, so this latency is what they wait for.
`claim` does the same with its one statement. The other writes and the reads
go through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import (
    URL,
    BigInteger,
    ColumnElement,
    Integer,
    String,
    bindparam,
    event,
    func,
    literal,
    select,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from ..errors import StorageBusyError
from ..ids import now_ms
from .base import Batch, CommitResult
from .sql import CommitIO, SqlStorage, Write, _Prepared, log
from .sql_tables import dumps

_T = TypeVar("_T")


class _SyncIO:
    """A commit's statements on the sqlite3 connection itself, called in aiosqlite's
    thread: `fetch` and `run` never suspend, so `SqlStorage._commit` over this IO
    runs to its end in a single `send` (`_run_to_end`), and the whole transaction
    (BEGIN, reads, writes, COMMIT) takes one hop to that thread and back instead
    of one per statement."""

    __slots__ = ("_cursor",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._cursor = conn.cursor()

    async def fetch(self, sql: str, params: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        try:
            return self._cursor.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _dbapi_error(sql, exc) from exc

    async def run(self, writes: list[Write]) -> None:
        cursor = self._cursor
        for sql, params, many in writes:
            try:
                (cursor.executemany if many else cursor.execute)(sql, params)
            except sqlite3.Error as exc:
                # The first error ends the transaction (rolled back): nothing after it runs.
                raise _dbapi_error(sql, exc) from exc


def _dbapi_error(sql: str, exc: sqlite3.Error) -> DBAPIError:
    """The exception types of the statements that go through SQLAlchemy."""
    return cast(DBAPIError, DBAPIError.instance(sql, None, exc, sqlite3.Error))


def _run_to_end(coro: Coroutine[Any, Any, _T]) -> _T:
    """The result of `coro`, which must finish without suspending (its awaits are
    `_SyncIO`'s): we are in aiosqlite's thread, with no event loop to resume it."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    coro.close()
    raise RuntimeError("sqlite storage: a commit suspended in the driver's thread")


class _RollbackFailed(Exception):
    """The rollback after a failed commit failed too (its error is the cause): the
    transaction may still be open, so the connection must not be used again."""


def _transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
    """`body(conn)` in a BEGIN IMMEDIATE transaction: committed if it returns,
    rolled back if anything raises. Called in aiosqlite's thread."""
    try:
        conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for other processes
    except sqlite3.Error as exc:
        raise _dbapi_error("BEGIN IMMEDIATE", exc) from exc
    try:
        result = body(conn)
        try:
            conn.commit()
        except sqlite3.Error as exc:
            raise _dbapi_error("COMMIT", exc) from exc
    except BaseException:
        try:
            conn.rollback()
        except BaseException as exc:
            raise _RollbackFailed() from exc
        raise
    return result


class SqliteStorage(SqlStorage):
    """One writer: every write is a `BEGIN IMMEDIATE` transaction, and the writers
    of this process queue on an asyncio lock rather than in SQLite's busy handler."""

    kind = "sqlite"
    busy_timeout_ms = 30_000

    # One statement: a header row with the last seqs (one writer: they can be read
    # up front), then the touched executions ("e") and the expected state keys ("s").
    _TOUCHED = (
        "SELECT 'h', NULL, (SELECT coalesce(max(seq), 0) FROM events),"
        " (SELECT coalesce(max(seq), 0) FROM pipe_messages), NULL"
        " UNION ALL SELECT 'e', id, token, status, control FROM executions"
        " WHERE id IN (SELECT value FROM json_each(?))"
        " UNION ALL SELECT 's', key, value, NULL, NULL FROM state"
        " WHERE key IN (SELECT value FROM json_each(?))"
    )

    def __init__(self, path: str, *, max_connections: int | None = None, acquire_timeout_s: float | None = None) -> None:
        super().__init__(
            URL.create("sqlite+aiosqlite", database=path), max_connections=max_connections,
            acquire_timeout_s=acquire_timeout_s,
        )  # fmt: skip
        self.path = path
        # ":memory:" is one shared connection: reads must not interleave with a write.
        self._memory = path in ("", ":memory:")
        self.durable = not self._memory
        self._write_lock = asyncio.Lock()
        self._writer_conn: AsyncConnection | None = None
        self._writer_driver: Any = None
        self._claims: dict[tuple[int | None, int], tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    def _create_engine(self) -> AsyncEngine:
        engine = create_async_engine(self._url, **({} if self._memory else self.pool_options()))
        busy_timeout_ms = int(self.busy_timeout_ms)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # No implicit BEGIN from the driver: reads run in autocommit, writes
            # issue their own BEGIN IMMEDIATE.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            for pragma in (f"busy_timeout={busy_timeout_ms}", "synchronous=NORMAL",
                           "foreign_keys=ON"):  # fmt: skip
                cursor.execute(f"PRAGMA {pragma}")
            try:
                cursor.execute("PRAGMA journal_mode=WAL")  # persistent: once per file
            except Exception as exc:
                # SQLite answers "locked" without waiting while another connection
                # switches the file to WAL; `_ensure_wal` (in open) makes sure.
                if "locked" not in str(exc):
                    raise
            cursor.close()

        return engine

    async def _ensure_wal(self) -> None:
        deadline = now_ms() + self.busy_timeout_ms
        async with self.engine.connect() as conn:
            while True:
                try:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode=WAL")).scalar()
                except DBAPIError as exc:
                    if "locked" not in str(exc.orig) or now_ms() > deadline:
                        raise
                    mode = None
                if mode == "wal":
                    return
                if mode is not None or now_ms() > deadline:
                    raise RuntimeError(f"cannot switch {self.path!r} to WAL (journal_mode={mode})")
                await asyncio.sleep(0.01)

    async def _before_migrations(self) -> None:
        if not self._memory:
            await self._ensure_wal()

    async def _writer(self) -> tuple[AsyncConnection, Any]:
        """The connection every write of this storage goes through (SQLAlchemy's
        and the aiosqlite one under it): no pool checkout and reset per write."""
        if self._writer_conn is not None and self._writer_conn.invalidated:
            # SQLAlchemy invalidates (and closes) a connection whose operation was
            # cancelled or hit a disconnect: start over with a fresh one.
            await self._close_writer()
        if self._writer_conn is None:
            conn = await self.engine.connect()
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            self._writer_conn, self._writer_driver = conn, driver
        return self._writer_conn, self._writer_driver

    async def _close_writer(self) -> None:
        conn, self._writer_conn, self._writer_driver = self._writer_conn, None, None
        if conn is not None:
            await conn.close()

    async def _rollback(self, rollback: Callable[[], Awaitable[Any]]) -> None:
        try:
            await rollback()
        except BaseException as exc:
            await self._drop_writer(exc)
            raise

    async def _drop_writer(self, rollback_error: BaseException) -> None:
        """After a failed rollback: the transaction may still be open, so the write
        connection is never used again."""
        log.warning("sqlite storage: rollback failed (%r); dropping the write connection", rollback_error)
        await self._close_writer()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._writing():
            conn, _ = await self._writer()
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.commit()
            except BaseException:
                await self._rollback(conn.rollback)
                raise

    async def _commit_once(self, batch: Batch, prepared: _Prepared) -> CommitResult:
        def commit(conn: sqlite3.Connection) -> CommitResult:
            return _run_to_end(self._commit(_SyncIO(conn), batch, prepared))

        return await self._in_thread(commit)

    async def _claim_rows(
        self, worker_id: str, limit: int, lease_ms: int, job_names: Sequence[str] | None, exclude_jobs: list[str]
    ) -> list[Any]:
        jobs = None if job_names is None else list(job_names)
        sql, names, values = self._claim_sql(None if jobs is None else len(jobs), len(exclude_jobs))
        values = {**values, "worker_id": worker_id, "lease_ms": lease_ms, "limit": limit}
        values.update((f"job_{i}", name) for i, name in enumerate(jobs or ()))
        values.update((f"other_{i}", name) for i, name in enumerate(exclude_jobs))

        def claim(conn: sqlite3.Connection) -> list[Any]:
            values["now"] = now_ms()  # the clock read holding the write lock, as _now_sql
            params = tuple([values[name] for name in names])
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _dbapi_error(sql, exc) from exc

        return await self._in_thread(claim)

    def _claim_sql(self, jobs: int | None, others: int) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """`_claim_statement` compiled once per number of job names: its SQL, its
        parameters' order and their fixed values (the statuses)."""
        key = (jobs, others)
        entry = self._claims.get(key)
        if entry is None:
            def bind(name: str, type_: Any = String) -> Any:
                return bindparam(name, None, type_=type_)

            stmt = self._claim_statement(
                bind("worker_id"), now=bind("now", BigInteger), lease_ms=bind("lease_ms", BigInteger),
                limit=bind("limit", Integer), exclude_jobs=[bind(f"other_{i}") for i in range(others)],
                job_names=None if jobs is None else [bind(f"job_{i}") for i in range(jobs)],
            )  # fmt: skip
            compiled = stmt.compile(dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True})  # type: ignore[attr-defined]
            names = tuple(compiled.positiontup or ())
            if len(self._claims) >= 64:  # job name lists of many lengths: keep it bounded
                self._claims.clear()
            entry = self._claims[key] = (compiled.string, names, dict(compiled.params))
        return entry

    async def _in_thread(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """`body` in one write transaction, run start to end in aiosqlite's thread:
        the one writer's turn, then one hop there and back."""
        async with self._writing():
            _, driver = await self._writer()
            # aiosqlite runs the callable in its connection's thread, after whatever
            # was queued before it, and wakes this task once with the outcome.
            try:
                result: _T = await driver._execute(_transaction, driver._conn, body)
            except _RollbackFailed as exc:
                cause = exc.__cause__
                assert cause is not None  # _transaction raises it `from` the rollback's error
                await self._drop_writer(cause)
                raise cause from None
            return result

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """The one writer's turn, waited for at most `acquire_timeout_s`."""
        try:
            async with asyncio.timeout(self.acquire_timeout_s):
                await self._write_lock.acquire()
        except TimeoutError as exc:
            raise StorageBusyError(
                f"sqlite storage: the writer was not free within {self.acquire_timeout_s} s; nothing was written"
            ) from exc
        try:
            yield
        finally:
            self._write_lock.release()

    async def _before_close(self) -> None:
        async with self._write_lock:
            await self._close_writer()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._memory:
            async with self._write_lock, self.engine.connect() as conn:
                yield conn
        else:
            async with self.engine.connect() as conn:
                yield conn

    def _now_sql(self) -> ColumnElement[int]:
        # The local clock, read when the statement is built (inside the write lock).
        return literal(now_ms(), BigInteger)

    def _beside_window(self, cond: ColumnElement[bool]) -> ColumnElement[bool]:
        # SQLite's planner has no statistics and takes equalities over a range: for
        # job_name IN (...) AND status = ... it would read every completed execution
        # of the jobs by (job_name, status, id) instead of the day's by (job_name,
        # created_at). likely() says "true for most rows", so the window's index
        # leads (still with job_name as its prefix); the result is the same.
        return func.likely(cond)

    def _ids_in(self, column: ColumnElement[Any], ids: Iterable[str]) -> ColumnElement[bool]:
        values = func.json_each(literal(dumps(list(ids)), String)).table_valued("value")
        return column.in_(select(values.c.value))

    async def _read_touched(
        self, io: CommitIO, ids: set[str], state_keys: list[str], expect: list[str]
    ) -> tuple[dict[str, list[Any]], dict[str, Any], tuple[int, int] | None]:
        # The write lock (BEGIN IMMEDIATE) already keeps every other writer out.
        current: dict[str, list[Any]] = {}
        state: dict[str, Any] = {}
        last = (0, 0)
        for kind, key, a, b, c in await io.fetch(self._TOUCHED, (dumps(list(ids)), dumps(expect))):
            if kind == "e":
                current[key] = [a, b, c]
            elif kind == "s":
                state[key] = json.loads(a)
            else:
                last = (int(a), int(b))
        return current, state, last

    def _insert(self) -> Any:
        return sqlite_dialect.insert

    def _is_duplicate_execution(self, exc: Exception) -> bool:
        return "UNIQUE constraint failed: executions.id" in str(getattr(exc, "orig", exc))
