"""Flow control's cost, one table: the same no-op jobs without a limit and with each
kind of limit, on every adapter, in one run (issue 15's table).

Each cell is its own process (a limit that never drains is cut at --timeout and
shown as such) on a fresh store: a new PostgreSQL database, a new Redis key
prefix (deleted afterwards), a new SQLite file. With --warm, each cell first runs
its workload once untimed on the same storage handle, so that the timed run finds
the pool's connections, their prepared statements and the server's plans made (the
steady state of a running process, rather than its first hundred jobs).

    .venv/bin/python tests/bench/limits_table.py [--jobs 100] [--seq-jobs 500] [--runs 3] [--warm] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

PG = os.environ.get("DQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("DQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ADAPTERS = ("memory", "sqlite", "postgresql", "redis")

#: (row label, bench flags); `{n}` is --jobs, `{s}` is --seq-jobs.
ROWS: list[tuple[str, list[str]]] = [
    ("none", ["--jobs", "{n}", "--start", "gather"]),
    ("job concurrency=10", ["--jobs", "{n}", "--start", "gather", "--job-concurrency", "10"]),
    ("step concurrency=10", ["--jobs", "{n}", "--start", "gather", "--step-concurrency", "10"]),
    ("10 keys, limit 1 each", ["--jobs", "{n}", "--start", "gather", "--keys", "10"]),
    ("sequential start(), no limit", ["--jobs", "{s}", "--start", "sequential"]),
    ("sequential start(), queue concurrency=10", ["--jobs", "{s}", "--start", "sequential", "--concurrency", "10"]),
]


async def _cell(args: argparse.Namespace) -> dict[str, Any]:
    from dq import create_redis_storage, storage_from_url
    from dq.app.bench import Workload, timed_run
    from dq.app.gc_tuning import tune_gc

    tune_gc(None)
    storage = create_redis_storage(args.storage, prefix=args.redis_prefix) if args.redis_prefix else storage_from_url(args.storage)
    w = Workload(args.jobs, 1, args.concurrency, args.job_concurrency, args.step_concurrency, args.keys, args.start)
    if args.warm:  # the same workload once, untimed, on the same handle: its pool, prepared statements, caches
        await timed_run(storage, w)
    cpu0 = time.process_time()
    elapsed, started = await timed_run(storage, w)
    cpu_ms = (time.process_time() - cpu0) * 1000 / args.jobs  # this process: the loop and SQLite's thread
    return {"jobs_per_s": args.jobs / elapsed, "starts_per_s": args.jobs / started, "cpu_ms_per_job": cpu_ms}


def _cell_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--storage", required=True)
    p.add_argument("--redis-prefix", default="")
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--start", default="gather")
    p.add_argument("--warm", action="store_true")
    for flag in ("--concurrency", "--job-concurrency", "--step-concurrency", "--keys"):
        p.add_argument(flag, type=int, default=None)
    print(json.dumps(asyncio.run(_cell(p.parse_args(argv)))), flush=True)


def _run_cell(adapter: str, flags: list[str], timeout_s: float) -> dict[str, Any] | str:
    cleanup: list[list[str]] = []
    tmp = None
    extra: list[str] = []
    if adapter == "memory":
        url = "memory://"
    elif adapter == "sqlite":
        tmp = tempfile.mkdtemp(prefix="dq-limits-")
        url = f"sqlite:///{tmp}/bench.db"
    elif adapter == "postgresql":
        name = f"dq_limits_{secrets.token_hex(4)}"
        subprocess.run(["psql", PG, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
        url = PG.rsplit("/", 1)[0] + "/" + name
        cleanup.append(["psql", PG, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])
    else:
        prefix = f"dqlim{secrets.token_hex(4)}"
        url, extra = REDIS, ["--redis-prefix", prefix]
        cleanup.append(["redis-cli", "-u", REDIS, "--scan", "--pattern", f"{prefix}:*"])
    cmd = [sys.executable, __file__, "--cell", "--storage", url, *extra, *flags]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            return f"error: {last[:120]}"
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    except subprocess.TimeoutExpired:
        return f"> {timeout_s:.0f} s"
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for c in cleanup:
            if c[0] == "redis-cli":
                keys = subprocess.run(c, capture_output=True, text=True).stdout.split()
                for start in range(0, len(keys), 500):
                    subprocess.run(["redis-cli", "-u", REDIS, "DEL", *keys[start : start + 500]], capture_output=True)
            else:
                subprocess.run(c, capture_output=True)


def _median(cells: list[dict[str, Any] | str]) -> dict[str, Any] | str:
    """The run with the median jobs/s (a failed or cut run counts as slowest)."""
    done = sorted((c for c in cells if isinstance(c, dict)), key=lambda c: c["jobs_per_s"])
    if len(done) < len(cells):
        return next(c for c in cells if isinstance(c, str))
    return done[len(done) // 2]


def _fmt(cell: dict[str, Any] | str, key: str = "jobs_per_s") -> str:
    return cell if isinstance(cell, str) else f"{cell[key]:,.0f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--seq-jobs", type=int, default=500)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--runs", type=int, default=3, help="runs per cell (each its own process); the median is shown")
    p.add_argument("--adapters", default=",".join(ADAPTERS))
    p.add_argument("--json", action="store_true")
    p.add_argument("--warm", action="store_true", help="run each cell's workload once untimed first (same process)")
    args = p.parse_args()
    adapters = args.adapters.split(",")
    table: dict[str, dict[str, Any]] = {}
    for label, flags in ROWS:
        filled = [f.format(n=args.jobs, s=args.seq_jobs) for f in flags] + (["--warm"] if args.warm else [])
        table[label] = {a: _median([_run_cell(a, filled, args.timeout) for _ in range(args.runs)]) for a in adapters}
        if args.json:
            print(json.dumps({"row": label, **table[label]}), flush=True)
    if args.json:
        return
    print(f"jobs/s ({args.jobs} jobs started with gather; sequential rows: {args.seq_jobs} jobs, starts/s · jobs/s;"
          f" median of {args.runs} runs)")
    print("| limit | " + " | ".join(adapters) + " |")
    print("|---|" + "---:|" * len(adapters))
    for label, flags in ROWS:
        if "sequential" in flags:
            cells = [f"{_fmt(c, 'starts_per_s')} · {_fmt(c)}" if isinstance(c, dict) else c for c in table[label].values()]
        else:
            cells = [_fmt(c) for c in table[label].values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
        none = table["none"] if "sequential" not in flags else table["sequential start(), no limit"]
        ratios = [
            f"{c['jobs_per_s'] / n['jobs_per_s']:.0%}" if isinstance(c, dict) and isinstance(n, dict) else "—"
            for c, n in zip(table[label].values(), none.values(), strict=True)
        ]
        print("|   of unlimited | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--cell":
        _cell_main(sys.argv[2:])
    else:
        main()
