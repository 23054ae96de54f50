"""What the dashboard costs the engine: the same 1-step jobs with and without a
dashboard serving 20 live (SSE) clients in the same process (issue 17: the engine
keeps at least 90% of its throughput).

Each run opens a fresh PostgreSQL database (or the storage given), starts the
queue and, in the "dashboard" runs, the app of `dq-ui serve` under uvicorn on
loopback with `--clients` SSE streams read by a separate process (by default half
the overview page, half the executions list: what open browser tabs follow; each
client loads its page, then follows the stream URL the page names, as a browser does). The
clock covers `start_many` until every execution has settled, as `dq-ui bench`.
Runs alternate between the two modes; the medians and their ratio are printed.

    .venv/bin/python tests/bench/dashboard_cost.py --runs 3 --jobs 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import uvicorn

from dq import create_queue, storage_from_url
from dq.app import create_app
from dq.app.bench import Workload, _make_job
from dq.app.gc_tuning import tune_gc
from dq.web.dashboard import STATE_KEY
from dq.web.settings import Settings

CLIENT = """
import asyncio, html, re, sys, httpx
async def one(client, base, page):
    # as a browser tab: load the page, then follow the stream it names
    r = await client.get(base + ("/" if page == "overview" else "/" + page))
    url = html.unescape(re.search(r'sse-connect="([^"]+)"', r.text).group(1))
    async with client.stream("GET", base + url) as r:
        async for _ in r.aiter_bytes():
            pass
async def main(base, n, pages):
    async with httpx.AsyncClient(timeout=None) as client:
        await asyncio.gather(*(one(client, base, pages[i % len(pages)]) for i in range(n)))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")))
"""


def _cpu_of(proc: subprocess.Popen[bytes] | None) -> float:
    """CPU seconds a child has used so far (Linux /proc; 0 without a child)."""
    if proc is None:
        return 0.0
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _database(admin_dsn: str, n: int) -> tuple[str, str]:
    name = f"dq_dash_{os.getpid()}_{n}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin_dsn)
    return name, urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


async def _drop(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def one_run(url: str, jobs: int, clients: int, pages: str) -> tuple[float, float, float]:
    """Seconds to run the jobs, this process's CPU seconds meanwhile (engine and dashboard),
    and the CPU seconds of the clients' process over its whole life."""
    w = Workload(jobs, 1)
    queue = create_queue(jobs=[_make_job(w)], storage=storage_from_url(url))
    async with queue:
        runtime = await queue.started()
        server: uvicorn.Server | None = None
        serving: asyncio.Task[None] | None = None
        readers: subprocess.Popen[bytes] | None = None
        try:
            if clients:
                app = create_app(queue, settings=Settings(bound_host="127.0.0.1"), manage_queue=False, label="bench")
                port = _free_port()
                server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
                serving = asyncio.create_task(server.serve())
                while not server.started:
                    await asyncio.sleep(0.02)
                readers = subprocess.Popen([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}", str(clients), pages])
                hub = app.state[STATE_KEY].hub
                deadline = time.monotonic() + 30
                while len(hub.clients) < clients:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {len(hub.clients)} of {clients} SSE clients connected")
                    await asyncio.sleep(0.05)
            job: Any = queue.jobs.bench
            # Every window starts with the collector in the same state: otherwise a gen-1
            # collection (~0.15 s here) lands in one run or another, by allocation counts
            # carried over from the runs before it, and moves that run's figures by 20%.
            gc.collect()
            t0, c0, r0 = time.perf_counter(), time.process_time(), _cpu_of(readers)
            executions = await job.start_many(range(jobs))
            await runtime.all_settled([e.id for e in executions])
            elapsed, cpu, reader_cpu = time.perf_counter() - t0, time.process_time() - c0, _cpu_of(readers) - r0
        finally:
            if readers is not None:
                readers.kill()
                readers.wait()
            if server is not None and serving is not None:
                server.should_exit = True
                await serving
    return elapsed, cpu, reader_cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pg-dsn", default=os.environ.get("DQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="admin DSN: each run creates (and drops) its own database")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--pages", default="overview,executions",
                   help="the pages the clients follow, comma-separated, assigned in turn")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    tune_gc("tuned")
    rates: dict[str, list[float]] = {"engine alone": [], f"dashboard + {a.clients} SSE clients": []}
    cpu: dict[str, list[float]] = {mode: [] for mode in rates}  # µs of this process's CPU per job
    reader_cpu: list[float] = []  # µs of the clients' process per job
    n = 0
    for r in range(a.runs):
        modes = list(rates) if r % 2 == 0 else list(rates)[::-1]
        for mode in modes:
            n += 1
            name, url = asyncio.run(_database(a.pg_dsn, n))
            try:
                clients = a.clients if mode != "engine alone" else 0
                elapsed, used, read = asyncio.run(one_run(url, a.jobs, clients, a.pages))
            finally:
                asyncio.run(_drop(a.pg_dsn, name))
            rates[mode].append(a.jobs / elapsed)
            cpu[mode].append(used / a.jobs * 1e6)
            if clients:
                reader_cpu.append(read / a.jobs * 1e6)
            print(f"  {mode:<28} {a.jobs / elapsed:>10,.0f} jobs/s  {used / a.jobs * 1e6:>6,.0f} µs CPU/job", file=sys.stderr)
    medians = {mode: statistics.median(xs) for mode, xs in rates.items()}
    alone, with_ui = medians.values()
    cpu_medians = {mode: statistics.median(xs) for mode, xs in cpu.items()}
    result = {"jobs": a.jobs, "clients": a.clients, "runs": a.runs, "medians": medians,
              "samples": rates, "ratio": with_ui / alone, "cpu_us": cpu_medians, "cpu_samples": cpu,
              "reader_cpu_us": statistics.median(reader_cpu) if reader_cpu else 0.0}
    if a.json:
        print(json.dumps(result))
    else:
        for mode, med in medians.items():
            print(f"{mode:<30} {med:>10,.0f} jobs/s   ({', '.join(f'{x:,.0f}' for x in rates[mode])})"
                  f"   {cpu_medians[mode]:,.0f} µs CPU/job")
        print(f"with the dashboard / without: {with_ui / alone:.2f}x (issue 17: at least 0.90)")
        print(f"the clients' process meanwhile: {result['reader_cpu_us']:,.0f} µs CPU/job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
