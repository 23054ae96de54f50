"""What a dq job costs on PostgreSQL, on both sides of the socket, for several
checkouts interleaved in the same run.

    .venv/bin/python tests/bench/pg_cost.py --rounds 5 /tmp/base .
    .venv/bin/python tests/bench/pg_cost.py --trace .        # + statements per job

On two cores the dq process and the PostgreSQL server share the CPU, so the
server's work per job limits jobs/s as much as Python's. Each run gets a fresh
database; the child (in the checkout's own `.venv`) opens a queue, runs a
warm-up, then N jobs of K no-op steps with the queue open, and reports:

- jobs/s (wall clock: moves with the machine's load),
- the dq process's CPU per job (`time.process_time`),
- the server's CPU per job: the backends serving this database, read from
  /proc/<pid>/schedstat (ns on CPU) before and after the timed run, found by
  their process title (`postgres: ... <database> ...`); the walwriter's too,
  separately (shared with the machine's other databases),
- with `--trace`: statements and transactions per job, counted by wrapping
  asyncpg's calls (SQLAlchemy's go through prepared statements).

Prints one Markdown row per workload and checkout (medians) and the ratios
against the first checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import asyncio, collections, json, os, sys, time

from dq import create_job, create_queue, run, storage_from_url
from dq.app.gc_tuning import tune_gc

url, db, n, k, trace = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"


def backends():
    # pid -> ns on CPU of the server processes serving `db` (and the walwriter, as "wal").
    out, wal = {}, 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().decode(errors="replace")
            if not title.startswith("postgres:"):
                continue
            with open(f"/proc/{pid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:
            continue
        if f" {db} " in title:
            out[pid] = ns
        elif "walwriter" in title:
            wal += ns
    return out, wal


counts = collections.Counter()
if trace:
    import asyncpg
    from asyncpg.prepared_stmt import PreparedStatement

    def wrap(cls, name, key):
        orig = getattr(cls, name)

        async def call(self, *a, **kw):
            sql = a[0] if cls is not PreparedStatement else self.get_query()
            counts[key(sql) if isinstance(sql, str) else name] += 1
            return await orig(self, *a, **kw)

        setattr(cls, name, call)

    def label(sql):
        s = " ".join(sql.split())
        return s[:90]

    for name in ("fetch", "fetchval", "fetchrow", "execute", "executemany"):
        wrap(asyncpg.Connection, name, label)
    for name in ("fetch", "fetchval", "fetchrow"):
        wrap(PreparedStatement, name, label)


async def noop():
    return None


@create_job(name="bench", retry=0)
async def bench(data):
    for _ in range(k):
        await run("noop", noop)
    return k


async def batch(runtime, job, m):
    executions = await job.start_many(range(m))
    done = await asyncio.gather(*await runtime.settled([e.id for e in executions]))
    assert all(r.status == "completed" for r in done)


async def main():
    queue = create_queue(jobs=[bench], storage=storage_from_url(url))
    async with queue:
        runtime = await queue.started()
        job = queue.jobs.bench
        if os.environ.get("DQ_COST_SQL"):  # an experiment on the schema (this database only)
            import asyncpg
            conn = await asyncpg.connect(url)
            await conn.execute(os.environ["DQ_COST_SQL"])
            await conn.close()
        await batch(runtime, job, 200)  # warm-up: imports, first-call caches, the pool
        counts.clear()
        s0, w0 = backends()
        p0, t0 = time.process_time(), time.perf_counter()
        await batch(runtime, job, n)
        t1, p1 = time.perf_counter(), time.process_time()
        s1, w1 = backends()
    server = sum(ns - s0.get(pid, 0) for pid, ns in s1.items())
    res = {"jobs_s": n / (t1 - t0), "cpu_us": (p1 - p0) / n * 1e6, "server_us": server / n / 1e3, "wal_us": (w1 - w0) / n / 1e3}
    if trace:
        res["statements"] = {s: c / n for s, c in counts.most_common()}
    print(json.dumps(res))


tune_gc("tuned")
asyncio.run(main())
"""

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def psql(sql: str) -> None:
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql], check=True)


def one(checkout: str, n: int, k: int, trace: bool, no: int) -> dict[str, object]:
    db = f"dq_cost_{os.getpid()}_{no}"
    psql(f'CREATE DATABASE "{db}"')
    try:
        python = os.path.join(checkout, ".venv", "bin", "python")
        url = f"postgresql://postgres@127.0.0.1:5432/{db}"
        argv = [python, "-c", CHILD, url, db, str(n), str(k), "1" if trace else "0"]
        out = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", help="dq checkouts, each with its .venv; the first is the reference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--steps", default="1", help="steps per job, comma-separated workloads (e.g. 1,10)")
    parser.add_argument("--trace", action="store_true", help="count statements per job (slows the client)")
    args = parser.parse_args()
    keys = ("jobs_s", "cpu_us", "server_us", "wal_us")
    samples: dict[tuple[int, str], list[dict[str, object]]] = {}
    no = 0
    for r in range(args.rounds):
        for k in (int(x) for x in args.steps.split(",")):
            n = args.jobs if k == 1 else max(1, args.jobs // k)
            for checkout in args.checkouts:
                no += 1
                sample = one(checkout, n, k, args.trace, no)
                samples.setdefault((k, checkout), []).append(sample)
                brief = {key: round(float(sample[key]), 1) for key in keys}  # type: ignore[arg-type]
                print(f"round {r + 1} {k}-step {checkout}: {brief}", file=sys.stderr, flush=True)
                if args.trace:
                    for sql, per in sample["statements"].items():  # type: ignore[union-attr]
                        print(f"    {per:8.4f}/job  {sql}", file=sys.stderr)
    print("| steps | checkout | jobs/s | dq CPU µs/job | server CPU µs/job | walwriter µs/job | jobs/s ratio | dq CPU ratio | server CPU ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (k, checkout), got in samples.items():
        med = {key: statistics.median(float(s[key]) for s in got) for key in keys}  # type: ignore[arg-type]
        ref_got = samples[(k, args.checkouts[0])]
        ref = {key: statistics.median(float(s[key]) for s in ref_got) for key in keys}  # type: ignore[arg-type]
        print(
            f"| {k} | {os.path.basename(os.path.abspath(checkout))} | {med['jobs_s']:,.0f} | {med['cpu_us']:.0f} | {med['server_us']:.0f}"
            f" | {med['wal_us']:.0f} | {med['jobs_s'] / ref['jobs_s']:.2f}x | {med['cpu_us'] / ref['cpu_us']:.2f}x"
            f" | {med['server_us'] / ref['server_us']:.2f}x |"
        )


if __name__ == "__main__":
    main()
