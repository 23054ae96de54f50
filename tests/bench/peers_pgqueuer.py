"""One timed pgqueuer run: enqueue N no-op jobs, process them with C queue managers.

Run by run_peers.py in a fresh PostgreSQL database; prints one JSON line.

Shape: as pgqueuer's own `tools/benchmark.py` (`--dequeue C --dequeue-batch-size 10`):
C QueueManagers in this process, each on its own asyncpg connection, dequeuing
`--batch` jobs at a time. They are started (schema check, LISTEN) and warmed up
before the clock starts, as dq's queue is open before `dq-ui bench` starts
its clock.

The clock covers what dq's bench covers: the enqueue (`queries.enqueue` with
lists, 1,000 jobs a call) and the processing, up to the moment the queue table
holds no queued or picked job, i.e. every completion is committed (pgqueuer
buffers completions and writes them in batches). `drain_s` (from the end of the
enqueue) and `handlers_s` (until the last handler returned) are reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

import asyncpg
from pgqueuer import InMemoryDriver, InMemoryQueries, Queries, QueueManager
from pgqueuer.models import Job


async def pending(queries: Queries) -> int:
    return sum(s.count for s in await queries.queue_size() if s.status in ("queued", "picked"))


async def main(args: argparse.Namespace) -> dict[str, float | int]:
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    admin: asyncpg.Connection | None = None
    queries: Any
    if args.in_memory:  # pgqueuer's own in-memory backend, shared by the managers
        queries = InMemoryQueries(driver=InMemoryDriver())
    else:
        admin = await asyncpg.connect(args.dsn)
        queries = Queries.from_asyncpg_connection(admin)
        await queries.install()

    done = 0
    target = 0
    all_ran = asyncio.Event()
    last = 0.0

    managers: list[QueueManager] = []
    for _ in range(args.concurrency):
        own = queries if args.in_memory else Queries.from_asyncpg_connection(await asyncpg.connect(args.dsn))
        qm = QueueManager(own)

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal done, last
            done += 1
            if done == target:
                last = time.perf_counter()
                all_ran.set()

        managers.append(qm)
    workers = [asyncio.create_task(qm.run(batch_size=args.batch)) for qm in managers]

    async def batch(n: int) -> None:
        if args.single:  # one job per call, one call after the other: a producer per request
            for _ in range(n):
                await queries.enqueue("noop", None, 0)
            return
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            await queries.enqueue(["noop"] * k, [None] * k, [0] * k)

    async def until_empty() -> None:
        while await pending(queries):
            await asyncio.sleep(0.005)

    # Warm-up, outside the clock: every manager has started and processed work.
    await asyncio.sleep(0.5)
    target = warm = args.concurrency * args.batch
    await batch(warm)
    await asyncio.wait_for(all_ran.wait(), 60)
    await until_empty()
    done, target = 0, args.jobs
    all_ran.clear()

    c0, t0 = time.process_time(), time.perf_counter()
    await batch(args.jobs)
    t1 = time.perf_counter()
    await all_ran.wait()
    await until_empty()
    t2, c2 = time.perf_counter(), time.process_time()

    for qm in managers:
        qm.shutdown.set()
    await asyncio.gather(*workers)
    if admin is not None:
        await admin.close()
    if done != args.jobs:
        raise SystemExit(f"pgqueuer: ran {done} of {args.jobs} jobs")
    return {
        # --single: the producer's figure (enqueues/s); the managers drain meanwhile.
        "elapsed_s": t1 - t0 if args.single else t2 - t0,
        "total_s": t2 - t0,
        "enqueue_s": t1 - t0,
        "drain_s": t2 - t1,
        "handlers_s": last - t0,
        "jobs": args.jobs,
        "cpu_s": c2 - c0,  # this process's CPU over the clock (load-independent, unlike the seconds)
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", help="PostgreSQL (omit with --in-memory)")
    p.add_argument("--in-memory", action="store_true", help="pgqueuer's in-memory backend instead of PostgreSQL")
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=10, help="queue managers (connections)")
    p.add_argument("--batch", type=int, default=10, help="dequeue batch size per manager")
    p.add_argument("--single", action="store_true", help="enqueue one job per call; time the enqueues")
    p.add_argument(
        "--uvloop", action="store_true", help="run on uvloop, as pgqueuer's benchmark does"
    )
    a = p.parse_args()
    if not a.in_memory and not a.dsn:
        p.error("--dsn is required (or --in-memory)")
    if a.uvloop:
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(main(a))))
