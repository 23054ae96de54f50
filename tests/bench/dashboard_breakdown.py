"""Where the dashboard's CPU goes, per job: the dashboard's own code timed in-process
(issue 17), a figure that moves far less with the machine's load than jobs/s.

The same run as `dashboard_cost.py`'s dashboard mode (1-step jobs on PostgreSQL, the
app of `dq-ui serve` under uvicorn, 20 SSE clients, half overview, half executions
list), with thread CPU time summed over: the bus's deliveries of local commits
(`bus`: `EventBus.notify`, the hub's sink included), the hub's per-event intake
(`intake`: its bookkeeping of each event), its ticks (`tick`: queries, rendering,
publishing), the SSE encoding per client (`encode`), and the garbage collector
(`gc0`...). Runs in the checkout whose venv runs it; checkouts before the bus's
followers (e79c747 and earlier) took events one at a time in `Hub._take`, which is
timed instead. Prints a JSON list, one object per run, in µs per job.

    .venv/bin/python tests/bench/dashboard_breakdown.py --runs 3 --jobs 5000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import uvicorn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_cost as dc

import dq.engine.events as bus_module
import dq.web.hub as hub_module
import dq.web.sse as sse_module
from dq import create_queue, storage_from_url
from dq.app import create_app
from dq.app.bench import Workload, _make_job
from dq.app.gc_tuning import tune_gc
from dq.web.dashboard import STATE_KEY
from dq.web.settings import Settings

SPENT: collections.Counter[str] = collections.Counter()


def _timed(owner: Any, name: str, key: str) -> None:
    fn: Callable[..., Any] = getattr(owner, name)
    if asyncio.iscoroutinefunction(fn):
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return await fn(*args, **kwargs)
            finally:
                SPENT[key] += time.thread_time() - t
        setattr(owner, name, timed_async)
    else:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                SPENT[key] += time.thread_time() - t
        setattr(owner, name, timed)


async def _take(self: Any, queue: asyncio.Queue[Any]) -> None:
    """`Hub._take` of the checkouts before `EventBus.follow`, timed per burst."""
    metrics = self.dash.metrics
    while True:
        ev = await queue.get()
        t = time.thread_time()
        while ev is not None:
            self._pending.append(ev)
            self._track(ev)
            metrics.observe(ev)
            if queue.empty():
                break
            ev = queue.get_nowait()
        self._wake.set()
        SPENT["intake"] += time.thread_time() - t
        if ev is None:
            return


def _instrument() -> None:
    _timed(bus_module.EventBus, "notify", "bus")
    _timed(hub_module.Hub, "_tick", "tick")
    _timed(sse_module, "_encode", "encode")
    if hasattr(hub_module.Hub, "_take"):
        hub_module.Hub._take = _take
    else:
        _timed(hub_module.Hub, "absorb", "intake")
    started: dict[str, float] = {}

    def collector(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.thread_time()
        else:
            SPENT[f"gc{info['generation']}"] += time.thread_time() - started["t"]

    gc.callbacks.append(collector)


async def one_run(url: str, jobs: int, clients: int, pages: str) -> dict[str, float]:
    queue = create_queue(jobs=[_make_job(Workload(jobs, 1))], storage=storage_from_url(url))
    async with queue:
        runtime = await queue.started()
        app = create_app(queue, settings=Settings(bound_host="127.0.0.1"), manage_queue=False, label="bench")
        port = dc._free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        serving = asyncio.create_task(server.serve())
        readers: subprocess.Popen[bytes] | None = None
        try:
            while not server.started:
                await asyncio.sleep(0.02)
            readers = subprocess.Popen([sys.executable, "-c", dc.CLIENT, f"http://127.0.0.1:{port}", str(clients), pages])
            hub = app.state[STATE_KEY].hub
            while len(hub.clients) < clients:
                await asyncio.sleep(0.05)
            gc.collect()
            SPENT.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            job: Any = queue.jobs.bench
            executions = await job.start_many(range(jobs))
            await asyncio.gather(*await runtime.settled([e.id for e in executions]))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            spent = dict(SPENT)
        finally:
            if readers is not None:
                readers.kill()
                readers.wait()
            server.should_exit = True
            await serving
    return {"jobs_s": jobs / elapsed, "cpu_us": cpu / jobs * 1e6, **{k: v / jobs * 1e6 for k, v in spent.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pg-dsn", default=os.environ.get("DQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--pages", default="overview,executions")
    a = p.parse_args()
    tune_gc("tuned")
    _instrument()
    out = []
    for n in range(a.runs):
        name, url = asyncio.run(dc._database(a.pg_dsn, 100 + n))
        try:
            out.append(asyncio.run(one_run(url, a.jobs, a.clients, a.pages)))
        finally:
            asyncio.run(dc._drop(a.pg_dsn, name))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
