"""The Workers page in Chromium: a `dq-ui worker` listed alive, then late and lost while
it is stopped (SIGSTOP), then alive again (SIGCONT) — live, without a reload."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from .conftest import ARTIFACTS, DQ_UI, ROOT, free_port, shot

TARGET = "tests.distributed.jobs:queue"


@pytest.fixture
def node_and_worker(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DQ_TEST_INTERVAL": "2s"}  # late for 3 s: the 1 s tick shows it
    ARTIFACTS.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    with open(ARTIFACTS / "e2e-workers.log", "ab") as log:
        procs.append(subprocess.Popen(
            [str(DQ_UI), "serve", TARGET, "--storage", f"sqlite:///{tmp_path / 'dq.db'}", "--port", str(port),
             "--no-local-work"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert procs[0].poll() is None and time.monotonic() < deadline, "the node did not start"
            time.sleep(0.1)
        procs.append(subprocess.Popen(
            [str(DQ_UI), "worker", TARGET, "--orchestrator", url + "/orchestration", "--concurrency", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    try:
        yield url, procs[1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_a_stopped_worker_turns_late_then_lost(page: Page, node_and_worker: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, worker = node_and_worker
    page.goto(f"{url}/workers")
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")
    row = page.locator("tr.worker", has_text=f"{worker.pid}")
    expect(row).to_have_attribute("data-health", "alive", timeout=20_000)
    expect(row).to_contain_text("remote")
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        expect(row).to_have_attribute("data-health", "late", timeout=15_000)
        expect(row).to_have_attribute("data-health", "lost", timeout=15_000)
        shot(page, "workers-lost")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    expect(row).to_have_attribute("data-health", "alive", timeout=10_000)
