"""Adapter constructors and `storage_from_url`.

Each constructor imports its adapter when called (deliberately inside the function):
choosing one adapter never loads the drivers of the others (SQLAlchemy and its
database drivers, redis), so dq runs with only what the chosen adapter needs.
tests/engine/test_imports.py lists these imports by name."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from ..durations import parse_duration
from .base import Storage


def create_memory_storage() -> Storage:
    from .memory import MemoryStorage

    return MemoryStorage()


def _bounds(max_connections: int | None, acquire_timeout: Any) -> dict[str, Any]:
    """Connection bounds as the adapters take them (`acquire_timeout` is a Duration)."""
    timeout_s = None if acquire_timeout is None else parse_duration(acquire_timeout, "acquire_timeout") / 1000
    return {"max_connections": max_connections, "acquire_timeout_s": timeout_s}


def create_sqlite_storage(
    path: str = "dq.db", *, max_connections: int | None = None, acquire_timeout: Any = None
) -> Storage:
    from .sql import SqlStorage

    return SqlStorage.sqlite(path, **_bounds(max_connections, acquire_timeout))


def create_postgres_storage(dsn: str, *, max_connections: int | None = None, acquire_timeout: Any = None) -> Storage:
    from .sql import SqlStorage

    return SqlStorage.postgres(dsn, **_bounds(max_connections, acquire_timeout))


def create_redis_storage(
    url: str = "redis://127.0.0.1:6379/0",
    *,
    prefix: str = "dq",
    max_connections: int | None = None,
    acquire_timeout: Any = None,
) -> Storage:
    from .redis import RedisStorage

    return RedisStorage(url, prefix=prefix, **_bounds(max_connections, acquire_timeout))


def storage_from_url(url: str) -> Storage:
    """`memory://`, `sqlite:///relative.db`, `sqlite:////abs/path.db`, `postgresql://...`, `redis://...`."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"storage URL {url!r} has no scheme; use memory://, sqlite:///path.db, "
            "postgresql://user@host/db or redis://host:port/db"
        )
    scheme = urlparse(url).scheme.lower()
    if scheme == "memory":
        return create_memory_storage()
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError(f"storage URL {url!r} names no SQLite file (sqlite:///dq.db)")
        return create_sqlite_storage(path)
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        return create_postgres_storage(url)
    if scheme in ("redis", "rediss"):
        return create_redis_storage(url)
    raise ValueError(
        f"unknown storage scheme {scheme!r} in {url!r}; "
        "expected memory://, sqlite://, postgresql:// or redis://"
    )
