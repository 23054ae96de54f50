"""Distribution fixtures: a node (`dq-ui serve`) and workers (`dq-ui worker`) as real
processes on loopback, always stopped by PID, also when a test fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import Worker, wait_until

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests.distributed.jobs:queue"
TOKEN = "test-token-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """Starts nodes and workers; `stop_all` (run at teardown) kills what is left, by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Worker] = []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> Worker:
        n = len(self.started)
        out, err = self.workdir / f"{name}{n}.out", self.workdir / f"{name}{n}.err"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "DQ_TEST_WORKDIR": str(self.workdir), **(env or {})}
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            proc = subprocess.Popen([sys.executable, "-m", "dq.app.cli", *argv], stdout=fout, stderr=ferr,
                                    env=full_env, cwd=str(ROOT), start_new_session=True)  # fmt: skip
        proc_ = Worker(proc, out, err)
        self.started.append(proc_)
        return proc_

    async def node(self, storage: str, port: int, *extra: str, env: dict[str, str] | None = None) -> Worker:
        node = self._spawn("node", ["serve", TARGET, "--storage", storage, "--port", str(port),
                                    "--token", TOKEN, *extra], env)  # fmt: skip
        await node.wait_output("workers connect to", 60)
        return node

    async def worker(self, port: int, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> Worker:
        worker = self._spawn("worker", ["worker", TARGET, "--orchestrator", url(port), "--token", TOKEN, *extra], env)
        if wait:
            await worker.wait_output("running", 60)
        return worker

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # also ends a SIGSTOPped one
            proc.proc.wait(timeout=30)


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/orchestration"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


async def list_workers(port: int) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{url(port)}/v1/list_workers", content=b"{}",
                              headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
        r.raise_for_status()
        result: list[dict[str, object]] = r.json()["result"]
        return result


__all__ = ["TOKEN", "Cluster", "free_port", "list_workers", "url", "wait_until"]
