"""Migration 6: partial indexes on executions.started_at and completed_at that serve the
dashboard's "what started / ended in this window" reads (throughput, failure groups, filters);
migration 7: the index on (job_name, created_at) that serves the jobs' 24-hour figures."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text

from dq.engine.storage.base import Batch, ExecutionQuery, TimeBuckets
from dq.engine.storage.sql_postgres import PostgresStorage

from .test_sql import Fresh, execution  # the `fresh` fixture: conftest.py


@pytest.mark.parametrize("column", ["started_at", "completed_at"])
async def test_time_window_indexes_are_partial_and_serve_window_reads(fresh: Fresh, column: str) -> None:
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


async def test_created_at_index_leads_the_job_figures_aggregate(fresh: Fresh) -> None:
    """Migration 7: the jobs list's 24-hour figures (a created_at window, its jobs, the
    completed run times) read the window by (job_name, created_at), not every
    execution of the jobs by (job_name, status, id) as SQLite's planner prefers."""
    storage = fresh()
    await storage.open()
    old = [execution(f"O{i:03}", job_name="a" if i % 2 else "b", status="completed", created_at=i,
                     started_at=i, completed_at=i + 1) for i in range(200)]  # fmt: skip
    recent = [
        execution("R1", job_name="a", status="completed", created_at=10_000, started_at=10_010, completed_at=10_050),
        execution("R2", job_name="a", status="failed", created_at=13_000, started_at=13_000, completed_at=13_001),
        execution("R3", job_name="b", status="completed", created_at=16_500, started_at=16_500, completed_at=16_520),
        execution("R4", job_name="c", status="completed", created_at=16_600, started_at=16_600, completed_at=16_700),
    ]
    await storage.commit(Batch(executions=[*old, *recent]))
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "GROUP BY" in statement.upper() or "LIMIT" in statement.upper():
            statements.append((statement, parameters))

    event.listen(storage.engine.sync_engine, "before_cursor_execute", capture)
    agg = await storage.aggregate(
        ExecutionQuery(job_names=["a", "b"]), TimeBuckets("created_at", 10_000, 3_000, 3), durations=True
    )  # fmt: skip
    event.remove(storage.engine.sync_engine, "before_cursor_execute", capture)
    assert agg.counts == {("a", "completed"): [1, 0, 0], ("a", "failed"): [0, 1, 0], ("b", "completed"): [0, 0, 1]}
    assert agg.durations == {"a": [40], "b": [20]}
    assert len(statements) == 2, statements
    postgres = isinstance(storage, PostgresStorage)
    async with storage.engine.connect() as conn:
        if postgres:  # its planner decides by statistics (autovacuum's), and on a table
            # this small prefers a sequential scan to any index
            await conn.execute(text("ANALYZE executions"))
            await conn.execute(text("SET enable_seqscan = off"))
        for statement, parameters in statements:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            plan = "\n".join(str(r[-1]) for r in await conn.exec_driver_sql(explain + statement, parameters))
            assert "ix_executions_job_name_created_at" in plan, plan
    await storage.aclose()
