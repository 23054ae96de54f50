"""Jobs the understanding checks drive in a real `dq-ui serve e2e/understand_app.py:queue`."""

from __future__ import annotations

import asyncio
from typing import Any

from dq import create_job, create_queue, log, run, sleep


@create_job(name="exclusive", concurrency=1)
async def exclusive(data: Any) -> str:
    await run("hold", lambda: asyncio.sleep(float((data or {}).get("seconds", 120))))
    return "done"


@create_job(name="leaf")
async def leaf(data: Any) -> int:
    a = await run("fetch", lambda: asyncio.sleep(0.2, result=2))
    await sleep("300ms")
    return int(await run("square", lambda: a * a))


@create_job(name="branch")
async def branch(data: Any) -> int:
    await run("plan", lambda: 1)
    return int(await leaf.run({"n": 1}))


@create_job(name="family")
async def family(data: Any) -> int:
    total = await run("start", lambda: 0)
    total += await branch.run({"n": 1})
    return int(total)


async def _download() -> int:
    for i in range(1, 9):
        log(f"chunk {i} of 8", bytes=i * 1024)
        await asyncio.sleep(0.6)
    return 8


@create_job(name="chatty")
async def chatty(data: Any) -> int:
    log("starting the download", url="https://example.invalid/a.mp3")
    return int(await run("download", _download))


queue = create_queue(jobs=[exclusive, leaf, branch, family, chatty])
