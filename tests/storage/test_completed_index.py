"""Migration 6: a partial index on executions.completed_at that serves the dashboard's
"what ended in this window" reads (throughput, failure groups)."""

from __future__ import annotations

from sqlalchemy import text

from dq.engine.storage.base import Batch, ExecutionQuery
from dq.engine.storage.sql_postgres import PostgresStorage

from .test_sql import Fresh, execution, fresh  # noqa: F401 - the fixture


async def test_completed_at_index_is_partial_and_serves_window_reads(fresh: Fresh) -> None:  # noqa: F811
    storage = fresh()
    await storage.open()
    await storage.commit(Batch(executions=[
        execution("A", status="completed", completed_at=1_000),
        execution("B", status="failed", completed_at=5_000),
        execution("C"),  # still pending: no completed_at, no index entry
    ]))  # fmt: skip
    postgres = isinstance(storage, PostgresStorage)
    window = "completed_at > 500 AND completed_at < 6000"
    async with storage.engine.connect() as conn:
        if postgres:
            ddl = (await conn.execute(text(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_executions_completed_at'"))).scalar_one()  # fmt: skip
            await conn.execute(text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in await conn.execute(text(f"EXPLAIN SELECT id FROM executions WHERE {window}")))
        else:
            ddl = (await conn.execute(text(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_executions_completed_at'"))).scalar_one()  # fmt: skip
            plan = "\n".join(str(r[-1]) for r in await conn.execute(
                text(f"EXPLAIN QUERY PLAN SELECT id FROM executions WHERE {window} ORDER BY id DESC LIMIT 20000")))  # fmt: skip
    assert "IS NOT NULL" in ddl.upper(), ddl
    assert "ix_executions_completed_at" in plan, plan
    found = await storage.query(ExecutionQuery(completed_after=500, completed_before=6_000))
    assert sorted(r.id for r in found) == ["A", "B"]
    await storage.aclose()
