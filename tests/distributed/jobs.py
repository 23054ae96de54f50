"""The job code of the distribution tests: served by a node and run by `dq-ui worker`s.

`multi` runs `steps` steps; each appends "<execution> <step> <pid>" to
$DQ_TEST_WORKDIR/effects (fsync'd) when it runs, sleeps `sleep_s` and returns
the pid, so a test sees which process ran which step and whether a completed
step ever ran again. Environment: DQ_TEST_LEASE (the queue's lease).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from dq import create_job, create_queue, run

PID = os.getpid()


def _effect(execution: str, step: int) -> None:
    workdir = os.environ.get("DQ_TEST_WORKDIR")
    if not workdir:
        return
    with open(Path(workdir) / "effects", "a") as f:
        f.write(f"{execution} {step} {PID}\n")
        f.flush()
        os.fsync(f.fileno())


async def _step(data: dict[str, Any], n: int) -> dict[str, int]:
    _effect(data["id"], n)
    await asyncio.sleep(float(data.get("sleep_s", 0)))
    return {"pid": PID, "n": n}


@create_job(name="multi", retry=0)
async def multi(data: dict[str, Any]) -> dict[str, Any]:
    pids = []
    for n in range(1, int(data.get("steps", 5)) + 1):
        out = await run(f"step-{n}", lambda n=n: _step(data, n))
        pids.append(out["pid"])
    return {"pids": pids}


queue = create_queue(jobs=[multi], lease=os.environ.get("DQ_TEST_LEASE", "30s"), shutdown_grace="2s")
