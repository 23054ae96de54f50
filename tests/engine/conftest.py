"""Engine fixtures: a queue factory over each storage adapter the engine scenarios run on.

Every scenario runs on memory, SQLite, PostgreSQL and Redis, each test on
clean state, with the isolation of tests/storage/conftest.py: PostgreSQL is
one migrated database per session whose tables are emptied before each test;
Redis is a random key prefix per test whose keys are deleted after it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dq import Queue, create_queue
from dq.engine.storage.base import Storage
from dq.engine.storage.memory import MemoryStorage
from dq.engine.storage.redis import RedisStorage
from dq.engine.storage.sql import SqlStorage
from tests.storage.conftest import (
    _CLEAR_DATA,
    REDIS_URL,
    delete_redis_prefix,
    pg_database,  # noqa: F401 - the session database fixture, shared
    repeating,
)

ENGINE_KINDS = ["memory", "sqlite", "postgres", "redis"]

#: Fast timings for tests: no test waits on the 1 s production poll interval.
FAST = {"poll_interval": "50ms", "lease": "5s", "short_sleep": "300ms", "shutdown_grace": "1s"}


@pytest.fixture(params=ENGINE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _empty_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_CLEAR_DATA)
    finally:
        await conn.close()


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
        dsn: str = request.getfixturevalue("pg_database")
        await _empty_postgres(dsn)
        yield lambda: SqlStorage.postgres(dsn)
    elif kind == "redis":
        prefix = f"dqengine{secrets.token_hex(6)}"
        yield lambda: RedisStorage(REDIS_URL, prefix=prefix)
        await delete_redis_prefix(prefix)
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


async def slot_state(queue: Queue) -> dict[str, Any]:
    """The slot keys' state as the queue's process sees it: what storage holds, but the
    keys it keeps in memory (`slot_keeping.py`, a marker in storage) as kept, an empty one
    absent."""
    kept = queue.runtime.flow.ledger.kept
    stored = await queue.storage.list_state("slots:")
    out = {k: v for k, v in stored.items() if k not in kept}
    out.update((k, v) for k, v in kept.items() if v is not None)
    return out


@contextlib.asynccontextmanager
async def live_peer(storage: Storage, worker_id: str = "peer-process") -> AsyncIterator[None]:
    """Another live process on the store (its heartbeat, renewed, on `storage`: a handle of
    its own, opened and closed here): a queue started inside shares its concurrency keys
    instead of keeping them in memory (`slot_keeping.py`)."""
    own = not storage.synchronous_commit  # memory: the queue's own object, closed by the queue
    if own:
        await storage.open()

    try:
        async with repeating(lambda: storage.heartbeat(worker_id, {"state": "running"}), 0.5):
            yield
    finally:
        await storage.remove_worker(worker_id)
        if own:
            await storage.aclose()
