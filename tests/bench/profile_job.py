"""Where a 1-step job's time goes in the dq process: cProfile's own time per
function, grouped by area, over `app.bench.timed_run` (the code of `dq-ui bench`).

    .venv/bin/python tests/bench/profile_job.py postgresql://postgres@127.0.0.1:5432/DB 5000

The profiler roughly doubles the CPU time: read the shares, not the µs. Prints
the Markdown rows of docs/benchmarks.md's profile table.
"""
from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
from collections import defaultdict

from dq import storage_from_url
from dq.app.bench import Workload, timed_run
from dq.app.gc_tuning import tune_gc

GROUPS = [
    ("storage: the SQL commit (batch to statements and JSON rows, fences, seqs)",
     ("engine/storage/sql", "engine/storage/conditions")),
    ("storage: memory adapter", ("engine/storage/memory", "engine/storage/query")),
    ("asyncpg (protocol, encoding) and sockets", ("asyncpg", "socket", "selector_events", "sslproto")),
    ("SQLAlchemy (pool, connections)", ("sqlalchemy", "greenlet")),
    ("group commit (committer.py)", ("engine/committer", "engine/commit_groups")),
    ("executions: runtime, attempt, steps, transitions, results", (
        "engine/runtime", "engine/attempt", "engine/steps", "engine/transitions", "engine/context",
        "engine/execution", "engine/results", "engine/events", "engine/triggers", "engine/flow",
        "engine/slots", "engine/limits", "engine/creation", "engine/dispatch", "engine/endings",
        "engine/job", "engine/sources", "engine/logs",
    )),
    ("the bench's own code (app/bench.py: the handler, the no-op step, the clock)", ("app/bench",)),
    ("ids, clock, input/output checks", ("engine/ids", "engine/serialize", "engine/clock")),
    ("JSON encoder", ("json/",)),
    ("asyncio event loop, tasks, futures", ("asyncio", "_asyncio", "contextvars", "method 'run' of")),
    ("idle: waiting for the database (epoll)", ("poll' of 'select",)),
    ("builtins called from Python (list/dict/set methods, setattr, isinstance...)", ("~:",)),
]


async def main(url: str, n: int) -> None:
    await timed_run(storage_from_url(url), Workload(200, 1))
    pr = cProfile.Profile()
    pr.enable()
    el, _ = await timed_run(storage_from_url(url), Workload(n, 1))
    pr.disable()
    stats = pstats.Stats(pr).stats  # type: ignore[attr-defined]
    tot: dict[str, float] = defaultdict(float)
    total = 0.0
    for (f, _line, fn), (_cc, _nc, tt, _ct, _callers) in stats.items():
        key = f"{f}:{fn}"
        total += tt
        for name, pats in GROUPS:
            if any(p in key for p in pats):
                tot[name] += tt
                break
        else:
            tot["other"] += tt
    print(f"{n} jobs, {n/el:,.0f} jobs/s under the profiler; profiled time {total:.2f} s = {total/n*1e6:.0f} us/job")
    for name, t in sorted(tot.items(), key=lambda x: -x[1]):
        print(f"| {name} | {t/total*100:.0f}% | {t/n*1e6:.0f} |")


if __name__ == "__main__":
    tune_gc("tuned")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5000))
