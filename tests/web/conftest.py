"""Fixtures for the dashboard's HTTP tests: a queue on memory storage, the app, its test client."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import uvicorn
from litestar import Litestar
from litestar.testing import TestClient
from sse_starlette import sse as sse_module

from dq import Queue, create_memory_storage, create_queue
from dq.app import create_app
from dq.engine.storage.base import TERMINAL
from dq.web import Settings

from .sample import JOBS

T = TypeVar("T")
FAST = {"tick_s": 0.05, "refresh_s": 0.3, "overview_refresh_s": 0.2, "ping_s": 15.0}


def make_queue() -> Queue:
    return create_queue(jobs=JOBS, storage=create_memory_storage(), shutdown_grace="200ms")


@pytest.fixture
def settings() -> Settings:
    return Settings(**FAST)  # type: ignore[arg-type]


@pytest.fixture
def queue() -> Queue:
    return make_queue()


class Client(TestClient[Litestar]):
    """Litestar's test client runs the app (and so the queue) in its own event loop:
    engine calls go through `call`, which runs them there."""

    queue: Queue

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.blocking_portal.call(fn, *args)

    def start(self, job: str, data: Any = None) -> str:
        execution = self.call(self.queue.jobs[job].start, data)
        return str(execution.id)

    def status(self, execution_id: str) -> str | None:
        rec = self.call(self.queue.storage.get_execution, execution_id)
        return rec.status if rec is not None else None

    def settle(self, execution_id: str, timeout_s: float = 5.0, statuses: frozenset[str] = TERMINAL) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(execution_id)
            if status in statuses:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"{execution_id} is {status}, not in {sorted(statuses)}")
            time.sleep(0.02)

    def run(self, job: str, data: Any = None) -> str:
        eid = self.start(job, data)
        self.settle(eid)
        return eid

    def csrf(self) -> str:
        return csrf_of(self.get("/jobs").text)


#: The test client talks to the app as a browser on the loopback address would: the gate
#: refuses other Host names, and state-changing requests without this Origin.
BASE_URL = "http://127.0.0.1:8000"


def open_client(queue: Queue, settings: Settings, **kwargs: Any) -> Client:
    client = Client(create_app(queue, settings=settings, **kwargs), base_url=BASE_URL)
    client.headers["origin"] = BASE_URL
    client.queue = queue
    return client


@pytest.fixture
def client(queue: Queue, settings: Settings) -> Iterator[Client]:
    with open_client(queue, settings) as c:
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'"x-csrftoken": "([^"]+)"', html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


async def settle(queue: Queue, execution_id: str, timeout_s: float = 5.0, statuses: frozenset[str] = TERMINAL) -> str:
    """(In the queue's own loop) wait until the execution reaches one of `statuses`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        rec = await queue.storage.get_execution(execution_id)
        if rec is not None and rec.status in statuses:
            return rec.status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{execution_id} is {rec.status if rec else 'missing'}, not in {sorted(statuses)}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """The app under a real uvicorn in this event loop (SSE needs a real server)."""

    def __init__(self, app: Litestar) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=1)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveServer:
        # sse-starlette keeps one shutdown watcher per thread; a test's loop is new each time
        sse_module._thread_state.shutdown_state = None
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def live(queue: Queue, settings: Settings) -> AsyncIterator[LiveServer]:
    async with LiveServer(create_app(queue, settings=settings)) as server:
        yield server
