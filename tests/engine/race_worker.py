"""An engine process for the cross-process semantics tests (idempotency races, cron
ticks with seconds, retention). Usage: python race_worker.py STORAGE_URL KEYS

Prints "ready" once its queue started, reads a start time (epoch ms) on stdin,
waits for it (so that both processes race), then starts
`charge` once per key 0..KEYS-1 (all at once) with that idempotency key and
prints a JSON object key -> execution id; then serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from dq import create_job, create_queue, storage_from_url


@create_job(name="charge")
async def charge(data: Any) -> Any:
    return data


@create_job(name="tick", cron="*/2 * * * * *")
async def tick() -> None:
    return None


async def main() -> None:
    url, keys = sys.argv[1], int(sys.argv[2])
    queue = create_queue(
        jobs=[charge, tick], storage=storage_from_url(url), poll_interval="100ms", lease="5s",
        retention={"completed": "1 hour"},
    )  # fmt: skip
    async with queue:
        print("ready", flush=True)
        go_at_ms = int(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, go_at_ms / 1000 - time.time()))  # both start together
        executions = await asyncio.gather(
            *(queue.jobs.charge.start({"key": k}, idempotency_key=f"k{k}") for k in range(keys))
        )
        print(json.dumps({f"k{k}": e.id for k, e in enumerate(executions)}), flush=True)
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
