"""`dq-ui bench`: enqueue N jobs of K no-op `run` steps, drain them, report jobs/s and steps/s.

The limit flags measure what flow control costs: the same workload with a job
`concurrency`, a step `run(..., concurrency=N)` or per-key limits (`--keys`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from dq import create_job, create_queue, run, storage_from_url
from dq.engine.storage.base import Storage

from .gc_tuning import tune_gc

#: How the jobs are started: one `start_many` (bulk), all `start()` calls at once
#: (`asyncio.gather`), or one `start()` after the other (sequential).
START_MODES = ("bulk", "gather", "sequential")


@dataclass(frozen=True)
class Workload:
    jobs: int
    steps: int = 1
    #: Queue `concurrency`: executions in flight in the whole queue.
    in_flight: int | None = None
    #: Job `concurrency=N` (with `keys`: the limit of each key).
    job_concurrency: int | None = None
    #: Step `run("noop", ..., concurrency=N)`.
    step_concurrency: int | None = None
    #: Per-key limits: job i belongs to key i % keys.
    keys: int | None = None
    start: str = "bulk"


async def _noop() -> None:
    return None


def _concurrency(w: Workload) -> Any:
    if w.keys:
        limit = w.job_concurrency or 1
        return lambda d: {"id": f"k{d % w.keys}", "limit": limit}
    return w.job_concurrency


def _make_job(w: Workload) -> Any:
    steps, step_concurrency = w.steps, w.step_concurrency

    @create_job(name="bench", retry=0, concurrency=_concurrency(w))
    async def bench(data: Any) -> int:
        for _ in range(steps):
            await run("noop", _noop, concurrency=step_concurrency)
        return steps

    return bench


def _fresh_storage(url: str, run_no: int) -> tuple[Storage, str | None]:
    """A clean storage per run, so that runs don't measure each other's leftovers."""
    if url.startswith("sqlite://") and url.rstrip("/") in ("sqlite:", "sqlite://"):
        url = "sqlite:///"
    if url == "sqlite:///":
        path = os.path.join(tempfile.mkdtemp(prefix="dq-bench-"), f"bench-{run_no}.db")
        return storage_from_url(f"sqlite:///{path}"), path
    return storage_from_url(url), None


async def _one_run(url: str, w: Workload, run_no: int) -> tuple[float, float]:
    storage, path = _fresh_storage(url, run_no)
    try:
        return await timed_run(storage, w)
    finally:
        if path is not None:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


async def timed_run(storage: Storage, w: Workload) -> tuple[float, float]:
    """Seconds until every job settled, and seconds spent starting them."""
    queue = create_queue(jobs=[_make_job(w)], storage=storage, concurrency=w.in_flight)
    async with queue:
        runtime = await queue.started()
        job: Any = queue.jobs.bench
        t0 = time.perf_counter()
        if w.start == "bulk":
            executions = await job.start_many(range(w.jobs))
        elif w.start == "gather":
            executions = await asyncio.gather(*(job.start(i) for i in range(w.jobs)))
        else:
            executions = [await job.start(i) for i in range(w.jobs)]
        started = time.perf_counter() - t0
        done = await runtime.all_settled([e.id for e in executions])
        elapsed = time.perf_counter() - t0
        if any(r.status != "completed" or r.output != w.steps for r in done):
            raise RuntimeError("bench: a job did not complete with the expected result")
    return elapsed, started


def measure(url: str, w: Workload, runs: int = 3) -> dict[str, Any]:
    timings = [asyncio.run(_one_run(url, w, i)) for i in range(runs)]
    median = statistics.median(t for t, _ in timings)
    start_median = statistics.median(s for _, s in timings)
    return {
        "storage": url.split("://", 1)[0],
        "jobs": w.jobs,
        "steps": w.steps,
        "runs": runs,
        "start": w.start,
        "concurrency": w.in_flight,
        "job_concurrency": w.job_concurrency,
        "step_concurrency": w.step_concurrency,
        "keys": w.keys,
        "median_s": round(median, 4),
        "jobs_per_s": round(w.jobs / median, 1),
        "steps_per_s": round(w.jobs * w.steps / median, 1),
        "starts_per_s": round(w.jobs / start_median, 1) if start_median > 0 else None,
    }


def workload(args: argparse.Namespace) -> Workload:
    for flag in ("jobs", "steps", "concurrency", "job_concurrency", "step_concurrency", "keys"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "steps" else 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be at least {0 if flag == 'steps' else 1}, got {value}")
    if args.step_concurrency is not None and args.steps < 1:
        raise ValueError("--step-concurrency needs --steps of at least 1")
    return Workload(
        args.jobs, args.steps, args.concurrency, args.job_concurrency, args.step_concurrency, args.keys, args.start
    )


def main(args: argparse.Namespace) -> int:
    url = args.storage
    try:
        storage_from_url(url if url != "sqlite:///" else "sqlite:///x.db")
        w = workload(args)
        gc_mode = tune_gc(args.gc)
    except ValueError as exc:
        print(f"dq-ui bench: {exc}")
        return 2
    if args.workers < 0 or args.worker_concurrency < 1:
        print("dq-ui bench: --workers must be >= 0 and --worker-concurrency >= 1")
        return 2
    result = measure(url, w, args.runs)
    result["gc"] = gc_mode
    result["gc_thresholds"] = list(gc.get_threshold())
    if args.workers:
        return _report_workers(args, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'storage':<10} {'jobs':>7} {'steps':>6} {'median s':>9} {'jobs/s':>10} {'steps/s':>10} {'starts/s':>10} {'gc':>8}")
        print(
            f"{result['storage']:<10} {result['jobs']:>7} {result['steps']:>6} {result['median_s']:>9.3f} "
            f"{result['jobs_per_s']:>10.0f} {result['steps_per_s']:>10.0f} {result['starts_per_s'] or 0:>10.0f} {gc_mode:>8}"
        )
    return 0


def _report_workers(args: argparse.Namespace, local: dict[str, Any]) -> int:
    """In-process and through a node with N worker processes, same storage, same run."""
    from .bench_workers import measure_workers

    remote = measure_workers(args.storage, args.jobs, args.steps, args.workers, args.runs, args.worker_concurrency)
    ratio = remote["steps_per_s"] / local["steps_per_s"] if local["steps_per_s"] else 0.0
    result = {**local, "node": remote, "node_vs_in_process": round(ratio, 3)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'mode':<26} {'jobs':>7} {'steps':>6} {'median s':>9} {'jobs/s':>10} {'steps/s':>10}")
    print(f"{'in-process ' + local['storage']:<26} {args.jobs:>7} {args.steps:>6} {local['median_s']:>9.3f} "
          f"{local['jobs_per_s']:>10.0f} {local['steps_per_s']:>10.0f}")  # fmt: skip
    label = f"node + {args.workers} worker(s)"
    print(f"{label:<26} {args.jobs:>7} {args.steps:>6} {remote['median_s']:>9.3f} "
          f"{remote['jobs_per_s']:>10.0f} {remote['steps_per_s']:>10.0f}")  # fmt: skip
    print(f"node / in-process: {ratio:.2f}")
    return 0
