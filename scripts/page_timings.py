#!/usr/bin/env python3
"""Dashboard page timings on a large database.

    .venv/bin/python scripts/page_timings.py --executions 100000 [--db /tmp/dq-100k.db] [--runs 15]

Builds (or reuses) a SQLite database holding `--executions` executions of six
jobs spread over the last 7 days — 3 steps and 8 events each, about 90%
completed, 7% failed, 2% cancelled, the rest sleeping, paused or scheduled
for later, some of them parents of others — then serves the dashboard on it
in-process and times each page `--runs` times (after one warm-up request).
Prints one Markdown table row per page: median and p95 in ms. Nothing runs
meanwhile: the queue defines the jobs but claims nothing (every active
execution waits for a time in the future or is paused).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from litestar.testing import TestClient  # noqa: E402

from dq import create_job, create_queue, run  # noqa: E402
from dq.app import create_app  # noqa: E402
from dq.engine.storage.base import Batch, EventRecord, ExecutionRecord, StepRecord  # noqa: E402
from dq.engine.storage.sql import SqlStorage  # noqa: E402

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


def _execution(now: int, rng: random.Random, parent: ExecutionRecord | None) -> tuple[ExecutionRecord, list[StepRecord], list[EventRecord]]:
    job = rng.choice(JOBS)
    created = now - rng.randrange(7 * DAY_MS)
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


async def build(path: str, n: int) -> None:
    storage = SqlStorage.sqlite(path)
    await storage.open()
    rng = random.Random(7)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    made = 0
    try:
        while made < n:
            batch = Batch()
            parents: list[ExecutionRecord] = []
            for _ in range(min(1000, n - made)):
                parent = rng.choice(parents) if parents and rng.random() < 0.1 else None
                rec, steps, events = _execution(now, rng, parent)
                if parent is None and rng.random() < 0.1:
                    parents.append(rec)
                batch.executions.append(rec)
                batch.steps.extend(steps)
                batch.events.extend(events)
            await storage.commit(batch)
            made += len(batch.executions)
    finally:
        await storage.aclose()
    print(f"built {n} executions in {time.perf_counter() - t0:.1f} s: {path}", file=sys.stderr)


def time_pages(path: str, runs: int) -> list[tuple[str, float, float]]:
    queue = create_queue(jobs=[_job(n) for n in JOBS], storage=SqlStorage.sqlite(path), poll_interval="10s")
    app = create_app(queue)
    rows: list[tuple[str, float, float]] = []
    with TestClient(app) as client:
        def get(url: str) -> str:
            res = client.get(url)
            assert res.status_code == 200, (url, res.status_code, res.text[:300])
            return res.text

        page = get("/executions?status=completed&limit=50")
        some = page.split('id="row-', 2)[1].split('"', 1)[0]
        deep = get("/executions?limit=50&cursor=" + some)
        deep_id = deep.split('id="row-', 2)[1].split('"', 1)[0] if 'id="row-' in deep else some
        parent = client.blocking_portal.call(_a_parent, queue)
        day_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 2 * 86400))
        day_end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 86400))
        pages = [
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
        for label, url in pages:
            get(url)  # warm-up: template compilation, caches
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                get(url)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            rows.append((label, statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]))
    return rows


async def _a_parent(queue: Any) -> str:
    from dq.engine.storage.base import ExecutionQuery

    found = await queue.storage.query(ExecutionQuery(root_id=None, limit=1, statuses=["completed"]))
    for rec in await queue.storage.query(ExecutionQuery(limit=500)):
        if rec.parent_id:
            return str(rec.parent_id)
    return found[0].id if found else ""


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="SQLite file (built when missing)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--build-only", action="store_true", help="build the database and stop")
    args = parser.parse_args()
    path = args.db or f"/tmp/dq-pages-{args.executions}.db"
    if not os.path.exists(path):
        asyncio.run(build(path, args.executions))
    if args.build_only:
        return
    print(f"| page ({args.executions:,} executions, SQLite) | median ms | p95 ms |")
    print("|---|---:|---:|")
    for label, median, p95 in time_pages(path, args.runs):
        print(f"| {label} | {median:.1f} | {p95:.1f} |")


if __name__ == "__main__":
    main()
