"""A 5-step workflow run in a subprocess that the recovery tests kill with SIGKILL.

Usage: python crashy.py STORAGE_URL WORKDIR start N   (start N executions, run until killed)
       python crashy.py STORAGE_URL WORKDIR resume     (recover and finish everything)

Each step appends "<execution id> <step>" to WORKDIR/effects (fsync'd), so the test
can count side effects. Step 3 blocks while WORKDIR/block exists.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from engine import create_job, create_queue, run, storage_from_url

WORKDIR = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")


def effect(execution: str, step: int) -> None:
    with open(WORKDIR / "effects", "a") as f:
        f.write(f"{execution} {step}\n")
        f.flush()
        os.fsync(f.fileno())


async def step_three(execution: str) -> None:
    effect(execution, 3)
    with open(WORKDIR / "in-step-3", "a") as f:
        f.write(execution + "\n")
    while (WORKDIR / "block").exists():
        await asyncio.sleep(0.02)


@create_job(name="five_steps", retry=0)
async def five_steps(data: Any) -> str:
    eid = data["id"]
    for n in range(1, 6):
        if n == 3:
            await run("step-3", lambda: step_three(eid))
        else:
            await run(f"step-{n}", lambda n=n: effect(eid, n))
    return "done"


async def main() -> None:
    url, mode = sys.argv[1], sys.argv[3]
    queue = create_queue(jobs=[five_steps], storage=storage_from_url(url),
                         poll_interval="50ms", lease="2s")  # fmt: skip
    await queue.start()
    if mode == "start":
        for i in range(int(sys.argv[4])):
            await queue.jobs.five_steps.start({"id": f"e{i}"})
        print("started", flush=True)
        await asyncio.Event().wait()  # run until killed
    else:
        while await queue.jobs.get_all(status=["pending", "running", "waiting"]):
            await asyncio.sleep(0.05)
        done = await queue.jobs.get_all(status="completed")
        print(f"completed {len(done)}", flush=True)
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
