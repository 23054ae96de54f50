"""Engine fixtures: a queue factory over each storage adapter the engine scenarios run on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Queue, create_queue
from engine.storage.base import Storage
from engine.storage.memory import MemoryStorage

ENGINE_KINDS = ["memory", "sqlite"]

#: Fast timings for tests: no test waits on the 1 s production poll interval.
FAST = {"poll_interval": "50ms", "lease": "5s", "short_sleep": "300ms", "shutdown_grace": "1s"}


@pytest.fixture(params=ENGINE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_storage(kind: str, tmp_path: Path) -> Callable[[], Storage]:
    """A new handle on this test's store each call (memory: the same object)."""
    if kind == "memory":
        shared = MemoryStorage()
        return lambda: shared
    from engine.storage.sql import SqlStorage

    path = str(tmp_path / "dq.db")
    return lambda: SqlStorage.sqlite(path)


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
