"""Storage adapters behind one protocol (see base.py)."""

from __future__ import annotations

from .base import (
    Batch,
    CommitResult,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionUpdate,
    PipeMessage,
    StepRecord,
    Storage,
)
from .factory import (
    create_memory_storage,
    create_postgres_storage,
    create_redis_storage,
    create_sqlite_storage,
    storage_from_url,
)

__all__ = [
    "Batch",
    "CommitResult",
    "EventRecord",
    "ExecutionQuery",
    "ExecutionRecord",
    "ExecutionUpdate",
    "PipeMessage",
    "StepRecord",
    "Storage",
    "create_memory_storage",
    "create_postgres_storage",
    "create_redis_storage",
    "create_sqlite_storage",
    "storage_from_url",
]
