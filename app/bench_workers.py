"""`dq-ui bench --workers N`: the same no-op steps through an orchestration node with N
local `dq-ui worker` processes, against the in-process figure on the same storage.

The node runs in the bench process with `--no-local-work`; the workers are real
processes that load this module as their TARGET (`dq.app.bench_workers:queue`),
so node and workers share the job's code fingerprint.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dq import create_job, create_queue, run, storage_from_url

TARGET = "dq.app.bench_workers:queue"


async def _noop() -> None:
    return None


@create_job(name="bench_steps", retry=0)
async def bench_steps(steps: int) -> int:
    for _ in range(steps):
        await run("noop", _noop)
    return steps


queue = create_queue(jobs=[bench_steps])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _through_node(url: str, jobs: int, steps: int, workers: int, concurrency: int) -> float:
    port = _free_port()
    # A short poll: the bench learns of completions (made by the workers) by polling.
    node_queue = create_queue(jobs=[bench_steps], storage=storage_from_url(url), orchestration={"port": port},
                              poll_interval="20ms")  # fmt: skip
    await node_queue.orchestration.start(local_work=False)
    node = node_queue.orchestration.node
    assert node is not None
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(workers):
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dq.app.cli", "worker", TARGET,
                "--orchestrator", node_queue.orchestration.options.url, "--concurrency", str(concurrency),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
        deadline = time.monotonic() + 60
        while len(node.workers) < workers:
            if time.monotonic() > deadline or any(p.returncode is not None for p in procs):
                raise RuntimeError("bench: the worker processes did not register with the node")
            await asyncio.sleep(0.05)
        runtime = await node_queue.started()
        t0 = time.perf_counter()
        executions = await node_queue.jobs.bench_steps.start_many([steps] * jobs)
        done = await runtime.all_settled([e.id for e in executions])
        elapsed = time.perf_counter() - t0
        if any(r.status != "completed" or r.output != steps for r in done):
            raise RuntimeError("bench: a job did not complete with the expected result")
        return elapsed
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 15)
            except TimeoutError:
                p.kill()
                await p.wait()
        await node_queue.orchestration.stop()
        await node_queue.close()


def measure_workers(url: str, jobs: int, steps: int, workers: int, runs: int, concurrency: int) -> dict[str, Any]:
    times = []
    for run_no in range(runs):
        with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp:
            # `sqlite:///` alone: a fresh file per run, as the in-process bench does.
            fresh = url.rstrip("/") in ("sqlite:", "sqlite:") or url == "sqlite:///"
            run_url = f"sqlite:///{Path(tmp) / f'bench-{run_no}.db'}" if fresh else url
            times.append(asyncio.run(_through_node(run_url, jobs, steps, workers, concurrency)))
    times.sort()
    median = times[len(times) // 2]
    return {"workers": workers, "median_s": round(median, 4), "jobs_per_s": round(jobs / median, 1),
            "steps_per_s": round(jobs * steps / median, 1)}  # fmt: skip
