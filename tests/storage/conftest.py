"""Storage fixtures: one `storage` fixture parametrised over every adapter.

To add a backend: append its name to STORAGE_KINDS and define a fixture named
`<kind>_factory` that returns a `StorageFactory`: an async callable that opens
a new handle on the test's store (empty when the test starts) each time it is
called, and closes every handle it opened at teardown. Handles from one factory
share their data, so a second call is a "reopen" (or, for the memory adapter,
the same object again).

PostgreSQL: one database per test session (migrated once), emptied before
each test; `pg_empty_dsn` gives a test a database without any schema. Set
DQ_TEST_POSTGRES_DSN to use another server than the local one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy import make_url

from dq.engine.storage.base import Storage
from dq.engine.storage.memory import MemoryStorage
from dq.engine.storage.redis import RedisStorage
from dq.engine.storage.sql import SqlStorage

StorageFactory = Callable[[], Awaitable[Storage]]

STORAGE_KINDS = ["memory", "sqlite", "postgres", "redis"]

POSTGRES_ADMIN_DSN = os.environ.get(
    "DQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# DELETE, not TRUNCATE: on tables this small it is ~30x faster (no new files, no fsync).
_CLEAR_DATA = ";".join(
    f"DELETE FROM {t}"
    for t in ("executions", "steps", "events", "pipe_messages", "state", "workers")
)


@pytest.fixture(params=STORAGE_KINDS)
def storage_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def storage_factory(request: pytest.FixtureRequest, storage_kind: str) -> StorageFactory:
    factory: StorageFactory = request.getfixturevalue(f"{storage_kind}_factory")
    return factory


@pytest.fixture
async def storage(storage_factory: StorageFactory) -> Storage:
    return await storage_factory()


class _Handles:
    """Opens handles with `make` and closes them all at teardown."""

    def __init__(self, make: Callable[[], Storage]) -> None:
        self._make = make
        self.opened: list[Storage] = []

    async def __call__(self) -> Storage:
        storage = self._make()
        await storage.open()
        self.opened.append(storage)
        return storage

    async def aclose(self) -> None:
        for storage in self.opened:
            await storage.aclose()


@pytest.fixture
async def memory_factory() -> AsyncIterator[StorageFactory]:
    shared = MemoryStorage()
    handles = _Handles(lambda: shared)
    yield handles
    await handles.aclose()


@pytest.fixture
async def sqlite_factory(tmp_path: os.PathLike[str]) -> AsyncIterator[StorageFactory]:
    path = os.path.join(tmp_path, "dq.db")
    handles = _Handles(lambda: SqlStorage.sqlite(path))
    yield handles
    await handles.aclose()


# --- PostgreSQL ----------------------------------------------------------------


def pg_dsn(database: str) -> str:
    url = make_url(POSTGRES_ADMIN_DSN).set(database=database)
    return url.render_as_string(hide_password=False)


async def create_pg_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def repeating(call: Callable[[], Awaitable[Any]], every_s: float) -> AsyncIterator[None]:
    """`call()` now and then every `every_s` in the background while the block runs
    (a stand-in process's heartbeat)."""
    await call()

    async def loop() -> None:
        while True:
            await asyncio.sleep(every_s)
            await call()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _run_in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` on its own loop: session fixtures may be set up while a test's
    loop is running (an async fixture calling request.getfixturevalue)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A migrated database for this session (unique name: sessions may run in parallel)."""
    name = f"dq_test_{os.getpid()}_{secrets.token_hex(4)}"

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


@pytest.fixture
async def pg_empty_dsn() -> AsyncIterator[str]:
    """A fresh database without any schema, dropped after the test."""
    name = f"dq_test_{os.getpid()}_{secrets.token_hex(4)}"
    await create_pg_database(name)
    yield pg_dsn(name)
    await drop_pg_database(name)


@pytest.fixture
async def postgres_factory(pg_database: str) -> AsyncIterator[StorageFactory]:
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute(_CLEAR_DATA)
    finally:
        await conn.close()
    handles = _Handles(lambda: SqlStorage.postgres(pg_database))
    yield handles
    await handles.aclose()


# --- Redis ---------------------------------------------------------------------

REDIS_URL = os.environ.get("DQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_factory() -> AsyncIterator[StorageFactory]:
    """Handles on a random key prefix, whose keys are deleted after the test."""
    prefix = f"dqtest{secrets.token_hex(6)}"
    handles = _Handles(lambda: RedisStorage(REDIS_URL, prefix=prefix))
    yield handles
    await handles.aclose()
    await delete_redis_prefix(prefix)


async def delete_redis_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key under `prefix` (a test's private namespace)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
def fresh(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Callable[[], SqlStorage]:
    """Makes unopened storages over one database that starts without any schema."""
    if request.param == "sqlite":
        path = os.path.join(tmp_path, "fresh.db")
        return lambda: SqlStorage.sqlite(path)
    dsn: str = request.getfixturevalue("pg_empty_dsn")
    return lambda: SqlStorage.postgres(dsn)
