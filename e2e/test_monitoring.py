"""The dashboard under a prefix in Chromium: `queue.monitoring.start()` with
monitoring={"endpoint": "/monitoring"}; a job started from its form opens the
execution page under the prefix, which goes live (SSE) and shows the run finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from .conftest import ARTIFACTS, ROOT, free_port, shot


@pytest.fixture
def node(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "e2e-monitoring.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "e2e.monitoring_node", str(port), str(tmp_path / "dq.db")],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/monitoring/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the node did not start"
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_live_page_under_a_prefix(page: Page, node: str) -> None:
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if "/monitoring" not in r.url else None)
    page.goto(f"{node}/monitoring/jobs/multi")
    expect(page.locator("#live")).to_have_attribute("data-state", "static")  # no stream on this page
    page.fill("#start-input", '{"id": "e2e", "steps": 3, "sleep_s": 1.0}')
    page.locator("#start-form button[type=submit]").click()
    page.wait_for_url(f"{node}/monitoring/executions/*")
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")
    # Live: the page rendered while step 1 ran shows the run complete without a reload.
    expect(page.locator("#exec-head")).to_have_attribute("data-status", "running", timeout=10_000)
    expect(page.locator("#exec-head")).to_have_attribute("data-status", "completed", timeout=20_000)
    page.locator("nav.nav a", has_text="Workers").click()
    page.wait_for_url(f"{node}/monitoring/workers")
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")
    shot(page, "monitoring-prefix")
    assert outside == [], outside
