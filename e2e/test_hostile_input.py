"""A stored input that no encoder accepts (a lone surrogate, written before inputs were
checked) must not take the dashboard down: the executions list and the execution's page
render in a real browser and stay live."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Page, Request, expect

from dq import create_sqlite_storage
from tests.web.legacy import append_legacy_log, write_legacy_row

from .conftest import Server, free_port, shot

pytestmark = pytest.mark.e2e
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a loop of its own (Playwright's sync API owns this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


async def _write(db: Path) -> str:
    storage = create_sqlite_storage(path=str(db))
    await storage.open()
    try:
        return await write_legacy_row(storage, job_name="processFile")
    finally:
        await storage.aclose()


async def _log(db: Path, execution_id: str, message: str) -> None:
    storage = create_sqlite_storage(path=str(db))
    await storage.open()
    try:
        await append_legacy_log(storage, execution_id, "processFile", message)
    finally:
        await storage.aclose()


def test_a_surrogate_input_renders_and_stays_live(page: Page, tmp_path: Path) -> None:
    db = tmp_path / "hostile.db"
    server = Server(db, free_port(), "e2e-hostile.log").start()
    streams: list[str] = []

    def count_streams(request: Request) -> None:
        if "/live?" in request.url:
            streams.append(request.url)

    page.on("request", count_streams)
    try:
        eid = _run(_write(db))
        page.goto(f"{server.url}/executions")
        expect(page.locator(f"#row-{eid}")).to_be_visible()
        expect(page.locator("#live")).to_have_attribute("data-state", "connected")
        # the demo's trickle keeps the list moving: rows change in place, the stream stays up
        page.evaluate("window.__rows = document.getElementById('exec-rows').innerText")
        page.wait_for_function("document.getElementById('exec-rows').innerText !== window.__rows", timeout=30_000)
        expect(page.locator("#live")).to_have_attribute("data-state", "connected")
        assert len(streams) == 1, streams  # one stream, never cut and reopened

        streams.clear()
        page.goto(f"{server.url}/executions/{eid}?tab=events")
        expect(page.locator("#exec-head")).to_contain_text(eid)
        expect(page.locator("#live")).to_have_attribute("data-state", "connected")
        assert "\\ud800" in page.content()  # the payload shows the stored value's escape
        count = int(page.locator("#event-count").inner_text())
        _run(_log(db, eid, "still live \ud800"))
        expect(page.locator("#event-count")).to_have_text(str(count + 1), timeout=15_000)
        expect(page.locator("#event-rows")).to_contain_text("still live \ufffd")
        expect(page.locator("#live")).to_have_attribute("data-state", "connected")
        assert len(streams) == 1, streams
        shot(page, "execution-surrogate-input")
    finally:
        server.stop()
