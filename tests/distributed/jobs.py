"""The job code of the distribution tests: served by a node and run by `dq-ui worker`s.

`multi` runs `steps` steps; each appends "<execution> <step> <pid>" to
$DQ_TEST_WORKDIR/effects (fsync'd) when it runs, sleeps `sleep_s` and returns
the pid, so a test sees which process ran which step and whether a completed
step ever ran again. Step `block_step` waits while the file `block` exists in
the work dir (and says so in "blocked"). Environment: DQ_TEST_LEASE (the
queue's lease), DQ_TEST_INTERVAL (the node's heartbeat interval).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from dq import create_job, create_pipe, create_queue, run, sleep, thread

PID = os.getpid()


def _append(name: str, line: str) -> None:
    workdir = os.environ.get("DQ_TEST_WORKDIR")
    if not workdir:
        return
    with open(Path(workdir) / name, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _effect(execution: str, step: int) -> None:
    _append("effects", f"{execution} {step} {PID}")


async def _step(data: dict[str, Any], n: int) -> dict[str, int]:
    _effect(data["id"], n)
    await asyncio.sleep(float(data.get("sleep_s", 0)))
    block = data.get("block")
    if block and n == data.get("block_step"):
        path = Path(os.environ["DQ_TEST_WORKDIR"]) / block
        if path.exists():
            _append("blocked", f"{data['id']} {n} {PID}")
        while path.exists():
            await asyncio.sleep(0.01)
    return {"pid": PID, "n": n}


@create_job(name="multi", retry=0)
async def multi(data: dict[str, Any]) -> dict[str, Any]:
    pids = []
    for n in range(1, int(data.get("steps", 5)) + 1):
        out = await run(f"step-{n}", lambda n=n: _step(data, n))
        pids.append(out["pid"])
    return {"pids": pids}


def square(n: int, ctx: Any) -> int:
    """A thread() step: runs in a separate process of the worker."""
    return n * n


signals = create_pipe(name="signals")


@create_job(name="composite", retry=0)
async def composite(data: dict[str, Any]) -> dict[str, Any]:
    """Every kind of step through a remote worker: run, durable sleep, child job, thread, pipe."""
    first = await run("first", lambda: _step(data, 1))
    await sleep("300ms")
    child = await multi.run({"id": f"{data['id']}-child", "steps": 2})
    squared = await thread("square", square, 7)
    await signals.send({"from": data["id"]})
    return {"first": first["pid"], "child": child["pids"], "squared": squared}


queue = create_queue(
    jobs=[multi, composite], pipes=[signals], lease=os.environ.get("DQ_TEST_LEASE", "30s"), shutdown_grace="2s",
    orchestration={"interval": os.environ.get("DQ_TEST_INTERVAL", "1/s")},
)  # fmt: skip
