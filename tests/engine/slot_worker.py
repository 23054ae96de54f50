"""A worker holding the only slot of a concurrency=1 job when it is killed.

Usage: python slot_worker.py STORAGE_URL WORKDIR start|resume
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from dq import create_job, create_queue, run, storage_from_url

WORKDIR = Path(sys.argv[2])


async def work(n: int) -> int:
    (WORKDIR / f"started-{n}").touch()
    while (WORKDIR / "block").exists():
        await asyncio.sleep(0.02)
    return n


@create_job(name="single", concurrency=1, retry=0)
async def single(data: int) -> int:
    return int(await run("work", lambda: work(data)))


async def main() -> None:
    queue = create_queue(jobs=[single], storage=storage_from_url(sys.argv[1]), poll_interval="50ms", lease="2s")
    async with queue:
        if sys.argv[3] == "start":
            for n in range(3):
                await queue.jobs.single.start(n)
            await asyncio.Event().wait()
        while await queue.jobs.get_all(status=["pending", "running", "waiting"]):
            await asyncio.sleep(0.05)
        print(len(await queue.jobs.get_all(status="completed")), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
