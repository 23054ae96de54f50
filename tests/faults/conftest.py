"""Fault-test fixtures: a store per test on each durable adapter, and worker processes
(tests/faults/worker.py) that are always stopped by PID, also when a test fails.

PostgreSQL: a database of its own per test (workers migrate it), dropped after.
Redis: a random key prefix per test on DQ_TEST_REDIS_URL, its keys deleted after.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import Batch, EventRecord, ExecutionRecord, Storage
from dq.engine.storage.redis import RedisStorage
from dq.engine.storage.sql import SqlStorage
from tests.storage.conftest import (
    REDIS_URL,
    create_pg_database,
    delete_redis_prefix,
    drop_pg_database,
    pg_dsn,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("worker.py"))
FAULT_KINDS = ["sqlite", "postgres", "redis"]


@dataclass
class Store:
    """Where a test's workers keep their data, and handles on it for the test itself."""

    kind: str
    url: str
    prefix: str = ""
    handles: list[Storage] = field(default_factory=list)

    @property
    def spec(self) -> str:
        """The worker's SPEC argument."""
        return f"{self.url}#{self.prefix}" if self.prefix else self.url

    def make(self) -> Storage:
        if self.kind == "redis":
            return RedisStorage(self.url, prefix=self.prefix)
        if self.kind == "postgres":
            return SqlStorage.postgres(self.url)
        return SqlStorage.sqlite(self.url.removeprefix("sqlite:///"))

    async def open(self) -> Storage:
        storage = self.make()
        await storage.open()
        self.handles.append(storage)
        return storage


@pytest.fixture(params=FAULT_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind: str = request.param
    if kind == "sqlite":
        st = Store(kind, f"sqlite:///{tmp_path / 'dq.db'}")
    elif kind == "postgres":
        name = f"dq_fault_{os.getpid()}_{secrets.token_hex(4)}"
        await create_pg_database(name)
        st = Store(kind, pg_dsn(name))
    else:
        st = Store(kind, REDIS_URL, prefix=f"dqfault{secrets.token_hex(6)}")
    try:
        yield st
    finally:
        for handle in st.handles:
            await handle.aclose()
        if kind == "postgres":
            await drop_pg_database(st.url.rsplit("/", 1)[1])
        elif kind == "redis":
            await delete_redis_prefix(st.prefix)


class Worker:
    """One worker process; its stdout and stderr go to files in the work dir (a pipe
    nobody reads could fill up and block a worker that logs a lot)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc, self.out, self.err = proc, out, err

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def errors(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def describe(self) -> str:
        return f"worker {self.pid} (rc={self.proc.poll()})\nstdout: {self.output()}\nstderr: {self.errors()[-3000:]}"

    async def wait_output(self, text: str, timeout: float = 30) -> None:
        async def seen() -> bool:
            if self.proc.poll() is not None and text not in self.output():
                raise AssertionError(f"exited before printing {text!r}: {self.describe()}")
            return text in self.output()

        await wait_until(seen, timeout, lambda: f"{text!r} from {self.describe()}")

    async def exit_code(self, timeout: float = 30) -> int:
        await wait_until(lambda: self.proc.poll() is not None, timeout, lambda: f"exit of {self.describe()}")
        return int(self.proc.returncode)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    async def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        await self.exit_code()


class Workers:
    """Starts workers; `stop_all` (run at teardown) kills what is left, by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Worker] = []

    def spawn(self, store: Store, mode: str, *args: object, env: dict[str, str] | None = None) -> Worker:
        n = len(self.started)
        out, err = self.workdir / f"worker{n}.out", self.workdir / f"worker{n}.err"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            proc = subprocess.Popen(
                [sys.executable, WORKER, store.spec, str(self.workdir), mode, *map(str, args)],
                stdout=fout, stderr=ferr, env=full_env, start_new_session=True,
            )  # fmt: skip
        worker = Worker(proc, out, err)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)  # also ends a SIGSTOPped one
            worker.proc.wait(timeout=30)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(tmp_path)
    try:
        yield ws
    finally:
        ws.stop_all()


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30,
    what: str | Callable[[], str] = "condition",
) -> None:
    """Poll `predicate` (sync or async) until true; fail naming `what` (a text, or a
    function that describes the state at the time of failure) on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what if isinstance(what, str) else what()}")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Effect:
    execution: str
    step: str
    pid: int
    at: float


def read_effects(workdir: Path) -> list[Effect]:
    path = workdir / "effects"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        eid, step, pid, at = line.split()
        out.append(Effect(eid, step, int(pid), float(at)))
    return out


def count_effects(workdir: Path) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((e.execution, e.step) for e in read_effects(workdir))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def add_executions(storage: Storage, job: str, inputs: list[dict[str, Any]]) -> list[str]:
    """Enqueue executions from the test process (another process's workers claim them)."""
    now = now_ms()
    recs = [
        ExecutionRecord(new_id(), job, "pending", input=data, created_at=now, run_at=now)
        for data in inputs
    ]
    events = [EventRecord(r.id, job, "trigger", {"input": r.input}, now) for r in recs]
    await storage.commit(Batch(executions=recs, events=events))
    return [r.id for r in recs]
