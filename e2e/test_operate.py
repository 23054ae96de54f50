"""Operating from the dashboard in a real browser: search by input, replay from a step, bulk cancel."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import shot
from .test_dashboard import STATUS, start

pytestmark = pytest.mark.e2e


def test_search_by_input_finds_one_files_executions(page: Page, server: str) -> None:
    path = "uploads/incoming/E2E Search - Needle.mp3"
    eid = start(page, server, path)
    page.goto(f"{server}/executions")
    page.fill("input[name=q]", f'input.path="{path}"')
    page.press("input[name=q]", "Enter")
    expect(page).to_have_url(re.compile(r"q=input\.path"))
    rows = page.locator("#exec-rows tr")
    expect(rows.first).to_be_visible()
    # the upload and its child jobs (metadata, transcode) share the path; nothing else matches
    expect(page.locator(f"#row-{eid}")).to_be_visible()
    shot(page, "search-by-input")
    for text in rows.all_inner_texts():
        assert "Needle" in text, text
    jobs = {t.strip() for t in page.locator("#exec-rows tr td:nth-child(3)").all_inner_texts()}
    assert "processFile" in jobs and jobs <= {"processFile", "metadata", "transcode"}
    # several terms are ANDed, and combine with the other filters
    page.fill("input[name=q]", f'input.path="{path}" input.nope=1')
    page.press("input[name=q]", "Enter")
    expect(page.locator(".empty")).to_contain_text("No executions match")


def test_replay_a_failed_execution_from_its_second_step(page: Page, server: str) -> None:
    original = start(page, server, "uploads/incoming/corrupt-replay-e2e.mp3")
    expect(page.locator(STATUS)).to_have_attribute("data-status", "failed", timeout=60_000)
    page.click('[data-action="replay"]')
    dialog = page.locator("#replay-card")
    expect(dialog).to_be_visible()
    second = page.locator("#replay-card tr[data-key]").nth(1)
    key = second.get_attribute("data-key")
    assert key and key.startswith("transcode(")
    second.locator("input[type=radio]").check()
    expect(page.locator(f'#replay-card tr.rerun[data-key="{key}"]')).to_be_visible()
    expect(page.locator("#replay-card tr.reused")).to_have_count(1)  # the metadata child, its output shown
    page.fill("#replay-input", '{"path": "uploads/incoming/E2E Band - Repaired.mp3"}')
    shot(page, "replay-dialog")
    page.click('[data-action="replay-submit"]')
    page.wait_for_url(re.compile(rf"/executions/(?!{original})[0-9A-Z]{{26}}$"))
    expect(page.locator("#replay-of")).to_have_attribute("href", f"/executions/{original}")
    expect(page.locator(STATUS)).to_have_attribute("data-status", "completed", timeout=60_000)
    replay_id = page.url.rsplit("/", 1)[-1]
    page.click("#replay-of")
    expect(page.locator(f"#replays #mini-{replay_id}")).to_be_visible()


def test_bulk_cancel_every_pending_execution_of_a_job(page: Page, server: str) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # pausing a job asks first
    page.goto(f"{server}/jobs/processFile")
    page.click('[data-action="pause-job"]')
    expect(page.locator('[data-action="resume-job"]')).to_be_visible()
    try:
        held = [start(page, server, f"uploads/incoming/E2E Held - {i}.mp3") for i in range(3)]
        page.goto(f"{server}/executions?job=processFile&status=pending")
        for eid in held:
            expect(page.locator(f"#row-{eid}")).to_be_visible()
        page.select_option("#bulk-form select[name=action]", "cancel")
        # ticked rows: the confirm step counts just those; "No" backs out
        page.check(f"#row-{held[0]} input[name=ids]")
        page.click('[data-action="bulk-selected"]')
        expect(page.locator("#bulk-count")).to_have_text("1")
        expect(page.locator("#bulk-filter")).to_contain_text("1 selected execution")
        page.click("#bulk-confirm button:has-text('No')")
        expect(page.locator("#bulk-confirm")).to_have_count(0)
        page.click('[data-action="bulk-all"]')
        count = int(page.locator("#bulk-count").inner_text())
        assert count >= 3
        expect(page.locator("#bulk-filter")).to_contain_text("status pending")
        expect(page.locator("#bulk-filter")).to_contain_text("job processFile")
        shot(page, "bulk-confirm")
        page.click('[data-action="bulk-confirm"]')
        expect(page.locator(".bulk-progress")).to_have_attribute("data-finished", "true", timeout=30_000)
        assert int(page.locator(".bulk-done").inner_text()) >= 3
        for eid in held:
            page.goto(f"{server}/executions/{eid}")
            expect(page.locator(STATUS)).to_have_attribute("data-status", "cancelled")
    finally:
        page.goto(f"{server}/jobs/processFile")
        page.click('[data-action="resume-job"]')
        expect(page.locator('[data-action="pause-job"]')).to_be_visible()
