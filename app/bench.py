"""`dq-ui bench`: enqueue N jobs of K no-op `run` steps, drain them, report jobs/s and steps/s."""

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
from typing import Any

from dq import create_job, create_queue, run, storage_from_url
from dq.engine.storage.base import Storage

from .gc_tuning import tune_gc


async def _noop() -> None:
    return None


def _make_job(steps: int) -> Any:
    @create_job(name="bench", retry=0)
    async def bench(data: Any) -> int:
        for _ in range(steps):
            await run("noop", _noop)
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


async def _one_run(url: str, jobs: int, steps: int, in_flight: int | None, run_no: int) -> float:
    storage, path = _fresh_storage(url, run_no)
    try:
        return await _timed_run(storage, jobs, steps, in_flight)
    finally:
        if path is not None:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


async def _timed_run(storage: Storage, jobs: int, steps: int, in_flight: int | None) -> float:
    queue = create_queue(jobs=[_make_job(steps)], storage=storage, concurrency=in_flight)
    async with queue:
        runtime = await queue.started()
        t0 = time.perf_counter()
        executions = await queue.jobs.bench.start_many(range(jobs))
        done = await asyncio.gather(*await runtime.settled([e.id for e in executions]))
        elapsed = time.perf_counter() - t0
        if any(r.status != "completed" or r.output != steps for r in done):
            raise RuntimeError("bench: a job did not complete with the expected result")
    return elapsed


def measure(url: str, jobs: int, steps: int, runs: int = 3, in_flight: int | None = None) -> dict[str, Any]:
    times = [asyncio.run(_one_run(url, jobs, steps, in_flight, i)) for i in range(runs)]
    median = statistics.median(times)
    return {
        "storage": url.split("://", 1)[0],
        "jobs": jobs,
        "steps": steps,
        "runs": runs,
        "median_s": round(median, 4),
        "jobs_per_s": round(jobs / median, 1),
        "steps_per_s": round(jobs * steps / median, 1),
    }


def main(args: argparse.Namespace) -> int:
    url = args.storage
    try:
        storage_from_url(url if url != "sqlite:///" else "sqlite:///x.db")
    except ValueError as exc:
        print(f"dq-ui bench: {exc}")
        return 2
    try:
        gc_mode = tune_gc(args.gc)
    except ValueError as exc:
        print(f"dq-ui bench: {exc}")
        return 2
    if args.workers < 0 or args.worker_concurrency < 1:
        print("dq-ui bench: --workers must be >= 0 and --worker-concurrency >= 1")
        return 2
    result = measure(url, args.jobs, args.steps, args.runs, args.concurrency)
    result["gc"] = gc_mode
    result["gc_thresholds"] = list(gc.get_threshold())
    if args.workers:
        return _report_workers(args, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'storage':<10} {'jobs':>7} {'steps':>6} {'median s':>9} {'jobs/s':>10} {'steps/s':>10} {'gc':>6}")
        print(
            f"{result['storage']:<10} {result['jobs']:>7} {result['steps']:>6} {result['median_s']:>9.3f} "
            f"{result['jobs_per_s']:>10.0f} {result['steps_per_s']:>10.0f} {gc_mode:>6}"
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
