"""One timed DBOS run: W workflows of K no-op durable steps, started at once.

Run by run_peers.py against a fresh system database (PostgreSQL database or
SQLite file); prints one JSON line. Each workflow is a `@DBOS.workflow()`
calling K `@DBOS.step()` functions that return None; every step's result is
checkpointed in the system database before the workflow goes on, as in dq.

`--mode sync` (the default; DBOS's faster path here, by ~20%): plain functions,
started with `DBOS.start_workflow`, which runs them on DBOS's thread pool.
`--mode async`: async functions, started with `DBOS.start_workflow_async` on
the event loop, as dq's handlers are.

The clock starts before the first start and stops when every handle's result
is back; `DBOS.launch()` (schema creation) is outside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time

from dbos import DBOS, DBOSConfig

STEPS = 10


@DBOS.step()
async def noop_async() -> None:
    return None


@DBOS.workflow()
async def bench_async(n: int) -> int:
    for _ in range(STEPS):
        await noop_async()
    return STEPS


@DBOS.step()
def noop_sync() -> None:
    return None


@DBOS.workflow()
def bench_sync(n: int) -> int:
    for _ in range(STEPS):
        noop_sync()
    return STEPS


def run_sync(workflows: int) -> list[int]:
    handles = [DBOS.start_workflow(bench_sync, i) for i in range(workflows)]
    return [h.get_result() for h in handles]


async def main(args: argparse.Namespace) -> dict[str, float | int]:
    global STEPS
    STEPS = args.steps
    config: DBOSConfig = {
        "name": "dq-peers-bench",
        "system_database_url": args.system_db_url,
        "log_level": "WARNING",
        "run_admin_server": False,
    }
    if args.pool_size:
        config["sys_db_pool_size"] = args.pool_size
    DBOS(config=config)
    DBOS.launch()
    try:
        limit = asyncio.Semaphore(args.concurrency or args.workflows)

        async def one(i: int) -> int:
            async with limit:
                handle = await DBOS.start_workflow_async(bench_async, i)
                return await handle.get_result()

        t0 = time.perf_counter()
        if args.mode == "sync":
            results = await asyncio.to_thread(run_sync, args.workflows)
        else:
            results = await asyncio.gather(*(one(i) for i in range(args.workflows)))
        elapsed = time.perf_counter() - t0
    finally:
        DBOS.destroy()
    if results != [args.steps] * args.workflows:
        raise SystemExit("dbos: a workflow returned an unexpected result")
    return {
        "elapsed_s": elapsed,
        "workflows": args.workflows,
        "steps": args.steps,
        "mode": args.mode,
    }


if __name__ == "__main__":
    logging.getLogger("dbos").setLevel(logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("--system-db-url", required=True)
    p.add_argument("--workflows", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument(
        "--concurrency", type=int, default=0, help="async mode: workflows in flight (0: all)"
    )
    p.add_argument("--pool-size", type=int, default=0, help="sys_db_pool_size (0: DBOS default)")
    print(json.dumps(asyncio.run(main(p.parse_args()))))
