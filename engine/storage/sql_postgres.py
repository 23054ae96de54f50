"""PostgreSQL through asyncpg: concurrent writers (row locks, SKIP LOCKED claims),
the server's clock, and LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    and_,
    any_,
    cast,
    func,
    literal,
    literal_column,
    make_url,
    select,
    text,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..ids import new_id
from .base import CLAIMABLE, Batch, CommitResult, exception_chain
from .query import json_leaves
from .sql import CommitIO, SqlStorage, Write, _Prepared, log, runs_to_end
from .sql_pg_commit import CALL, Call
from .sql_pg_function import STATE_LOCK_SPACE
from .sql_pg_inserts import LOG, LOG_NOTIFY, commit_inserts
from .sql_tables import STATE, dumps, dumps_rows


class _AsyncpgIO:
    """Commit statements on the raw asyncpg connection: no SQLAlchemy parameter
    processing or cursor adaptation per statement (the commit's hot path)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, params: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        rows: list[asyncpg.Record] = await self._conn.fetch(sql, *params)
        return rows

    async def run(self, writes: list[Write]) -> None:
        for sql, params, many in writes:
            if many:
                await self._conn.executemany(sql, params)
            else:
                await self._conn.execute(sql, *params)


_NOW_PG = "(SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
# Transaction-scoped advisory locks: one for migrations, one space for state keys.
_MIGRATION_LOCK_KEY = 0x64715F6D6967  # "dq_mig"
_STATE_LOCK_SPACE = STATE_LOCK_SPACE  # "dq_s" (two-int form: space, hashtext(key))
WAKEUP_CHANNEL = "dq_wakeup"


class PostgresStorage(SqlStorage):
    """Many writers: touched rows are locked, claims skip locked rows, the clock
    is the server's, and commits NOTIFY the other processes of new work."""

    kind = "postgres"
    _look_up_new_ids = False
    concurrent_inserts = True
    #: Two: the server commits one group while this process builds the next (1.11x
    #: jobs/s for 1-step jobs on two cores; docs/benchmarks.md). One with fewer than
    #: `_PIPELINE_MIN_CONNECTIONS`: a second group must not take the connection a
    #: read or a start is waiting for (it would wait in the pool, under its timeout,
    #: instead of in the committer's queue).
    commit_pipeline = 2
    _PIPELINE_MIN_CONNECTIONS = 4
    #: How often the LISTEN connection is probed, and the reconnect backoff bounds.
    listen_ping_s = 5.0
    listen_backoff_s = (0.1, 5.0)
    #: The server ends a transaction of ours left idle this long: its process was frozen
    #: (SIGSTOP, a suspended VM) or cut off by a partition the server has not noticed.
    #: Until then it would keep its row locks, so other workers could not reclaim its
    #: executions, and the event-sequence row, so no other commit could finish. dq's
    #: transactions never wait between statements (only a blocked event loop makes them).
    idle_in_transaction_timeout_ms = 60_000

    _TOUCHED = (
        "SELECT id, token, status, control FROM executions WHERE id = ANY($1::varchar[])"
        " ORDER BY id FOR UPDATE"
    )
    # Seqs are handed out by bumping one counter row (sql_pg_inserts.LOG), whose row lock is held until
    # COMMIT. That is what keeps tailing readers correct: with a SEQUENCE (or any
    # number taken without waiting) a transaction holding N+1 could commit before
    # the one holding N, and a reader already past N+1 (`read_events(after_seq)`)
    # would never see N. Here the next committer waits for our COMMIT before it
    # gets its numbers (in READ COMMITTED its UPDATE then re-reads the committed
    # row), so seqs become visible in order. The same holds for pipe messages.
    # It is the last lock a commit takes, so it cannot be part of a deadlock, and
    # it serialises only the tail of concurrent commits (inserts and COMMIT). An
    # equivalent of pg_advisory_xact_lock + max(seq) in one statement instead of two.
    # unnest keeps the array's (sorted) order, so the locks are taken in that order.
    _LOCK_STATE = (
        "SELECT count(pg_advisory_xact_lock($1::int, hashtext(k))) FROM unnest($2::text[]) AS k"
    )
    _READ_STATE = "SELECT key, value FROM state WHERE key = ANY($1::varchar[])"

    def __init__(self, dsn: str, *, max_connections: int | None = None, acquire_timeout_s: float | None = None) -> None:
        url = make_url(dsn)
        if url.get_backend_name() not in ("postgresql", "postgres"):
            raise ValueError(f"not a PostgreSQL DSN: {dsn!r}")
        super().__init__(
            url.set(drivername="postgresql+asyncpg"), max_connections=max_connections, acquire_timeout_s=acquire_timeout_s
        )
        self._raw_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        if self.max_connections < self._PIPELINE_MIN_CONNECTIONS:
            self.commit_pipeline = 1
        # Our own NOTIFYs carry this payload, so that our listener can skip them.
        self._instance = new_id()
        self._notify_sql = ("SELECT pg_notify($1, $2)", (WAKEUP_CHANNEL, self._instance))
        self._listen_task: asyncio.Task[None] | None = None
        self._read_engine: AsyncEngine | None = None

    def _create_engine(self) -> AsyncEngine:
        timeout = str(int(self.idle_in_transaction_timeout_ms))
        engine = create_async_engine(
            self._url,
            connect_args={"server_settings": {"idle_in_transaction_session_timeout": timeout}},
            **self.pool_options(),
        )
        # Reads in autocommit: one round trip, no BEGIN/ROLLBACK around a SELECT.
        self._read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        return engine

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _commit_txn(self) -> AsyncIterator[CommitIO]:
        async with self._raw() as raw, raw.transaction():
            yield _AsyncpgIO(raw)

    @asynccontextmanager
    async def _raw(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection's asyncpg connection, outside SQLAlchemy's transaction
        handling (the pool's autocommit engine): the caller runs its own. A connection
        the driver found broken is invalidated, so that the pool does not hand it out again."""
        async with self._read() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            try:
                yield raw
            except BaseException:
                if raw.is_closed():
                    await conn.invalidate()
                raise

    #: Commit through the server-side function `dq_commit_v1` (sql_pg_commit.py): one
    #: round trip instead of `SqlStorage._commit`'s transaction (5-9), the same decisions
    #: and locks (the two interlock). False: every commit takes the Python path.
    commit_function = True
    #: Larger batches take the Python path: the function's per-update PL/pgSQL loop
    #: costs more server CPU per row than the Python path's set-based statements,
    #: and a large batch spreads its round trips over many rows anyway (they come
    #: from a loaded queue, where throughput counts, not one commit's latency).
    commit_function_max_rows = 32

    async def commit(self, batch: Batch) -> CommitResult:
        if batch.creates_only():
            return await self._commit_inserts(batch)
        small = self.commit_function and len(batch.updates) + len(batch.fences) <= self.commit_function_max_rows
        if small and (batch or batch.fences or batch.expect):  # an empty batch: super's, no call
            return await self._commit_call(Call(batch, _Prepared.of(batch), (WAKEUP_CHANNEL, self._instance)))
        return await super().commit(batch)

    @runs_to_end
    async def _commit_call(self, call: Call) -> CommitResult:
        return await self._retrying(lambda: self._call_once(call))

    async def _call_once(self, call: Call) -> CommitResult:
        async with self._raw() as raw:  # autocommit: the call is its own transaction
            text = await raw.fetchval(CALL, call.arg)
        return call.result(text)

    @runs_to_end
    async def _commit_inserts(self, batch: Batch) -> CommitResult:
        async with self._raw() as raw:  # autocommit: the statement is its own transaction
            return await commit_inserts(raw, batch, (WAKEUP_CHANNEL, self._instance), CLAIMABLE)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        if self._engine is None or self._read_engine is None:
            return self.engine.connect()  # raises the "not open" error
        return self._read_engine.connect()

    def _now_sql(self) -> ColumnElement[int]:
        # An uncorrelated scalar subquery: evaluated once per statement, on the server.
        return literal_column(_NOW_PG, BigInteger)

    def _ids_in(self, column: ColumnElement[Any], ids: Iterable[str]) -> ColumnElement[bool]:
        cond: ColumnElement[bool] = column == any_(literal(list(ids), pg_dialect.ARRAY(String)))
        return cond

    def _contains_ci(self, column: ColumnElement[Any], needle: str) -> ColumnElement[bool]:
        return func.strpos(func.upper(column), func.upper(literal(needle, String))) > 0

    def _input_contains(self, column: ColumnElement[Any], sub: dict[str, Any]) -> ColumnElement[bool]:
        # jsonb containment, answered by migration 5's GIN index on (input::jsonb).
        # `@>` is containment inside arrays too, where json_contains asks for equality:
        # list values get an exact comparison on top.
        doc = cast(column, JSONB)
        conds: list[ColumnElement[bool]] = [doc.op("@>")(cast(literal(dumps(sub), String), JSONB))]
        for path, value in json_leaves(sub):
            if isinstance(value, list):
                at = doc.op("#>")(literal(list(path), ARRAY(String)))
                conds.append(at == cast(literal(dumps(value), String), JSONB))
        return and_(*conds)

    def _state_key_in_byte_order(self) -> ColumnElement[str]:
        # Whatever the database's collation; migration 10's index serves it.
        return STATE.c.key.collate("C")

    def _locking(self, ids: Select[Any], *, skip_locked: bool) -> Select[Any]:
        # Callers that wait (skip_locked=False) order by id, as commit locks rows,
        # so two writers never wait for each other in a cycle. A MATERIALIZED CTE
        # runs once: as a plain `IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`
        # the planner may rescan the subquery once per outer row (a nested-loop
        # semi join) and so claim more than `limit` rows.
        cte = ids.with_for_update(skip_locked=skip_locked).cte().prefix_with("MATERIALIZED")
        return select(cte.c.id)

    async def _read_touched(
        self, io: CommitIO, ids: set[str], state_keys: list[str], expect: list[str]
    ) -> tuple[dict[str, list[Any]], dict[str, Any], tuple[int, int] | None]:
        # Every commit locks in this order: execution rows (sorted), state keys
        # (sorted), then the seq counter last. A consistent order: no deadlock.
        current: dict[str, list[Any]] = {}
        state: dict[str, Any] = {}
        if ids:
            rows = await io.fetch(self._TOUCHED, (sorted(ids),))
            current = {r[0]: [r[1], r[2], r[3]] for r in rows}
        if state_keys:
            # A row lock cannot hold a key that is absent, so compare-and-set on
            # state (Batch.expect) serialises on one advisory lock per key, which
            # every commit writing that key takes too. The values are read by a
            # later statement: in READ COMMITTED its snapshot postdates the locks.
            await io.fetch(self._LOCK_STATE, (_STATE_LOCK_SPACE, state_keys))
            if expect:
                rows = await io.fetch(self._READ_STATE, (expect,))
                state = {r[0]: json.loads(r[1]) for r in rows}
        return current, state, None

    async def _append_log(
        self, io: CommitIO, events: list[tuple[Any, ...]], n_events: int, messages: list[tuple[Any, ...]],
        notify: bool,
    ) -> tuple[int, int]:  # fmt: skip
        params: tuple[Any, ...] = (n_events, len(messages), dumps_rows(events), dumps_rows(messages))
        if notify:
            params += (WAKEUP_CHANNEL, self._instance)
        [row] = await io.fetch(LOG_NOTIFY if notify else LOG, params)
        return int(row[0]) - n_events, int(row[1]) - len(messages)

    async def _migration_lock(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})

    def _insert(self) -> Any:
        return pg_dialect.insert

    _statement_errors = (DBAPIError, asyncpg.PostgresError)

    def _is_duplicate_execution(self, exc: Exception) -> bool:
        orig = getattr(exc, "orig", exc)
        return getattr(orig, "sqlstate", None) == "23505" and "executions_pkey" in str(orig)

    def is_unavailable(self, exc: BaseException) -> bool:
        # A dropped connection (one SQLAlchemy invalidated, or asyncpg's "connection was
        # closed in the middle of operation": SQLSTATE 08003), SQLSTATE class 08
        # (connection exception) and 57P (admin or crash shutdown, cannot connect now:
        # a server restarting).
        for e in exception_chain(exc):
            if isinstance(e, DBAPIError) and e.connection_invalidated:
                return True
            if isinstance(e, OSError):
                return True
            if isinstance(e, asyncpg.InterfaceError) and "closed" in str(e):
                return True  # "the underlying connection is closed"
            state = getattr(e, "sqlstate", None)
            if isinstance(state, str) and (state.startswith("08") or state.startswith("57P")):
                return True
        return False

    def _is_retryable(self, exc: Exception) -> bool:
        # deadlock_detected, serialization_failure: the transaction was rolled back.
        return getattr(getattr(exc, "orig", exc), "sqlstate", None) in ("40P01", "40001")

    # --- LISTEN/NOTIFY ------------------------------------------------------

    def on_wakeup(self, callback: Callable[[], None]) -> None:
        self._wakeup_callbacks.append(callback)
        if self._engine is not None and self._listen_task is None:
            self._start_listener()

    async def _after_open(self) -> None:
        if self._wakeup_callbacks:
            self._start_listener()

    async def _before_close(self) -> None:
        task, self._listen_task = self._listen_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _start_listener(self) -> None:
        self._listen_task = asyncio.create_task(self._listen(), name="dq-postgres-listen")

    def _wake(self) -> None:
        for callback in list(self._wakeup_callbacks):
            try:
                callback()
            except Exception:
                log.exception("postgres storage: wake-up callback failed")

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != self._instance:
            self._wake()

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection for as long as the storage is open.

        A dropped connection (server restart, network, idle kill) is noticed by
        asyncpg's termination callback or by a failing periodic probe; we then
        reconnect with exponential backoff, and wake the callbacks once after
        each (re)connect, since notifications sent meanwhile were lost.
        """
        backoff = self.listen_backoff_s[0]
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._raw_dsn, server_settings={"application_name": "dq-listen"}
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(WAKEUP_CHANNEL, self._on_notification)
                backoff = self.listen_backoff_s[0]
                self._wake()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self.listen_ping_s)
                    except TimeoutError:
                        await conn.execute("SELECT 1", timeout=self.listen_ping_s)
                log.warning("postgres storage: LISTEN connection lost; reconnecting")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "postgres storage: LISTEN connection failed (%s); retrying in %.1fs",
                    exc,
                    backoff,
                )
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.listen_backoff_s[1])
