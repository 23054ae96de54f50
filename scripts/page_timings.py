#!/usr/bin/env python3
"""Dashboard page timings on a large database, on any adapter.

    .venv/bin/python scripts/page_timings.py --executions 100000 [--storage URL] [--runs 15]

`--storage` is `sqlite:////tmp/dq-pages-100000.db` (the default),
`postgresql://postgres@127.0.0.1/dq_pages_100k` (the database is created when
missing), `redis://127.0.0.1:6379/0?prefix=dq_pages_10k` or `memory://`.
The store is built when it holds no execution, and kept (except memory) for
the next run: `--executions` executions of six jobs spread over the last 7
days, written oldest first — 3 steps and 8 events each, about 90% completed, 7% failed, 2%
cancelled, the rest sleeping, paused or scheduled for later, one in ten a
child of another — then the dashboard is served on it in-process and each
page timed `--runs` times (after one warm-up request). Prints one Markdown
table row per page: median and p95 in ms. Nothing runs meanwhile: the queue
defines the jobs but claims nothing (every active execution waits for a time
in the future or is paused).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from litestar.testing import TestClient  # noqa: E402

from dq import create_job, create_queue, run  # noqa: E402
from dq.app import create_app  # noqa: E402
from dq.engine.storage.base import (  # noqa: E402
    Batch,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    StepRecord,
    Storage,
)
from dq.engine.storage.factory import create_redis_storage, storage_from_url  # noqa: E402

JOBS = ["ingest", "transcode", "fingerprint", "metadata", "notify", "cleanup"]
DAY_MS = 86_400_000


def _job(name: str) -> Any:
    async def handler(data: Any) -> Any:
        await run("fetch", lambda: 1)
        await run("work", lambda: 2)
        return await run("store", lambda: 3)

    return create_job(handler, name=name)


_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _id_at(ms: int, rng: random.Random) -> str:
    """An id made at `ms` (dq's layout: 48-bit time, 80 random bits), so that newest-first
    by id is creation order, as in a real database."""
    value = ms << 80 | rng.getrandbits(80)
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _execution(now: int, created: int, rng: random.Random, parent: ExecutionRecord | None) -> tuple[ExecutionRecord, list[StepRecord], list[EventRecord]]:
    job = rng.choice(JOBS)
    roll = rng.random()
    status = ("completed" if roll < 0.90 else "failed" if roll < 0.97 else "cancelled" if roll < 0.99
              else rng.choice(["waiting", "paused", "pending"]))  # fmt: skip
    started = created + rng.randrange(5, 500)
    steps: list[StepRecord] = []
    events = [EventRecord(None, job, "trigger", {"input": {"n": rng.randrange(1000)}}, created),
              EventRecord(None, job, "start", {"attempt": 1, "resumed": False}, started)]  # fmt: skip
    at = started
    for seq, key in enumerate(("fetch", "work", "store"), 1):
        took = rng.randrange(2, 3000)
        failed = status == "failed" and key == "work"
        steps.append(StepRecord("", key, key, "run", "failed" if failed else "completed", 1, None if failed else seq,
                                {"type": "ValueError", "message": "bad input"} if failed else None,
                                at, at + took, 0, seq, 10 + seq))  # fmt: skip
        events.append(EventRecord(None, job, "step_start", {"key": key, "name": key, "kind": "run", "attempt": 1}, at))
        events.append(EventRecord(None, job, "step_failure" if failed else "step_success",
                                  {"key": key, "name": key, "kind": "run", "attempt": 1, "duration_ms": took}, at + took))  # fmt: skip
        at += took
        if failed:
            break
    rec = ExecutionRecord(id=_id_at(created, rng), job_name=job, status=status, input={"n": rng.randrange(1000)},
                          created_at=created, run_at=created, started_at=started)  # fmt: skip
    if status in ("completed", "failed", "cancelled"):
        rec.completed_at = at
        rec.output = {"ok": True} if status == "completed" else None
        rec.error = {"type": "ValueError", "message": "bad input"} if status == "failed" else None
        events.append(EventRecord(None, job, {"completed": "success", "failed": "failure", "cancelled": "cancel"}[status], {}, at))
    else:  # active, but nothing to run now: a long sleep, a pause, a start later
        rec.run_at = now + 30 * DAY_MS
        rec.wait_reason = {"waiting": "sleep", "paused": "paused", "pending": None}[status]
    if parent is not None:
        rec.parent_id = parent.id
        rec.root_id = parent.root_id or parent.id
    for step in steps:
        step.execution_id = rec.id
    for ev in events:
        ev.execution_id = rec.id
    return rec, steps, events


def open_storage(url: str) -> Storage:
    """The adapter for `url`; Redis takes its key prefix from `?prefix=`."""
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss"):
        prefix = parse_qs(parsed.query).get("prefix", ["dq_pages"])[0]
        return create_redis_storage(parsed._replace(query="").geturl(), prefix=prefix)
    return storage_from_url(url)


async def ensure_postgres_database(url: str) -> None:
    """Create the database `url` names when it does not exist (a bench database of its own)."""
    import asyncpg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = await asyncpg.connect(parsed._replace(scheme="postgresql", path="/postgres").geturl())
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def build(storage: Storage, n: int) -> None:
    """Commit `n` executions (with their steps and events) to an open `storage`, 1,000 a
    batch, oldest first as a real store fills (its rows lie in creation order)."""
    rng = random.Random(7)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    made = 0
    parents: list[ExecutionRecord] = []
    while made < n:
        batch = Batch()
        size = min(1000, n - made)
        first = now - 7 * DAY_MS + 7 * DAY_MS * made // n
        for created in sorted(first + rng.randrange(7 * DAY_MS * size // n) for _ in range(size)):
            parent = rng.choice(parents) if parents and rng.random() < 0.1 else None
            rec, steps, events = _execution(now, created, rng, parent)
            if parent is None and rng.random() < 0.1:
                parents.append(rec)
            batch.executions.append(rec)
            batch.steps.extend(steps)
            batch.events.extend(events)
        parents = parents[-1000:]
        await storage.commit(batch)
        made += len(batch.executions)
        if made % 50_000 == 0:
            print(f"  {made:,} executions, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(f"built {n:,} executions in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


async def build_if_empty(url: str, n: int) -> None:
    """Build a durable store unless it already holds executions (kept for the next run)."""
    if urlparse(url).scheme.startswith("postgres"):
        await ensure_postgres_database(url)
    storage = open_storage(url)
    await storage.open()
    try:
        if await storage.query(ExecutionQuery(limit=1)):
            return
        await build(storage, n)
    finally:
        await storage.aclose()
    if urlparse(url).scheme.startswith("postgres"):
        await vacuum(url)


async def vacuum(url: str) -> None:
    """What autovacuum does after a bulk load: planner statistics and the visibility map
    (index-only scans). The shared server here runs with autovacuum off: without
    statistics the planner guesses, e.g. walks the primary key backwards for
    `parent_id = ?`, and without the map every count visits the table."""
    import asyncpg

    conn = await asyncpg.connect(urlparse(url)._replace(scheme="postgresql").geturl())
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def pages(client: TestClient[Any], queue: Any) -> list[tuple[str, str]]:
    """The pages to time, with ids taken from the store itself."""

    def ids(url: str) -> list[str]:
        text = client.get(url).text
        return [part.split('"', 1)[0] for part in text.split('id="row-')[1:]]

    some = ids("/executions?status=completed&limit=50")[0]
    deep_id = (ids("/executions?limit=50&cursor=" + some) or [some])[0]
    parent = client.blocking_portal.call(_a_parent, queue)
    day_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 2 * 86400))
    day_end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 86400))
    return [
        ("overview `/`", "/"),
        ("executions, newest", "/executions"),
        ("executions, status=failed", "/executions?status=failed"),
        ("executions, job + status", f"/executions?job={JOBS[1]}&status=completed"),
        ("executions, an older page (cursor)", f"/executions?cursor={deep_id}"),
        ("executions, started in one day", f"/executions?started_after={day_ago}&started_before={day_end}"),
        ("job page", f"/jobs/{JOBS[0]}"),
        ("jobs list", "/jobs"),
        ("execution page", f"/executions/{some}"),
        ("execution page, a parent", f"/executions/{parent}"),
        ("metrics", "/metrics"),
    ]


def time_pages(url: str, runs: int, build_n: int = 0) -> list[tuple[str, float, float]]:
    """Serve the dashboard on `url` and time each page; `build_n` fills a memory store first."""
    queue = create_queue(jobs=[_job(n) for n in JOBS], storage=open_storage(url), poll_interval="10s")
    app = create_app(queue)
    rows: list[tuple[str, float, float]] = []
    # The dashboard refuses Host names other than loopback ones (DNS rebinding).
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        if build_n:
            client.blocking_portal.call(build, queue.storage, build_n)

        def get(url: str) -> None:
            res = client.get(url)
            assert res.status_code == 200, (url, res.status_code, res.text[:300])

        for label, page in pages(client, queue):
            get(page)  # warm-up: template compilation, caches
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                get(page)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            rows.append((label, statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]))
    return rows


async def _a_parent(queue: Any) -> str:
    found = await queue.storage.query(ExecutionQuery(root_id=None, limit=1, statuses=["completed"]))
    for rec in await queue.storage.query(ExecutionQuery(limit=500)):
        if rec.parent_id:
            return str(rec.parent_id)
    return found[0].id if found else ""


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--storage", default=None, help="storage URL (default: a SQLite file in /tmp named by the size)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--build-only", action="store_true", help="build the store and stop")
    args = parser.parse_args()
    url = args.storage or f"sqlite:////tmp/dq-pages-{args.executions}.db"
    kind = urlparse(url).scheme
    if kind != "memory":
        asyncio.run(build_if_empty(url, args.executions))
    if args.build_only:
        return
    rows = time_pages(url, args.runs, build_n=args.executions if kind == "memory" else 0)
    print(f"| page ({args.executions:,} executions, {kind}) | median ms | p95 ms |")
    print("|---|---:|---:|")
    for label, median, p95 in rows:
        print(f"| {label} | {median:.1f} | {p95:.1f} |")


if __name__ == "__main__":
    main()
