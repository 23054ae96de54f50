"""Migration 6: partial indexes on executions.started_at and completed_at that serve the
dashboard's "what started / ended in this window" reads (throughput, failure groups, filters)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from dq.engine.storage.base import Batch, ExecutionQuery
from dq.engine.storage.sql_postgres import PostgresStorage

from .test_sql import Fresh, execution, fresh  # noqa: F401 - the fixture


@pytest.mark.parametrize("column", ["started_at", "completed_at"])
async def test_time_window_indexes_are_partial_and_serve_window_reads(fresh: Fresh, column: str) -> None:  # noqa: F811
    storage = fresh()
    await storage.open()
    await storage.commit(Batch(executions=[
        execution("A", status="completed", started_at=900, completed_at=1_000),
        execution("B", status="failed", started_at=4_000, completed_at=5_000),
        execution("C"),  # still pending: no start, no end, no index entry
    ]))  # fmt: skip
    postgres = isinstance(storage, PostgresStorage)
    window = f"{column} > 500 AND {column} < 6000"
    index = f"ix_executions_{column}"
    async with storage.engine.connect() as conn:
        if postgres:
            ddl = (await conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": index})).scalar_one()
            await conn.execute(text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in await conn.execute(text(f"EXPLAIN SELECT id FROM executions WHERE {window}")))
        else:
            ddl = (await conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": index})).scalar_one()
            plan = "\n".join(str(r[-1]) for r in await conn.execute(
                text(f"EXPLAIN QUERY PLAN SELECT id FROM executions WHERE {window} ORDER BY id DESC LIMIT 20000")))  # fmt: skip
    assert "IS NOT NULL" in ddl.upper(), ddl
    assert index in plan, plan
    bounds = {f"{column.split('_')[0]}_after": 500, f"{column.split('_')[0]}_before": 6_000}
    found = await storage.query(ExecutionQuery(**bounds))  # type: ignore[arg-type]
    assert sorted(r.id for r in found) == ["A", "B"]
    await storage.aclose()
