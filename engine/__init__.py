"""dq: durable jobs for Python. The public API (docs/README.md; the code's layout: docs/architecture.md)."""

from __future__ import annotations

from .durations import Frequency, parse_duration, parse_frequency
from .errors import (
    CancelledError,
    DqError,
    JobError,
    NonDeterminismError,
    StorageBusyError,
    TimeoutError,
    ValidationError,
)
from .execution import Execution, current_execution
from .job import Job, create_job
from .logs import log
from .patching import patched
from .pipe import Pipe, create_pipe
from .queue import Queue, create_queue
from .steps import run, sleep
from .storage import (
    Storage,
    create_memory_storage,
    create_postgres_storage,
    create_redis_storage,
    create_sqlite_storage,
    storage_from_url,
)
from .threads import ResourceLimitError, thread

__all__ = [
    "CancelledError",
    "DqError",
    "Execution",
    "Frequency",
    "Job",
    "JobError",
    "NonDeterminismError",
    "Pipe",
    "Queue",
    "ResourceLimitError",
    "Storage",
    "StorageBusyError",
    "TimeoutError",
    "ValidationError",
    "create_job",
    "create_memory_storage",
    "create_pipe",
    "create_postgres_storage",
    "create_queue",
    "create_redis_storage",
    "create_sqlite_storage",
    "current_execution",
    "log",
    "parse_duration",
    "parse_frequency",
    "patched",
    "run",
    "sleep",
    "storage_from_url",
    "thread",
]
