"""Understanding from the dashboard, in a real browser: why an execution waits, and more."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from .conftest import ARTIFACTS, DQ_UI, ROOT, free_port, shot

pytestmark = pytest.mark.e2e


@contextmanager
def _serve(target: str, db: Path, log_name: str) -> Iterator[str]:
    """`dq-ui serve TARGET` on a fresh SQLite file, stopped by its PID."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (ARTIFACTS / log_name).open("w") as out:
        proc = subprocess.Popen(
            [str(DQ_UI), "serve", target, "--storage", f"sqlite:///{db}", "--port", str(port)],
            cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "dq-ui serve did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _serve("e2e/understand_app.py:queue", tmp_path_factory.mktemp("understand") / "u.db", "e2e-understand.log") as url:
        yield url


def start(page: Page, server: str, job: str, data: str) -> str:
    page.goto(f"{server}/jobs/{job}")
    page.fill("#start-input", data)
    page.click("#start-form button[type=submit]")
    page.wait_for_url(re.compile(r"/executions/[0-9A-Z]{26}$"))
    return page.url.rsplit("/", 1)[-1]


def test_concurrency_held_execution_explains_itself_and_links_to_the_holder(page: Page, app_server: str) -> None:
    holder = start(page, app_server, "exclusive", '{"seconds": 120}')
    expect(page.locator("#exec-head .badge")).to_have_text("running", timeout=10_000)
    held = start(page, app_server, "exclusive", '{"seconds": 1}')
    why = page.locator("#why")
    expect(why).to_have_attribute("data-why-kind", "concurrency", timeout=15_000)
    expect(why).to_contain_text("concurrency key 'exclusive' (limit 1)")
    link = why.locator(f'a[data-holder="{holder}"]')
    expect(link).to_be_visible()
    shot(page, "why-concurrency")
    link.click()
    page.wait_for_url(re.compile(f"/executions/{holder}$"))
    expect(page.locator("#exec-head")).to_contain_text(holder)
    assert held != holder
    page.goto(f"{app_server}/executions?job=exclusive")
    tip = page.locator(f'[data-why="{held}"]')
    expect(tip).to_have_attribute("title", re.compile("Held by a concurrency key"))


def test_a_childs_steps_show_inside_its_parents_waterfall(page: Page, app_server: str) -> None:
    top = start(page, app_server, "family", "null")
    expect(page.locator("#exec-head .badge")).to_have_text("completed", timeout=20_000)
    wf = page.locator("#waterfall")
    # the grandchild's steps, inline, two levels down, on the top's time axis
    square = wf.locator('.nested-rows .nested-rows a.wf-row[data-key="square"]')
    expect(square).to_be_visible(timeout=10_000)
    expect(wf.locator('.nested-rows .nested-rows a.wf-row[data-key="sleep"]')).to_be_visible()
    leaf_id = square.get_attribute("data-execution")
    assert leaf_id and leaf_id != top
    shot(page, "nested-trace")
    # collapsible: closing the child hides its rows
    branch = wf.locator("details.wf-child").first
    branch.locator(":scope > summary").click()
    expect(square).to_be_hidden()
    branch.locator(":scope > summary").click()
    expect(square).to_be_visible()
    square.click()
    page.wait_for_url(re.compile(f"/executions/{leaf_id}\\?step=square$"))


def test_a_log_line_appears_live_in_the_step_panel(page: Page, app_server: str) -> None:
    eid = start(page, app_server, "chatty", "null")
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")
    page.evaluate("window.__same_page = true")
    row = page.locator('#waterfall a.wf-row[data-key="download"]')
    expect(row).to_be_visible(timeout=10_000)
    row.click()
    panel = page.locator("#step-panel")
    expect(panel).to_have_attribute("data-key", "download")
    lines = panel.locator(".logs li")
    expect(lines.first).to_contain_text("chunk", timeout=10_000)
    seen = lines.count()
    # new lines arrive while the step runs, without a reload
    expect(lines.filter(has_text="chunk 6 of 8")).to_have_count(1, timeout=15_000)
    assert lines.count() > seen
    expect(panel.locator(".logs li").first.locator(".field .k")).to_have_text("bytes")
    shot(page, "log-live")
    assert page.evaluate("window.__same_page") is True
    expect(page.locator("#exec-head .badge")).to_have_text("completed", timeout=15_000)
    page.goto(f"{app_server}/executions/{eid}?tab=events")
    expect(page.locator("#event-rows")).to_contain_text("[download] chunk 8 of 8")


def test_dark_mode_keyboard_and_last_updated(page: Page, app_server: str) -> None:
    first = start(page, app_server, "family", "null")
    expect(page.locator("#exec-head .badge")).to_have_text("completed", timeout=20_000)
    second = start(page, app_server, "family", "null")
    expect(page.locator("#exec-head .badge")).to_have_text("completed", timeout=20_000)
    expect(page.locator("#updated-ago")).to_have_text(re.compile("just now|s ago"))

    page.goto(f"{app_server}/executions?job=family")
    page.keyboard.press("j")
    rows = page.locator("#exec-rows tr")
    expect(rows.nth(0)).to_have_class(re.compile("kbd-sel"))
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_class(re.compile("kbd-sel"))
    page.keyboard.press("k")
    expect(rows.nth(0)).to_have_class(re.compile("kbd-sel"))
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(f"/executions/{second}$"))
    # j/k walk the trace; Enter opens a step's panel; Esc closes it. Once the live stream
    # is connected: its first sync may swap the trace, and with it the selection.
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")
    trace = page.locator("#waterfall a.wf-row, #waterfall summary.wf-row")
    page.keyboard.press("j")
    expect(trace.nth(0)).to_have_class(re.compile("kbd-sel"))
    page.keyboard.press("j")
    expect(trace.nth(1)).to_have_class(re.compile("kbd-sel"))
    page.keyboard.press("k")  # back to the first step, "start"
    expect(trace.nth(0)).to_have_class(re.compile("kbd-sel"))
    page.keyboard.press("Enter")
    expect(page.locator("#step-panel")).to_have_attribute("data-key", "start")
    page.keyboard.press("Escape")
    expect(page.locator("#step-panel")).to_have_attribute("data-key", "")
    assert "step=" not in page.url
    page.keyboard.press("/")
    expect(page.locator(".goto input")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator(".goto input")).not_to_be_focused()

    page.emulate_media(color_scheme="dark")
    page.goto(f"{app_server}/executions/{first}")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(17, 19, 23)", bg
    shot(page, "dark-mode")
    page.emulate_media(color_scheme="light")
    page.reload()
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(245, 246, 248)"


VERSIONED = """
from dq import create_job, create_queue, run


@create_job(name="versioned")
async def versioned(data: object) -> int:
    value = await run("compute", lambda: 41)
    return value + 1


queue = create_queue(jobs=[versioned])
"""


def test_editing_a_jobs_file_makes_an_old_execution_show_code_changed(page: Page, tmp_path: Path) -> None:
    app = tmp_path / "versioned_app.py"
    app.write_text(VERSIONED)
    with _serve(f"{app}:queue", tmp_path / "v.db", "e2e-versioned.log") as url:
        eid = start(page, url, "versioned", "null")
        expect(page.locator("#exec-head .badge")).to_have_text("completed", timeout=15_000)
        page.goto(f"{url}/executions/{eid}?step=compute")
        expect(page.locator("#step-panel .ran-tag")).to_have_text("as it ran")
        expect(page.locator("#code-changed")).to_have_count(0)
        # a deploy: the file changes under the running server
        app.write_text(VERSIONED.replace("lambda: 41", "lambda: 40").replace(
            "    value = await", "    # computed differently now\n    value = await"))
        page.reload()
        expect(page.locator("#code-changed")).to_contain_text("Code changed since this run")
        # still the code it ran, its step's line highlighted
        expect(page.locator("#step-panel .source .ln.hl")).to_contain_text("lambda: 41")
        shot(page, "code-changed")
        page.locator("#code-changed a").click()
        page.wait_for_url(re.compile(f"/executions/{eid}/source-diff$"))
        expect(page.locator("pre.diff .d-add").first).to_contain_text("# computed differently now")
        expect(page.locator("pre.diff .d-del")).to_contain_text("lambda: 41")


def test_the_event_log_filters_to_matching_log_lines(page: Page, app_server: str) -> None:
    eid = start(page, app_server, "chatty", "null")
    expect(page.locator("#exec-head .badge")).to_have_text("completed", timeout=20_000)
    page.goto(f"{app_server}/executions/{eid}?tab=events")
    rows = page.locator("#event-rows tr")
    total = rows.count()
    page.fill("#event-filter", "chunk 3")
    visible = page.locator("#event-rows tr:not([hidden])")
    expect(visible).to_have_count(1)
    expect(visible).to_contain_text("[download] chunk 3 of 8")
    page.fill("#event-filter", "")
    expect(page.locator("#event-rows tr:not([hidden])")).to_have_count(total)
