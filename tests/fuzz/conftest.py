"""The fuzz suite's target: the dashboard under a real uvicorn in a thread of its own.

A real server, not the in-process test client: the requests go through uvicorn's
HTTP parsing as an attacker's would, and a stream (`/live`) can be opened and
dropped after its status line. One server per module; the examples share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import uvicorn

from dq import Queue, create_memory_storage, create_queue
from dq.app import create_app
from dq.engine.storage.base import ExecutionQuery
from dq.web import Settings
from tests.web.conftest import FAST, free_port
from tests.web.legacy import write_legacy_row
from tests.web.sample import JOBS

T = TypeVar("T")


@dataclass
class Target:
    url: str
    host: str
    queue: Queue
    loop: asyncio.AbstractEventLoop
    #: Executions that exist before any example runs: a completed one, one waiting on a
    #: one-hour sleep and a stored row with text that cannot be encoded.
    completed: str = ""
    waiting: str = ""
    legacy: str = ""

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def snapshot(self) -> list[tuple[str, str, int]]:
        """Every execution's id, status and retry count: what a refused request must not change."""
        recs = self.call(self.queue.storage.query(ExecutionQuery(limit=10_000, order="oldest")))
        return [(r.id, r.status, r.retry_count) for r in recs]


async def _settle(queue: Queue, execution_id: str, statuses: frozenset[str]) -> None:
    for _ in range(500):
        rec = await queue.storage.get_execution(execution_id)
        if rec is not None and rec.status in statuses:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{execution_id} never reached {sorted(statuses)}")


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[Target]:
    queue = create_queue(jobs=JOBS, storage=create_memory_storage(), shutdown_grace="200ms")
    port = free_port()
    app = create_app(queue, settings=settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                           lifespan="on", timeout_graceful_shutdown=1))  # fmt: skip
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), name="fuzz-server")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    t = Target(url=f"http://127.0.0.1:{port}", host=f"127.0.0.1:{port}", queue=queue, loop=loop)
    try:
        done = t.call(queue.jobs.greet.start({"name": "done"}))
        waiting = t.call(queue.jobs.slow.start(None))
        t.call(_settle(queue, done.id, frozenset({"completed"})))
        t.call(_settle(queue, waiting.id, frozenset({"waiting"})))
        t.completed, t.waiting = done.id, waiting.id
        t.legacy = t.call(write_legacy_row(queue.storage))
        yield t
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        # sse-starlette leaves a shutdown watcher per loop: end it before closing the loop
        loop.run_until_complete(_cancel_the_rest())
        loop.close()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """The tokenless loopback default."""
    with serving(Settings(**FAST)) as t:  # type: ignore[arg-type]
        yield t


TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def token_target() -> Iterator[Target]:
    """The same behind `--token`."""
    with serving(Settings(token=TOKEN, **FAST)) as t:  # type: ignore[arg-type]
        yield t
