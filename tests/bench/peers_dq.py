"""One timed dq run: `app.bench`'s workload (N jobs of K no-op `run` steps).

Run by run_peers.py against a fresh store; prints one JSON line. It calls
`app.bench.timed_run`, the code path behind `dq-ui bench`, with a storage
object built here so that Redis runs can use their own key prefix (which
`--storage URL` cannot express). The clock covers `start_many` (the enqueue)
and the drain until every execution is settled, as `dq-ui bench` does (`--clock
starts`: only the starts, for the producer's one-at-a-time figure); opening
the storage (and migrating its schema) is outside it. `--gc` sets the garbage
collector as `dq-ui bench --gc` does (app/gc_tuning.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from dq import create_redis_storage, storage_from_url
from dq.app.bench import Workload, timed_run
from dq.app.gc_tuning import tune_gc


async def main(args: argparse.Namespace) -> dict[str, float | int]:
    if args.redis_prefix:
        storage = create_redis_storage(args.storage, prefix=args.redis_prefix)
    else:
        storage = storage_from_url(args.storage)
    w = Workload(args.jobs, args.steps, args.concurrency, start=args.start)
    c0 = time.process_time()
    elapsed, started = await timed_run(storage, w)
    cpu = time.process_time() - c0  # includes opening and closing the queue: a little more than the clock's
    # --clock starts: the producer's figure (starts/s), the drain goes on meanwhile.
    timed = started if args.clock == "starts" else elapsed
    return {"elapsed_s": timed, "total_s": elapsed, "start_s": started, "cpu_s": cpu, "jobs": args.jobs, "steps": args.steps}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument(
        "--storage", required=True, help="memory://, sqlite:///file, postgresql://, redis://"
    )
    p.add_argument("--redis-prefix", default="")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument(
        "--concurrency", type=int, default=None, help="executions in flight (default: unlimited)"
    )
    p.add_argument("--start", choices=("bulk", "gather", "sequential"), default="bulk",
                   help="start_many, all start() calls at once, or one start() after the other")
    p.add_argument("--clock", choices=("all", "starts"), default="all",
                   help="time until every job settled (all) or until the last start() returned")
    p.add_argument("--gc", choices=("tuned", "default"), default="tuned")
    args = p.parse_args()
    tune_gc(args.gc)
    print(json.dumps({**asyncio.run(main(args)), "gc": args.gc}))
