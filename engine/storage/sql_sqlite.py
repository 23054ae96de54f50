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
#: A commit of at most this many rows runs on the event loop's thread (`_in_thread`).
_INLINE_ROWS = 100
#: A WAL checkpoint after this many commits or rows (SQLite's own: ~1,000 pages).
_CHECKPOINT_COMMITS = 100
_CHECKPOINT_ROWS = 5_000


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
    return _body(conn, body)


def _checkpoint_wal(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


class _Busy(Exception):
    """Another process holds the write lock: the transaction goes to the thread, to wait there."""


def _transaction_now(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T], busy_timeout_ms: int) -> _T:
    """`_transaction`, on the event loop's thread: it must not wait for the lock, so
    BEGIN IMMEDIATE is tried with no busy timeout, and `_Busy` raised if it is taken."""
    conn.execute("PRAGMA busy_timeout=0").fetchall()
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
            raise _Busy() from exc
        raise _dbapi_error("BEGIN IMMEDIATE", exc) from exc
    finally:
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}").fetchall()
    return _body(conn, body)


def _body(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
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
        "SELECT 'h', NULL, (SELECT coalesce((SELECT coalesce(upto, seq) FROM events ORDER BY seq DESC LIMIT 1), 0)),"
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
        #: Commits and rows since the last WAL checkpoint was started.
        self._unchecked = [0, 0]
        self._checkpointing: asyncio.Task[None] | None = None

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
            if not self._memory:  # checkpoints are `_checkpoint`'s
                # (Its row read to the end: a statement left open would hold a read
                # snapshot, and the WAL could never start over.)
                (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")).fetchall()
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
            self._wrote(1)  # heartbeats, renewals, deletes: an idle process's WAL is checkpointed too

    async def _commit_once(self, batch: Batch, prepared: _Prepared) -> CommitResult:
        def commit(conn: sqlite3.Connection) -> CommitResult:
            return _run_to_end(self._commit(_SyncIO(conn), batch, prepared))

        rows = len(batch.executions) + len(batch.updates) + len(batch.steps) + len(batch.events) + len(batch.messages)
        return await self._in_thread(commit, rows + len(batch.state))

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

    async def _in_thread(self, body: Callable[[sqlite3.Connection], _T], rows: int | None = None) -> _T:
        """`body` in one write transaction, run start to end in aiosqlite's thread:
        the one writer's turn, then one hop there and back. A commit of at most
        `_INLINE_ROWS` rows runs on the event loop's thread instead: the hop there and
        back (two thread wake-ups) cost more than such a transaction itself (~0.4 ms
        of a 0.6 ms commit of one new execution, CPU included), and every writer of
        this process waits for its turn anyway. It never waits for the file's lock
        there (another process writing: the thread waits), nor checkpoints the WAL
        (`_checkpoint` does, in the thread)."""
        async with self._writing():
            _, driver = await self._writer()
            try:
                # (":memory:" is one connection bound to the thread that made it.)
                if rows is not None and rows <= _INLINE_ROWS and not self._memory:
                    try:
                        result: _T = _transaction_now(driver._conn, body, int(self.busy_timeout_ms))
                    except _Busy:
                        pass
                    else:
                        self._wrote(rows)
                        return result
                # aiosqlite runs the callable in its connection's thread, after whatever
                # was queued before it, and wakes this task once with the outcome.
                result = await driver._execute(_transaction, driver._conn, body)
            except _RollbackFailed as exc:
                cause = exc.__cause__
                assert cause is not None  # _transaction raises it `from` the rollback's error
                await self._drop_writer(cause)
                raise cause from None
            self._wrote(rows or 1)
            return result

    def _wrote(self, rows: int) -> None:
        """Count a write transaction (every one: `_in_thread`'s and `_write`'s) towards the
        next WAL checkpoint (the write connection makes none itself: inline, one would
        stall the event loop for milliseconds)."""
        if self._memory:
            return
        self._unchecked[0] += 1
        self._unchecked[1] += rows
        if (self._unchecked[0] >= _CHECKPOINT_COMMITS or self._unchecked[1] >= _CHECKPOINT_ROWS) and (
            self._checkpointing is None or self._checkpointing.done()
        ):
            self._unchecked = [0, 0]
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint(), name="dq-sqlite-checkpoint")

    async def _checkpoint(self) -> None:
        """A PASSIVE checkpoint in aiosqlite's thread, as the writer's turn: no write
        of this process lands while it runs, so the next one finds the WAL copied to
        the end and starts it over (a checkpoint beside the writes always left new
        frames behind it, and the WAL grew without end)."""
        try:
            async with self._writing():
                _, driver = await self._writer()
                await driver._execute(_checkpoint_wal, driver._conn)
        except Exception as exc:  # the next one catches up
            log.warning("sqlite storage: WAL checkpoint failed: %r", exc)

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
        task = self._checkpointing
        if task is not None and not task.done():
            _, pending = await asyncio.wait([task], timeout=5)
            for t in pending:
                t.cancel()
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
