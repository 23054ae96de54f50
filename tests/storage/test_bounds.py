"""Connection bounds: every adapter holds a documented number of connections, a call
waits for a free one (back-pressure), and one that cannot get it in time raises
StorageBusyError with nothing written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dq import (
    StorageBusyError,
    create_postgres_storage,
    create_redis_storage,
    create_sqlite_storage,
)
from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import Batch, ExecutionRecord, Storage
from dq.engine.storage.redis import RedisStorage
from dq.engine.storage.sql import SqlStorage

from .conftest import REDIS_URL, delete_redis_prefix

BOUNDED_KINDS = ["sqlite", "postgres", "redis"]


@pytest.fixture(params=BOUNDED_KINDS)
async def make_bounded(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str]
) -> AsyncIterator[Callable[..., Storage]]:
    """`make_bounded(max_connections=..., acquire_timeout=...)`: an unopened storage of this kind."""
    kind = str(request.param)
    prefix = f"dqbound{secrets.token_hex(6)}"

    def make(**bounds: Any) -> Storage:
        if kind == "sqlite":
            return create_sqlite_storage(os.path.join(tmp_path, "dq.db"), **bounds)
        if kind == "postgres":
            return create_postgres_storage(request.getfixturevalue("pg_database"), **bounds)
        return create_redis_storage(REDIS_URL, prefix=prefix, **bounds)

    yield make
    if kind == "redis":
        await delete_redis_prefix(prefix)


@contextlib.asynccontextmanager
async def _all_connections_taken(storage: Storage) -> AsyncIterator[None]:
    """Hold every connection a commit could use (SQLite: its one writer's turn)."""
    if isinstance(storage, RedisStorage):
        pool = storage._redis.connection_pool
        held = [await pool.get_connection() for _ in range(storage.max_connections)]
        try:
            yield
        finally:
            for conn in held:
                await pool.release(conn)
    elif storage.kind == "sqlite":
        lock: asyncio.Lock = storage._write_lock  # type: ignore[attr-defined]
        async with lock:
            yield
    else:
        assert isinstance(storage, SqlStorage)
        held_sql = [await storage.engine.connect() for _ in range(storage.max_connections)]
        try:
            yield
        finally:
            for c in held_sql:
                await c.close()


def _record() -> ExecutionRecord:
    now = now_ms()
    return ExecutionRecord(new_id(), "job", "pending", input={"n": 1}, created_at=now, run_at=now)


async def test_a_call_that_gets_no_connection_in_time_raises_and_writes_nothing(
    make_bounded: Callable[..., Storage],
) -> None:
    storage = make_bounded(max_connections=2, acquire_timeout="200ms")
    await storage.open()
    try:
        rec, key = _record(), f"bounds:{new_id()}"
        async with _all_connections_taken(storage):
            with pytest.raises(StorageBusyError, match="nothing"):
                await storage.commit(Batch(executions=[rec], state={key: 1}))
        assert await storage.get_execution(rec.id) is None
        assert await storage.get_state([key]) == {}
        # The same call works once a connection is free: the error was only back-pressure.
        await storage.commit(Batch(executions=[rec]))
        assert (await storage.get_execution(rec.id)) is not None
    finally:
        await storage.aclose()


async def test_many_concurrent_calls_queue_for_few_connections(make_bounded: Callable[..., Storage]) -> None:
    storage = make_bounded(max_connections=2, acquire_timeout="30s")
    await storage.open()
    try:
        recs = [_record() for _ in range(300)]
        await asyncio.gather(*(storage.commit(Batch(executions=[r])) for r in recs))
        found = await asyncio.gather(*(storage.get_execution(r.id) for r in recs))
        assert all(f is not None for f in found)
    finally:
        await storage.aclose()


@pytest.mark.parametrize("bad", [0, -1, True, "many"])
def test_bounds_are_checked_when_the_storage_is_made(bad: Any) -> None:
    for make in (
        lambda: create_sqlite_storage("x.db", max_connections=bad),
        lambda: create_postgres_storage("postgresql://u@h/db", max_connections=bad),
        lambda: create_redis_storage(REDIS_URL, max_connections=bad),
    ):
        with pytest.raises(ValueError, match="max_connections"):
            make()
    with pytest.raises(ValueError, match="acquire_timeout"):
        create_redis_storage(REDIS_URL, acquire_timeout="soon")
