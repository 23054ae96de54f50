"""Engine fixtures: a queue factory over each storage adapter the engine scenarios run on.

Every scenario runs on memory, SQLite, PostgreSQL and Redis, each test on
clean state, with the isolation of tests/storage/conftest.py: PostgreSQL is
one migrated database per session whose tables are emptied before each test;
Redis is a random key prefix per test whose keys are deleted after it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from engine import Queue, create_queue
from engine.storage.base import Storage
from engine.storage.memory import MemoryStorage
from engine.storage.redis import RedisStorage
from engine.storage.sql import SqlStorage
from tests.storage.conftest import (
    _CLEAR_DATA,
    REDIS_URL,
    _run_in_thread,
    create_pg_database,
    drop_pg_database,
    pg_dsn,
)

ENGINE_KINDS = ["memory", "sqlite", "postgres", "redis"]

#: Fast timings for tests: no test waits on the 1 s production poll interval.
FAST = {"poll_interval": "50ms", "lease": "5s", "short_sleep": "300ms", "shutdown_grace": "1s"}


@pytest.fixture(params=ENGINE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def engine_pg_database() -> Iterator[str]:
    """A migrated PostgreSQL database for this session's engine scenarios."""
    name = f"dq_engine_{os.getpid()}_{secrets.token_hex(4)}"

    async def setup() -> None:
        await create_pg_database(name)
        storage = SqlStorage.postgres(pg_dsn(name))
        await storage.open()
        await storage.aclose()

    _run_in_thread(setup())
    try:
        yield pg_dsn(name)
    finally:
        _run_in_thread(drop_pg_database(name))


async def _empty_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_CLEAR_DATA)
    finally:
        await conn.close()


async def _delete_redis_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


@pytest.fixture
async def make_storage(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> AsyncIterator[Callable[[], Storage]]:
    """A new handle on this test's store each call (memory: the same object).
    The queue that gets a handle opens and closes it."""
    if kind == "memory":
        shared = MemoryStorage()
        yield lambda: shared
    elif kind == "sqlite":
        path = str(tmp_path / "dq.db")
        yield lambda: SqlStorage.sqlite(path)
    elif kind == "postgres":
        dsn: str = request.getfixturevalue("engine_pg_database")
        await _empty_postgres(dsn)
        yield lambda: SqlStorage.postgres(dsn)
    elif kind == "redis":
        prefix = f"dqengine{secrets.token_hex(6)}"
        yield lambda: RedisStorage(REDIS_URL, prefix=prefix)
        await _delete_redis_prefix(prefix)
    else:
        raise AssertionError(f"unknown engine kind {kind!r}")


@pytest.fixture
async def make_queue(make_storage: Callable[[], Storage]) -> AsyncIterator[Callable[..., Queue]]:
    """`make_queue(jobs, **options)`: a queue on this test's store, closed at teardown."""
    queues: list[Queue] = []

    def make(jobs: Any, **options: Any) -> Queue:
        for key, value in FAST.items():
            options.setdefault(key, value)
        queue = create_queue(jobs=jobs, storage=options.pop("storage", None) or make_storage(), **options)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        await queue.close()
