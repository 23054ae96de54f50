"""CPU per job of several dq checkouts, interleaved in the same run (issue 10's floor).

    .venv/bin/python tests/bench/cpu_ab.py --rounds 4 /work/wt/base2b6 /work/wt/cpu

Each checkout runs `dq-ui bench`'s workload (`timed_run`: N jobs of K no-op steps)
in its own `.venv`, one after the other, round after round. Besides jobs/s it
reads the process's CPU time per job (`time.process_time`: the event loop plus
SQLite's thread) and the event loop thread's alone (`time.thread_time`). On a
machine shared with other work, wall-clock throughput moves with the load by 2x
within minutes; CPU per job moves far less, so it is the figure to compare.
Prints one Markdown row per workload and checkout: medians, and the ratio of
jobs/s and of CPU per job against the first checkout. The PostgreSQL workloads
(`--workloads postgresql-1,postgresql-10`; server `DQ_BENCH_PG_DSN`) run each
sample in a database of its own, created and dropped around it; their CPU is the
dq process's alone, not the server's.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys

# Run inside each checkout's venv. 2b61508 and earlier import `engine` and `app`
# and have `_timed_run(storage, jobs, steps, in_flight)`; later ones `dq`.
CHILD = r"""
import asyncio, json, sys, tempfile, time
try:
    from dq import storage_from_url
    from dq.app.bench import Workload, timed_run
    from dq.app.gc_tuning import tune_gc

    async def run(storage, n, k):
        return (await timed_run(storage, Workload(n, k)))[0]
except ImportError:
    from engine import storage_from_url
    from app.bench import _timed_run
    from app.gc_tuning import tune_gc

    async def run(storage, n, k):
        return await _timed_run(storage, n, k, None)

url, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def storage():
    if url == "sqlite":
        return storage_from_url(f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    return storage_from_url(url)  # PostgreSQL: a fresh database per sample (`one`)


async def main():
    await run(storage(), 200, k)  # warm-up: imports, first-call caches
    p0, t0 = time.process_time(), time.thread_time()
    elapsed = await run(storage(), n, k)
    p1, t1 = time.process_time(), time.thread_time()
    print(json.dumps({"jobs_s": n / elapsed, "cpu_us": (p1 - p0) / n * 1e6, "loop_us": (t1 - t0) / n * 1e6}))


tune_gc("tuned")
asyncio.run(main())
"""

WORKLOADS = {
    "memory-1": ("memory://", 10_000, 1), "memory-10": ("memory://", 2_000, 10),
    "sqlite-1": ("sqlite", 3_000, 1), "sqlite-10": ("sqlite", 1_000, 10),
    "postgresql-1": ("postgresql", 5_000, 1), "postgresql-10": ("postgresql", 1_000, 10),
}
PG = os.environ.get("DQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def one(checkout: str, url: str, n: int, k: int) -> dict[str, float]:
    python = os.path.join(checkout, ".venv", "bin", "python")
    db = None
    if url == "postgresql":  # a fresh database: the sample does not inherit the last one's rows
        db = f"dq_cpuab_{secrets.token_hex(4)}"
        subprocess.run(["psql", PG, "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
        url = PG.rsplit("/", 1)[0] + "/" + db
    try:
        out = subprocess.run([python, "-c", CHILD, url, str(n), str(k)], cwd=checkout, capture_output=True, text=True, check=True)
    finally:
        if db is not None:
            subprocess.run(["psql", PG, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", help="dq checkouts, each with its .venv; the first is the reference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {sorted(WORKLOADS)}")
    args = parser.parse_args()
    names = args.workloads.split(",")
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; expected some of {sorted(WORKLOADS)}")
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for name in names:
            for checkout in args.checkouts:
                sample = one(checkout, *WORKLOADS[name])
                samples.setdefault((name, checkout), []).append(sample)
                print(f"round {r + 1} {name} {checkout}: {sample}", file=sys.stderr, flush=True)
    print("| workload | checkout | jobs/s | CPU µs/job | loop thread µs/job | jobs/s ratio | CPU ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        ref = None
        for checkout in args.checkouts:
            got = samples[(name, checkout)]
            med = {key: statistics.median(s[key] for s in got) for key in ("jobs_s", "cpu_us", "loop_us")}
            ref = ref or med
            print(
                f"| {name} | {os.path.basename(checkout.rstrip('/'))} | {med['jobs_s']:,.0f} | {med['cpu_us']:.0f} "
                f"| {med['loop_us']:.0f} | {med['jobs_s'] / ref['jobs_s']:.2f}x | {med['cpu_us'] / ref['cpu_us']:.2f}x |"
            )


if __name__ == "__main__":
    main()
