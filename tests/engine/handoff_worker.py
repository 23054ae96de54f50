"""An engine process for the cross-process hand-off tests: polls once every ten
minutes, so only hand-overs and notifications make its waiters run. Serves until SIGTERM.

Usage: python handoff_worker.py STORAGE_URL [REDIS_PREFIX]
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from dq import create_job, create_queue, create_redis_storage, run, storage_from_url


async def hold() -> list[int]:
    """The critical section; its span (ms) is its output."""
    start = time.time_ns() // 1_000_000
    await asyncio.sleep(0.05)
    return [start, time.time_ns() // 1_000_000]


@create_job(name="single", concurrency=1)
async def single(data: Any) -> Any:
    await run("hold", hold)
    return data


@create_job(name="stepped")
async def stepped(data: Any) -> Any:
    await run("hold", hold, concurrency=1)
    return data


async def until_file(path: str) -> list[int]:
    start = time.time_ns() // 1_000_000
    while not await asyncio.to_thread(os.path.exists, path):
        await asyncio.sleep(0.01)
    return [start, time.time_ns() // 1_000_000]


@create_job(name="gated_step")
async def gated_step(data: str) -> Any:
    """Holds the step slot until the file `data` exists."""
    return await run("hold", lambda: until_file(data), concurrency=1)


JOBS = [single, stepped, gated_step]


async def main() -> None:
    url = sys.argv[1]
    storage = create_redis_storage(url, prefix=sys.argv[2]) if url.startswith("redis") else storage_from_url(url)
    queue = create_queue(jobs=JOBS, storage=storage, poll_interval="10 minutes", lease="5s")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with queue:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
