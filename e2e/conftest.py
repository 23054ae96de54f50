"""End-to-end fixtures: a real `dq-ui serve` (the demo, on SQLite) and Debian's Chromium."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
DQ_UI = ROOT / ".venv" / "bin" / "dq-ui"
CHROMIUM = os.environ.get("DQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: The demo at 8x speed and without random failures: fast and deterministic enough to test,
#: the same workflows and source as the default demo.
DEMO_ENV = {"DQ_DEMO_SPEED": "8", "DQ_DEMO_FAILURES": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1440, "height": 900}}


class Server:
    """One `dq-ui serve` subprocess, started and stopped by its PID."""

    def __init__(self, db: Path, port: int, log_name: str) -> None:
        self.db, self.port = db, port
        self.url = f"http://127.0.0.1:{port}"
        ARTIFACTS.mkdir(exist_ok=True)
        self.log = ARTIFACTS / log_name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [str(DQ_UI), "serve", "--storage", f"sqlite:///{self.db}", "--port", str(self.port)],
            cwd=ROOT, env={**os.environ, **DEMO_ENV}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dq-ui serve did not start; see {self.log}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.proc = None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dq-ui serve` as a user runs it, on a fresh SQLite file."""
    (ARTIFACTS / "e2e-server.log").unlink(missing_ok=True)
    running = Server(tmp_path_factory.mktemp("e2e") / "e2e.db", _free_port(), "e2e-server.log").start()
    try:
        yield running.url
    finally:
        running.stop()


def free_port() -> int:
    return _free_port()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def base_url() -> None:
    """Shadow pytest-playwright's `base_url` (its class-based fixture warns on pytest 9); the
    tests use the `server` URL."""
    return None
