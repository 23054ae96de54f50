"""What migration 5's GIN index on executions.input costs and buys on PostgreSQL.

    .venv/bin/python -m tests.bench.input_index postgresql://postgres@127.0.0.1/dq_bench_input

Same run, same database, alternating with and without the index: the time to
store N executions (bulk starts of a paused job, dict inputs) and the time of
`get_all(input=...)` over them. Prints the same-run ratios; absolute figures
depend on the machine's load. The database is created and dropped.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import asyncpg

from dq import create_job, create_queue, storage_from_url

N = 20_000
ROUNDS = 3


@create_job(name="upload")
async def upload(data: Any) -> None:
    return None


async def _round(dsn: str, indexed: bool) -> tuple[float, float]:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("TRUNCATE executions, steps, events")
        if indexed:
            await admin.execute(
                "CREATE INDEX IF NOT EXISTS ix_executions_input ON executions"
                " USING gin ((CAST(input AS JSONB)) jsonb_path_ops)"
            )
        else:
            await admin.execute("DROP INDEX IF EXISTS ix_executions_input")
    finally:
        await admin.close()
    queue = create_queue(jobs=[upload], storage=storage_from_url(dsn))
    async with queue:
        await queue.jobs.upload.pause()
        inputs = [{"user": {"id": i % 1000}, "path": f"uploads/{i}.mp3"} for i in range(N)]
        t0 = time.perf_counter()
        await queue.jobs.upload.start_many(inputs)
        store_s = time.perf_counter() - t0
        # What autovacuum does soon after a bulk insert: without statistics the
        # planner guesses and scans.
        admin = await asyncpg.connect(dsn)
        await admin.execute("ANALYZE executions")
        await admin.close()
        t0 = time.perf_counter()
        for i in range(20):
            found = await queue.jobs.get_all(input={"user": {"id": i}})
            assert len(found) == N // 1000, len(found)
        query_s = (time.perf_counter() - t0) / 20
    return store_s, query_s


async def main(dsn: str) -> None:
    base, _, name = dsn.rpartition("/")
    admin = await asyncpg.connect(base + "/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        storage = storage_from_url(dsn)
        await storage.open()
        await storage.aclose()
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(ROUNDS):
            for indexed in (False, True):
                results[indexed].append(await _round(dsn, indexed))
        for indexed in (False, True):
            store = statistics.median(r[0] for r in results[indexed])
            query = statistics.median(r[1] for r in results[indexed])
            print(f"index={indexed!s:5}  store {N} executions: {store:.2f} s ({N / store:.0f}/s)"
                  f"  get_all(input=...) over them: {query * 1000:.1f} ms")  # fmt: skip
        store_ratio = statistics.median(r[0] for r in results[True]) / statistics.median(r[0] for r in results[False])
        query_ratio = statistics.median(r[1] for r in results[False]) / statistics.median(r[1] for r in results[True])
        print(f"store time with/without the index: {store_ratio:.2f}x; query speed-up from it: {query_ratio:.1f}x")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1/dq_bench_input"))
