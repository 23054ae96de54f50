"""Redis flushed (FLUSHDB on a database of its own) under a running queue: the engine
fails loudly with StorageLostError instead of carrying on with an empty queue or
treating the lost writes as step failures to retry.

The queue runs in the test process, so that what its users see (`result()`,
`start()`, queries) can be asserted directly; the flush comes from another client.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from dq import create_job, create_queue, run
from dq.engine.errors import StorageLostError
from dq.engine.storage.redis import RedisStorage

from .conftest import wait_until

#: A database number nothing else on the test server uses (the flush empties it).
FLUSH_URL = os.environ.get("DQ_TEST_REDIS_FLUSH_URL", "redis://127.0.0.1:6379/13")
PREFIX_STEM = "dqflush"


@pytest.fixture
async def flush_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(FLUSH_URL, decode_responses=True)
    foreign = [k async for k in client.scan_iter(count=1000) if not k.startswith(PREFIX_STEM)]
    if foreign:
        await client.aclose()
        pytest.fail(f"{FLUSH_URL} holds keys that are not this test's ({foreign[:5]}): refusing to flush it")
    try:
        yield client
    finally:
        async for key in client.scan_iter(match=f"{PREFIX_STEM}*", count=1000):
            await client.delete(key)
        await client.aclose()


async def test_flushdb_while_running_fails_loudly(
    flush_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"{PREFIX_STEM}{secrets.token_hex(4)}"
    gate = asyncio.Event()
    ran: collections.Counter[str] = collections.Counter()

    async def step(name: str) -> None:
        ran[name] += 1
        if name == "step-2":
            await gate.wait()

    @create_job(name="flushed", retry=3, backoff=0)
    async def flushed(data: Any) -> str:
        ran["attempt"] += 1
        for n in range(1, 6):
            await run(f"step-{n}", lambda n=n: step(f"step-{n}"))
        return "done"

    queue = create_queue(
        jobs=[flushed], storage=RedisStorage(FLUSH_URL, prefix=prefix),
        poll_interval="50ms", lease="2s", shutdown_grace="1s",
    )  # fmt: skip
    await queue.start()
    try:
        executions = [await queue.jobs.flushed.start(i) for i in range(3)]
        waiting = [asyncio.ensure_future(e.result()) for e in executions]
        await wait_until(lambda: ran["step-2"] == 3, 10, "every execution in step 2")
        assert await flush_client.dbsize() > 0
        with caplog.at_level(logging.ERROR, logger="dq"):
            await flush_client.flushdb()
            # Detected by the next storage script (a claim, a lease renewal...).
            for fut in waiting:
                with pytest.raises(StorageLostError, match="is gone"):
                    await asyncio.wait_for(fut, 10)
        assert any(r.levelno == logging.ERROR and "stopped" in r.getMessage() for r in caplog.records)
        # The queue refuses to be used: no silent restart on an empty store.
        with pytest.raises(StorageLostError):
            await queue.jobs.flushed.start(99)
        with pytest.raises(StorageLostError):
            await queue.start()
        with pytest.raises(StorageLostError):
            await queue.jobs.get_all()
        with pytest.raises(StorageLostError):
            await executions[0].result()
        gate.set()  # had a handler survived, it would run on during close()
    finally:
        await queue.close()
    assert ran == {"attempt": 3, "step-1": 3, "step-2": 3}
    # Nothing was written after the flush (no new marker, worker, execution or event).
    assert [k async for k in flush_client.scan_iter(match=f"{prefix}:*")] == []
