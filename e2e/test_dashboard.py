"""The dashboard in a real browser against a real `dq-ui serve` running the demo."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import ROOT, Server, free_port, shot

pytestmark = pytest.mark.e2e

STATUS = "#exec-head .badge"


def start(page: Page, server: str, path: str) -> str:
    """Start processFile from its job page's form; returns the new execution's id."""
    page.goto(f"{server}/jobs/processFile")
    page.fill("#start-input", f'{{"path": "{path}"}}')
    page.click("#start-form button[type=submit]")
    page.wait_for_url(re.compile(r"/executions/[0-9A-Z]{26}$"))
    return page.url.rsplit("/", 1)[-1]


def line_of(needle: str) -> int:
    lines = (ROOT / "app" / "demo.py").read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text)


def test_list_updates_without_reload(page: Page, server: str) -> None:
    page.goto(f"{server}/executions")
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")
    page.evaluate("window.__same_page = true")
    first = page.locator("#exec-rows tr").first
    expect(first).to_be_visible()
    rows_before = page.locator("#exec-rows tr").count()
    # the demo's trickle creates executions: they are announced above the table...
    expect(page.locator("#new-banner a")).to_contain_text("new execution", timeout=15_000)
    # ...without inserting rows that would make the table jump
    assert page.locator("#exec-rows tr").count() == rows_before
    # and the rows on the page change in place (a status, a step, a duration)
    page.evaluate("window.__rows = document.getElementById('exec-rows').innerText")
    page.wait_for_function("document.getElementById('exec-rows').innerText !== window.__rows", timeout=30_000)
    assert page.evaluate("window.__same_page") is True  # never reloaded
    shot(page, "executions-live")
    page.click("#new-banner a")
    # the link loads the list anew, newest first (not a check that the banner stays empty:
    # the trickle's next burst, 2.5-6 s apart, may announce new executions again at once)
    page.wait_for_function("window.__same_page === undefined")
    expect(page.locator("#exec-rows tr").first).to_be_visible()


def test_start_form_creates_an_execution_whose_waterfall_grows(page: Page, server: str) -> None:
    eid = start(page, server, "uploads/incoming/E2E Band - Live Test.mp3")
    expect(page.locator("#exec-head")).to_contain_text("processFile")
    expect(page.locator("#exec-head")).to_contain_text(eid)
    page.evaluate("window.__same_page = true")
    rows = page.locator("#waterfall .wf-row")
    expect(rows).not_to_have_count(1, timeout=10_000)  # the job row plus steps appearing
    expect(page.locator('#waterfall [data-key="store-metadata"]')).to_be_visible(timeout=30_000)
    expect(page.locator(STATUS)).to_have_attribute("data-status", "completed", timeout=30_000)
    assert rows.count() >= 5  # metadata, transcode, store-metadata, notify-user (+ job row)
    assert page.evaluate("window.__same_page") is True  # it grew live, without a reload
    expect(page.locator("#waterfall .seg.s-completed").first).to_be_visible()
    # the step panel: click a step, its line of source is highlighted
    page.click('#waterfall a.wf-row[data-key="store-metadata"]')
    expect(page).to_have_url(re.compile(r"step=store-metadata"))
    highlighted = page.locator("#step-panel .source .ln.hl")
    expect(highlighted).to_have_count(1)
    assert highlighted.get_attribute("data-line") == str(line_of('run("store-metadata"'))
    expect(page.locator('#waterfall a.wf-row.selected[data-key="store-metadata"]')).to_be_visible()
    path = shot(page, "execution-completed")
    if os.environ.get("DQ_UPDATE_DOC_IMAGES") == "1":  # on purpose only: the README shows it
        shutil.copyfile(path, ROOT / "docs" / "img" / "execution.png")


def test_pause_resume_and_cancel_change_the_badge(page: Page, server: str) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # Cancel asks for confirmation
    eid = start(page, server, "uploads/scheduled/E2E Band - Held Release.mp3")
    status = page.locator(STATUS)
    expect(page.locator('[data-action="pause"]')).to_be_visible()
    page.click('[data-action="pause"]')
    expect(status).to_have_attribute("data-status", "paused", timeout=15_000)
    expect(page.locator('[data-action="resume"]')).to_be_visible()
    shot(page, "execution-paused")
    page.click('[data-action="resume"]')
    expect(status).not_to_have_attribute("data-status", "paused", timeout=15_000)
    expect(page.locator('[data-action="cancel"]')).to_be_visible()
    page.click('[data-action="cancel"]')
    expect(status).to_have_attribute("data-status", "cancelled", timeout=15_000)
    expect(page.locator('[data-action="retry"]')).to_be_visible()
    page.reload()
    expect(page.locator(STATUS)).to_have_attribute("data-status", "cancelled")
    assert eid in page.url


def test_failed_execution_can_be_retried(page: Page, server: str) -> None:
    eid = start(page, server, "uploads/incoming/corrupt-e2e.mp3")
    status = page.locator(STATUS)
    expect(status).to_have_attribute("data-status", "failed", timeout=60_000)
    expect(page.locator("#exec-head .error-box")).to_contain_text("Invalid data found")
    shot(page, "execution-failed")
    page.click('[data-action="retry"]')
    expect(status).not_to_have_attribute("data-status", "failed", timeout=10_000)
    expect(page.locator("#exec-head")).to_contain_text(eid)


def test_overview_and_jobs_pages(page: Page, server: str) -> None:
    page.goto(server + "/")
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")
    expect(page.locator('#counts [data-status="completed"] .value')).not_to_have_text("0", timeout=20_000)
    expect(page.locator("#throughput svg")).to_be_visible()
    shot(page, "overview")
    page.goto(server + "/jobs")
    expect(page.locator("table.tbl")).to_contain_text("musicBrainz")
    shot(page, "jobs")
    page.goto(server + "/executions/NOSUCHID")
    expect(page.locator("h1")).to_have_text("Not found")


def test_unknown_page_and_go_to_box(page: Page, server: str) -> None:
    page.goto(server + "/executions")
    first = page.locator("#exec-rows tr td.id a").first
    full = first.get_attribute("title")
    assert full
    page.fill(".goto input", full)
    page.press(".goto input", "Enter")
    page.wait_for_url(re.compile(full + "$"))
    expect(page.locator("#exec-head")).to_contain_text(full)


def test_live_indicator_follows_the_server(page: Page, tmp_path: Path) -> None:
    """connected -> reconnecting/offline when the server stops -> connected when it is back."""
    server = Server(tmp_path / "restart.db", free_port(), "e2e-restart.log").start()
    try:
        page.goto(server.url + "/executions")
        live = page.locator("#live")
        expect(live).to_have_attribute("data-state", "connected")
        assert server.stop() == 0
        expect(live).to_have_attribute("data-state", re.compile("reconnecting|offline"), timeout=10_000)
        shot(page, "live-reconnecting")
        server.start()
        expect(live).to_have_attribute("data-state", "connected", timeout=20_000)
        expect(page.locator("#exec-rows tr").first).to_be_visible()
    finally:
        server.stop()
