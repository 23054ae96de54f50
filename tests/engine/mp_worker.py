"""An engine process for the multi-process tests: serves the queue until SIGTERM.

Usage: python mp_worker.py POSTGRES_DSN
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from dq import create_job, create_pipe, create_postgres_storage, create_queue, run

events = create_pipe(name="events")


async def hold() -> None:
    await asyncio.sleep(0.15)


@create_job(name="limited", concurrency=2)
async def limited(data: Any) -> Any:
    await run("hold", hold)
    return data


@create_job(name="ticker", cron="* * * * * *")
async def ticker(data: Any) -> None:
    return None


@create_job(name="on_message", trigger=[events])
async def on_message(data: Any) -> Any:
    return data


async def main() -> None:
    queue = create_queue(
        jobs=[limited, ticker, on_message], pipes=[events],
        storage=create_postgres_storage(dsn=sys.argv[1]), poll_interval="100ms", lease="5s",
    )  # fmt: skip
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with queue:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
