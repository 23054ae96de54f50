"""The SQL adapters beyond the contract: schema versioning, dialect specifics,
PostgreSQL's LISTEN/NOTIFY and row locking."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.exc import IntegrityError

from dq.engine.storage import sql_tables, storage_from_url
from dq.engine.storage.base import (
    Batch,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionUpdate,
    PipeMessage,
    StepRecord,
    Storage,
)
from dq.engine.storage.sql import SqlStorage
from dq.engine.storage.sql_postgres import PostgresStorage
from dq.engine.storage.sql_sqlite import SqliteStorage
from dq.engine.storage.sql_tables import SCHEMA_VERSION, SchemaTooNewError

StorageFactory = Callable[[], Awaitable[Storage]]  # see conftest.py
Fresh = Callable[[], SqlStorage]  # the `fresh` fixture (conftest.py)


def execution(id: str, **fields: Any) -> ExecutionRecord:
    fields.setdefault("job_name", "job")
    fields.setdefault("status", "pending")
    return ExecutionRecord(id=id, **fields)


async def version_rows(storage: SqlStorage) -> list[tuple[Any, ...]]:
    async with storage.engine.connect() as conn:
        rows = await conn.execute(select(SCHEMA_VERSION).order_by(SCHEMA_VERSION.c.version))
        return [tuple(r) for r in rows]


async def table_names(storage: SqlStorage) -> set[str]:
    def names(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    async with storage.engine.connect() as conn:
        return await conn.run_sync(names)


# --- schema and migrations ----------------------------------------------------------


async def test_schema_is_created_versioned_and_migrated_only_once(fresh: Fresh) -> None:
    first = fresh()
    await first.open()
    await first.open()  # idempotent
    assert await first.schema_version() == sql_tables.MIGRATIONS[-1][0]
    rows = await version_rows(first)
    assert [(v, d) for v, d, _ in rows] == [(v, d) for v, d, _ in sql_tables.MIGRATIONS]
    await first.commit(Batch(executions=[execution("A")]))
    await first.aclose()
    await first.aclose()  # idempotent

    again = fresh()
    await again.open()
    assert await version_rows(again) == rows  # same rows, same applied_at: nothing re-ran
    assert await again.get_execution("A") is not None
    await again.aclose()


async def test_migration_3_drops_the_unused_concurrency_key_column(fresh: Fresh) -> None:
    """A database made before migration 3 (it had the column) ends with the same
    schema as a fresh one, its executions intact."""
    old = fresh()
    await old.open()
    async with old.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE executions ADD COLUMN concurrency_key VARCHAR")
        await conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 3")
    await old.commit(Batch(executions=[execution("A", priority=2)]))
    await old.aclose()

    def columns(conn: Connection) -> set[str]:
        return {c["name"] for c in inspect(conn).get_columns("executions")}

    migrated = fresh()
    await migrated.open()
    async with migrated.engine.connect() as conn:
        assert "concurrency_key" not in await conn.run_sync(columns)
    assert [v for v, _d, _at in await version_rows(migrated)] == [v for v, _d, _f in sql_tables.MIGRATIONS]
    rec = await migrated.get_execution("A")
    assert rec is not None and rec.priority == 2
    await migrated.aclose()


async def test_schema_matches_the_table_classes(fresh: Fresh) -> None:
    storage = fresh()
    await storage.open()

    def describe(conn: Connection) -> dict[str, tuple[set[str], set[str]]]:
        insp = inspect(conn)
        return {
            name: (
                {c["name"] for c in insp.get_columns(name)},
                {str(i["name"]) for i in insp.get_indexes(name)},
            )
            for name in insp.get_table_names()
        }

    async with storage.engine.connect() as conn:
        found = await conn.run_sync(describe)
    # Migration 5's expression index exists only on PostgreSQL, outside the table classes.
    dialect_only: dict[str, set[str]] = {"executions": {"ix_executions_replay_of"}}  # partial: not in the table classes
    if isinstance(storage, PostgresStorage):
        dialect_only["executions"].add("ix_executions_input")
        dialect_only["state"] = {"ix_state_key_c"}  # migration 10: byte order for list_state's ranges
    for table in (*sql_tables.DATA_TABLES, SCHEMA_VERSION):
        columns, indexes = found[table.name]
        assert columns == {c.name for c in table.columns}, table.name
        extra = dialect_only.get(table.name, set())
        assert indexes == {str(i.name) for i in table.indexes} | extra, table.name
    assert {
        "ix_executions_status_run_at",
        "ix_executions_parent_id",
        "ix_executions_root_id",
    } <= found["executions"][1]
    assert "ix_events_execution_id_seq" in found["events"][1]
    assert "ix_pipe_messages_pipe_seq" in found["pipe_messages"][1]
    await storage.aclose()


async def test_lineage_indexes_are_partial_and_serve_queries_by_parent_and_root(fresh: Fresh) -> None:
    storage = fresh()
    await storage.open()
    await storage.commit(
        Batch(executions=[execution("P"), execution("C", parent_id="P", root_id="P")])
    )
    postgres = isinstance(storage, PostgresStorage)
    async with storage.engine.connect() as conn:
        for column in ("parent_id", "root_id"):
            if postgres:
                ddl = (await conn.execute(text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": f"ix_executions_{column}"},
                )).scalar_one()  # fmt: skip
                await conn.execute(text("SET enable_seqscan = off"))  # a 2-row table: ask for the index
                plan = "\n".join(r[0] for r in await conn.execute(
                    text(f"EXPLAIN SELECT id FROM executions WHERE {column} = 'P'")))  # fmt: skip
            else:
                ddl = (await conn.execute(text(
                    "SELECT sql FROM sqlite_master WHERE name = :n"), {"n": f"ix_executions_{column}"},
                )).scalar_one()  # fmt: skip
                plan = "\n".join(str(r[-1]) for r in await conn.execute(
                    text(f"EXPLAIN QUERY PLAN SELECT id FROM executions WHERE {column} = 'P'")))  # fmt: skip
            assert "IS NOT NULL" in ddl.upper(), ddl
            assert f"ix_executions_{column}" in plan, plan
    found = await storage.query(ExecutionQuery(parent_id="P"))
    assert [r.id for r in found] == ["C"]
    assert [r.id for r in await storage.query(ExecutionQuery(root_id="P"))] == ["C"]
    await storage.aclose()


async def test_migration_9_drops_the_job_name_index_and_lookups_by_job_still_use_an_index(fresh: Fresh) -> None:
    storage = fresh()
    await storage.open()
    await storage.commit(Batch(executions=[execution("A"), execution("B", job_name="other")]))
    async with storage.engine.begin() as conn:  # back to what versions 1-8 left
        await conn.execute(text("CREATE INDEX ix_executions_job_name ON executions (job_name)"))
        await conn.execute(text("DELETE FROM schema_version WHERE version = 9"))
    await storage.aclose()
    upgraded = fresh()
    await upgraded.open()
    postgres = isinstance(upgraded, PostgresStorage)
    async with upgraded.engine.connect() as conn:
        if postgres:
            names = set((await conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'executions'"))).scalars())
            await conn.execute(text("SET enable_seqscan = off"))  # a 2-row table: ask for an index
            explain = "EXPLAIN SELECT id FROM executions WHERE job_name = 'other'"
        else:
            names = set((await conn.execute(text("SELECT name FROM sqlite_master WHERE tbl_name = 'executions'"))).scalars())
            explain = "EXPLAIN QUERY PLAN SELECT id FROM executions WHERE job_name = 'other'"
        plan = "\n".join(str(r[-1]) for r in await conn.execute(text(explain)))
    assert "ix_executions_job_name" not in names
    assert "ix_executions_job_name_" in plan, plan  # one of the indexes led by job_name
    assert [r.id for r in await upgraded.query(ExecutionQuery(job_names=["other"]))] == ["B"]
    await upgraded.aclose()


async def test_migration_4_adds_the_idempotency_key_to_an_older_database(fresh: Fresh) -> None:
    storage = fresh()
    await storage.open()
    await storage.commit(Batch(executions=[execution("OLD")]))
    async with storage.engine.begin() as conn:  # back to what versions 1-3 created
        await conn.execute(text("DROP INDEX ix_executions_idempotency_key"))
        await conn.execute(text("ALTER TABLE executions DROP COLUMN idempotency_key"))
        await conn.execute(text("DELETE FROM schema_version WHERE version = 4"))
    await storage.aclose()
    upgraded = fresh()
    await upgraded.open()
    assert [v for v, _d, _a in await version_rows(upgraded)] == [v for v, _d, _a in sql_tables.MIGRATIONS]
    old = await upgraded.get_execution("OLD")
    assert old is not None and old.idempotency_key is None
    new = execution("NEW")
    new.idempotency_key = "k"
    await upgraded.commit(Batch(executions=[new]))
    assert [r.id for r in await upgraded.query(ExecutionQuery(idempotency_key="k"))] == ["NEW"]
    await upgraded.aclose()


async def test_a_migration_numbered_below_the_latest_still_runs_once(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions are applied by what is recorded, not by the highest one: a migration
    merged after a higher-numbered one was applied (two branches) still runs, once."""
    ran: list[str] = []

    def step(name: str) -> Callable[[Connection], None]:
        def apply(conn: Connection) -> None:
            ran.append(name)
            conn.execute(text(f"CREATE TABLE extra_{name} (x INTEGER)"))

        return apply

    latest = sql_tables.MIGRATIONS[-1][0]
    later = (latest + 2, "later", step("later"))
    monkeypatch.setattr(sql_tables, "MIGRATIONS", (*sql_tables.MIGRATIONS, later))
    storage = fresh()
    await storage.open()
    await storage.aclose()
    between = (latest + 1, "between", step("between"))
    monkeypatch.setattr(sql_tables, "MIGRATIONS", (*sql_tables.MIGRATIONS[:-1], between, later))
    for _ in range(2):
        again = fresh()
        await again.open()
        await again.aclose()
    assert ran == ["later", "between"]


async def test_new_migrations_run_in_order_once(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = fresh()
    await storage.open()
    await storage.aclose()
    ran: list[int] = []

    def add_table(version: int) -> Callable[[Connection], None]:
        def apply(conn: Connection) -> None:
            ran.append(version)
            conn.execute(text(f"CREATE TABLE extra_{version} (x INTEGER)"))

        return apply

    latest = sql_tables.MIGRATIONS[-1][0]
    migrations = (
        *sql_tables.MIGRATIONS,
        (latest + 1, "extra one", add_table(latest + 1)),
        (latest + 2, "extra two", add_table(latest + 2)),
    )
    monkeypatch.setattr(sql_tables, "MIGRATIONS", migrations)
    upgraded = fresh()
    await upgraded.open()
    assert ran == [latest + 1, latest + 2]
    assert await upgraded.schema_version() == latest + 2
    assert {f"extra_{latest + 1}", f"extra_{latest + 2}"} <= await table_names(upgraded)
    await upgraded.aclose()
    reopened = fresh()
    await reopened.open()
    assert ran == [latest + 1, latest + 2]
    await reopened.aclose()


async def test_migration_5_adds_replay_of_to_a_database_made_before_it(fresh: Fresh) -> None:
    storage = fresh()
    await storage.open()
    async with storage.engine.begin() as conn:  # the schema as migrations 1 and 2 left it
        await conn.execute(text("DROP INDEX ix_executions_replay_of"))
        await conn.execute(text("ALTER TABLE executions DROP COLUMN replay_of"))
        await conn.execute(SCHEMA_VERSION.delete().where(SCHEMA_VERSION.c.version == 5))
    await storage.aclose()
    upgraded = fresh()
    await upgraded.open()
    await upgraded.commit(Batch(executions=[execution("A"), execution("B", replay_of="A")]))
    assert [r.id for r in await upgraded.query(ExecutionQuery(replay_of="A"))] == ["B"]
    assert 5 in [v for v, _, _ in await version_rows(upgraded)]
    await upgraded.aclose()


async def test_postgres_input_filter_uses_the_gin_index(pg_empty_dsn: str) -> None:
    storage = SqlStorage.postgres(pg_empty_dsn)
    await storage.open()
    await storage.commit(Batch(executions=[execution("A", input={"user": {"id": 7}}), execution("B", input=[1])]))
    stmt = select(sql_tables.EXECUTIONS.c.id).where(
        storage._input_contains(sql_tables.EXECUTIONS.c.input, {"user": {"id": 7}})
    )
    async with storage.engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))  # a 2-row table: ask for the index
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in await conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "ix_executions_input" in plan, plan
    assert [r.id for r in await storage.query(ExecutionQuery(input={"user": {"id": 7}}))] == ["A"]
    await storage.aclose()


async def test_a_failing_migration_changes_nothing(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = fresh()
    await storage.open()
    await storage.aclose()

    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("migration bug")

    latest = sql_tables.MIGRATIONS[-1][0]
    monkeypatch.setattr(
        sql_tables, "MIGRATIONS", (*sql_tables.MIGRATIONS, (latest + 1, "broken", broken))
    )
    failing = fresh()
    with pytest.raises(RuntimeError, match="migration bug"):
        await failing.open()
    with pytest.raises(RuntimeError, match="not open"):
        await failing.get_execution("A")
    monkeypatch.undo()
    check = fresh()
    await check.open()
    assert await check.schema_version() == latest
    assert "half_done" not in await table_names(check)
    await check.aclose()


async def test_a_newer_schema_is_refused(fresh: Fresh) -> None:
    storage = fresh()
    await storage.open()
    async with storage.engine.begin() as conn:
        await conn.execute(
            SCHEMA_VERSION.insert().values(version=999, description="future", applied_at=0)
        )
    await storage.aclose()
    newer = fresh()
    with pytest.raises(SchemaTooNewError, match="999"):
        await newer.open()


async def test_concurrent_first_opens_migrate_once(fresh: Fresh) -> None:
    storages = [fresh() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in storages))
    assert len(await version_rows(storages[0])) == len(sql_tables.MIGRATIONS)
    for s in storages:
        await s.aclose()


# --- commit edge cases (stricter than the memory adapter) ---------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def sql_factory(request: pytest.FixtureRequest) -> StorageFactory:
    factory: StorageFactory = request.getfixturevalue(f"{request.param}_factory")
    return factory


async def test_unknown_update_fields_and_repeated_ids_are_errors(
    sql_factory: StorageFactory,
) -> None:
    sql_storage = await sql_factory()
    await sql_storage.commit(Batch(executions=[execution("A")]))
    with pytest.raises(ValueError, match="bogus"):
        await sql_storage.commit(
            Batch(updates=[ExecutionUpdate("A", {"bogus": 1})], state={"k": 1})
        )
    with pytest.raises(ValueError, match="'B' appears twice"):
        await sql_storage.commit(Batch(executions=[execution("B"), execution("B")]))
    assert await sql_storage.get_state(["k"]) == {}
    assert await sql_storage.get_execution("B") is None


async def test_a_failing_commit_applies_nothing_and_the_storage_goes_on(
    sql_factory: StorageFactory,
) -> None:
    storage = await sql_factory()
    bad = StepRecord("A", None, "s", "run", "completed")  # type: ignore[arg-type]
    # PostgreSQL commits on the raw asyncpg connection: the driver's own error class.
    with pytest.raises((IntegrityError, asyncpg.IntegrityConstraintViolationError)):
        await storage.commit(
            Batch(
                executions=[execution("A")],
                steps=[bad],
                events=[EventRecord("A", "job", "log")],
                messages=[PipeMessage("p", 1)],
                state={"k": 1},
            )
        )
    assert await storage.get_execution("A") is None
    assert await storage.read_events() == [] and await storage.read_messages("p") == []
    assert await storage.get_state(["k"]) == {}
    result = await storage.commit(
        Batch(executions=[execution("A")], events=[EventRecord("A", "job", "log")])
    )
    assert [e.seq for e in result.events] == [await storage.last_event_seq()]
    assert await storage.get_execution("A") is not None


async def test_cancelled_operations_leave_the_storage_usable(
    sql_factory: StorageFactory,
) -> None:
    """Cancel writes at every point they can stop at (a shutdown does that): the
    next ones still work and see a consistent state."""
    storage = await sql_factory()
    for i in range(12):
        await storage.commit(Batch(executions=[execution(f"E{i:02d}")]))
        operations = [
            storage.claim("w", limit=1, lease_ms=60_000),
            storage.commit(Batch(events=[EventRecord(f"E{i:02d}", "job", "log")])),
            storage.heartbeat("w", {"i": i}),
            storage.reclaim(["nobody"]),
        ]
        tasks = [asyncio.ensure_future(op) for op in operations]
        for _ in range(i):
            await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result = await storage.commit(
            Batch(events=[EventRecord(None, None, "probe")], state={"i": i})
        )
        # A cancelled write runs to its end (runs_to_end), so it may land after the
        # probe: the probe is in the log at its seq, and the log has no gap.
        [probe] = result.events
        [stored] = await storage.read_events(probe.seq - 1, limit=1)
        assert (stored.seq, stored.type) == (probe.seq, "probe")
        assert await storage.get_state(["i"]) == {"i": i}
    seqs = [e.seq for e in await storage.read_events(limit=10_000)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    await storage.claim("w2", limit=100, lease_ms=60_000)
    running = await storage.query(ExecutionQuery(statuses=["running"]))
    # Every execution was claimed exactly once, by a cancelled claim or by this one.
    assert len(running) == 12 and {r.token for r in running} == {1}


async def test_large_batches_have_no_parameter_limit(sql_factory: StorageFactory) -> None:
    sql_storage = await sql_factory()
    ids = [f"E{i:05d}" for i in range(5000)]
    await sql_storage.commit(Batch(executions=[execution(i) for i in ids]))
    result = await sql_storage.commit(
        Batch(
            updates=[ExecutionUpdate(i, {"current_step": "s"}, token=0) for i in ids],
            steps=[StepRecord(i, "s", "s", "run", "completed", output=i) for i in ids],
            events=[EventRecord(i, "job", "step", {"i": i}) for i in ids],
            state={f"k{i}": i for i in ids},
            fences=dict.fromkeys(ids, 0),
        )
    )
    assert result.applied == [True] * 5000 and not result.refused
    assert len(result.controls) == 5000 and len(result.events) == 5000
    found = await sql_storage.query(ExecutionQuery(ids=ids))
    assert len(found) == 5000 and {r.current_step for r in found} == {"s"}
    assert len(await sql_storage.get_state([f"k{i}" for i in ids])) == 5000
    assert len(await sql_storage.renew("nobody", ids, 1000)) == 0


# --- SQLite -------------------------------------------------------------------------


async def test_sqlite_connections_are_configured(sqlite_factory: StorageFactory) -> None:
    storage = await sqlite_factory()
    assert isinstance(storage, SqliteStorage)
    async with storage.engine.connect() as conn:
        pragmas = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "foreign_keys": 1,
        "busy_timeout": SqliteStorage.busy_timeout_ms,
    }


async def test_sqlite_in_memory_database_works_but_is_not_durable() -> None:
    storage = SqlStorage.sqlite(":memory:")
    await storage.open()
    assert not storage.durable
    await storage.commit(Batch(executions=[execution("A"), execution("B", run_at=1)]))
    first, b, second = await asyncio.gather(
        storage.claim("w", limit=1, lease_ms=1000),
        storage.get_execution("B"),
        storage.claim("w", limit=1, lease_ms=1000),
    )
    assert b is not None
    assert [r.id for r in [*first, *second]] == ["A", "B"]
    await storage.aclose()


def test_storage_urls_build_sql_storages(tmp_path: os.PathLike[str]) -> None:
    sqlite = storage_from_url(f"sqlite:///{os.path.join(tmp_path, 'x.db')}")
    assert isinstance(sqlite, SqliteStorage) and sqlite.kind == "sqlite"
    assert sqlite.path == os.path.join(tmp_path, "x.db")
    pg = storage_from_url("postgresql://postgres@127.0.0.1:5432/dq")
    assert isinstance(pg, PostgresStorage) and pg.kind == "postgres"
    with pytest.raises(ValueError, match="not a PostgreSQL DSN"):
        SqlStorage.postgres("mysql://localhost/db")


# --- PostgreSQL ---------------------------------------------------------------------


async def test_postgres_now_is_the_server_clock(postgres_factory: StorageFactory) -> None:
    storage = await postgres_factory()
    assert isinstance(storage, PostgresStorage)
    conn = await asyncpg.connect(storage._raw_dsn)
    try:
        server = await conn.fetchval(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        )
    finally:
        await conn.close()
    assert abs(await storage.now() - server) < 1000


async def test_postgres_claim_skips_rows_locked_by_others(
    postgres_factory: StorageFactory,
) -> None:
    storage = await postgres_factory()
    assert isinstance(storage, PostgresStorage)
    await storage.commit(Batch(executions=[execution("A", priority=9), execution("B")]))
    other = await asyncpg.connect(storage._raw_dsn)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM executions WHERE id = 'A' FOR UPDATE")
            claimed = await asyncio.wait_for(storage.claim("w", limit=5, lease_ms=1000), 5)
            assert [r.id for r in claimed] == ["B"]
        assert [r.id for r in await storage.claim("w", limit=5, lease_ms=1000)] == ["A"]
    finally:
        await other.close()


class Wakeups:
    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def next(self) -> int:
        """Wait for the next wake-up; returns the count after it."""
        await asyncio.wait_for(self._event.wait(), 10)
        self._event.clear()
        return self.count


async def test_postgres_wakes_other_instances(postgres_factory: StorageFactory) -> None:
    listener, writer = await postgres_factory(), await postgres_factory()
    wakeups = Wakeups()
    listener.on_wakeup(wakeups)
    assert await wakeups.next() == 1  # connected (it wakes once per (re)connect)

    await writer.commit(Batch(executions=[execution("A")]))  # a new pending execution
    assert await wakeups.next() == 2
    # Our own commits do not wake us, nor do commits that make nothing due.
    await listener.commit(Batch(executions=[execution("B")]))
    await writer.commit(Batch(events=[EventRecord("A", "job", "log")], state={"x": 1}))
    await writer.commit(Batch(messages=[], updates=[ExecutionUpdate("A", {"status": "running"})]))
    await writer.commit(Batch(updates=[ExecutionUpdate("A", {"status": "waiting", "run_at": 5})]))
    assert await wakeups.next() == 3
    await writer.commit(Batch(messages=[PipeMessage("p", 1)]))
    assert await wakeups.next() == 4
    [claimed] = await writer.claim("w", limit=1, lease_ms=60_000)
    await writer.reclaim(dead_workers=["w"])  # back to pending
    assert claimed.id in ("A", "B") and await wakeups.next() == 5
    # A slot's write wakes others when it may hand the slot to a step waiting there
    # (a holder `id|key`), not for a job limit's take (its waiters are made due instead).
    await writer.commit(Batch(state={"slots:job": {"limit": 1, "holders": ["A"], "n": 0, "v": 1}}))
    await writer.commit(Batch(state={"slots:job|w|B": [0, 1, "B"]}))
    await writer.commit(Batch(messages=[PipeMessage("p", 2)]))
    assert await wakeups.next() == 6
    await asyncio.sleep(0.2)
    assert wakeups.count == 6
    await writer.commit(Batch(state={"slots:step": {"limit": 1, "holders": ["A|s"], "n": 0, "v": 2}}))
    assert await wakeups.next() == 7


async def test_postgres_listener_reconnects(
    postgres_factory: StorageFactory, pg_database: str
) -> None:
    listener, writer = await postgres_factory(), await postgres_factory()
    assert isinstance(listener, PostgresStorage)
    listener.listen_backoff_s = (0.01, 0.1)
    wakeups = Wakeups()
    listener.on_wakeup(wakeups)
    assert await wakeups.next() == 1
    admin = await asyncpg.connect(pg_database)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'dq-listen' AND datname = current_database()"
        )
    finally:
        await admin.close()
    assert killed == 1
    assert await wakeups.next() == 2  # reconnected: woken in case something was missed
    await writer.commit(Batch(executions=[execution("A")]))
    assert await wakeups.next() == 3


def test_creates_only_is_new_executions_and_their_events() -> None:
    a, b = execution("A"), execution("B")
    assert Batch(executions=[a], events=[EventRecord("A", "job", "trigger")]).creates_only()
    assert Batch(executions=[a, b], events=[EventRecord("B", "job", "log")]).creates_only()
    assert Batch(executions=[a]).creates_only()
    assert not Batch(events=[EventRecord("A", "job", "log")]).creates_only()  # nothing new
    assert not Batch(executions=[a], events=[EventRecord("X", "job", "log")]).creates_only()
    assert not Batch(executions=[a], events=[EventRecord(None, None, "log")]).creates_only()
    assert not Batch(executions=[a], fences={"A": 0}).creates_only()
    assert not Batch(executions=[a], state={"k": 1}).creates_only()
    assert not Batch(executions=[a], expect={"k": None}).creates_only()
    assert not Batch(executions=[a], steps=[StepRecord("A", "s", "s", "run", "completed")]).creates_only()
    assert not Batch(executions=[a], updates=[ExecutionUpdate("A", {"status": "running"})]).creates_only()
    assert not Batch(executions=[a], messages=[PipeMessage("p", 1)]).creates_only()


async def test_postgres_creates_and_other_commits_share_one_gapless_event_log(
    postgres_factory: StorageFactory,
) -> None:
    """New executions commit in their own statement (sql_pg_inserts), concurrently with
    other commits: both take their seqs from the same counter, so the log stays gapless
    and in order, and each create's events stay consecutive."""
    storage = await postgres_factory()
    # The seq counter outlives the rows earlier tests deleted: count from this event's.
    opening = await storage.commit(Batch(executions=[execution("E")], events=[EventRecord("E", "job", "trigger")]))
    base = opening.events[0].seq

    async def create(i: int) -> list[int]:
        batch = Batch(executions=[execution(f"N{i}")], events=[EventRecord(f"N{i}", "job", "trigger"), EventRecord(f"N{i}", "job", "log")])
        assert batch.creates_only()
        return [e.seq for e in (await storage.commit(batch)).events]

    async def other(i: int) -> list[int]:
        batch = Batch(events=[EventRecord("E", "job", "log"), EventRecord("E", "job", "log")], state={f"k{i}": i})
        return [e.seq for e in (await storage.commit(batch)).events]

    seqs = await asyncio.gather(*(f(i) for i in range(20) for f in (create, other)))
    stored = await storage.read_events()
    assert [e.seq for e in stored] == list(range(base, base + 81))
    assert sorted(s for pair in seqs for s in pair) == list(range(base + 1, base + 81))
    by_seq = {e.seq: e for e in stored}
    for i, (first, second) in enumerate(seqs[0::2]):
        assert second == first + 1
        assert (by_seq[first].execution_id, by_seq[first].type) == (f"N{i}", "trigger")
    with pytest.raises(ValueError, match="already exists"):
        await storage.commit(Batch(executions=[execution("N3")], events=[EventRecord("N3", "job", "trigger")]))
    with pytest.raises(ValueError, match="twice"):
        await storage.commit(Batch(executions=[execution("Z"), execution("Z")]))
    assert await storage.last_event_seq() == base + 80 and await storage.get_execution("Z") is None
