"""The execution page says why an execution is not running; list rows carry it as a tooltip."""

from __future__ import annotations

import html as htmllib
import re
import time

from dq.engine.storage.base import ExecutionQuery

from .conftest import Client


def _why(page: str) -> str:
    found = re.search(r'<div class="wait-note why[^"]*" id="why" data-why-kind="([a-z_]+)">(.*?)</div>', page, re.S)
    assert found, "the page has no why-section"
    return found.group(1) + ": " + htmllib.unescape(re.sub(r"<[^>]+>", " ", found.group(2)))


def test_sleeping_execution_explains_itself_with_a_countdown(client: Client) -> None:
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    page = client.get(f"/executions/{eid}").text
    why = _why(page)
    assert why.startswith("sleeping:") and "Sleeping" in why and "wakes at" in why
    assert 'class="countdown" data-until=' in page
    rows = client.get("/executions?job=slow").text
    assert re.search(rf'title="Sleeping until \d\d:\d\d:\d\d UTC\." data-why="{eid}"', rows)


def test_paused_job_and_paused_execution(client: Client) -> None:
    client.call(client.queue.jobs.big.pause)
    eid = client.start("big")
    why = _why(client.get(f"/executions/{eid}").text)
    assert why.startswith("job_paused:") and "Job 'big' is paused" in why
    client.call(client.queue.jobs.big.resume)
    client.settle(eid)
    page = client.get(f"/executions/{eid}").text
    assert 'id="why"' not in page  # it ran: nothing to explain

    slow = client.start("slow")
    client.settle(slow, statuses=frozenset({"waiting"}))
    client.post(f"/executions/{slow}/pause", headers={"x-csrftoken": client.csrf()})
    client.settle(slow, statuses=frozenset({"paused"}))
    assert _why(client.get(f"/executions/{slow}").text).startswith("paused: ")
    rows = client.get("/executions?job=slow&status=paused").text
    assert f'title="Paused: waits for Resume." data-why="{slow}"' in rows


def test_parent_waiting_for_its_child_links_to_it(client: Client) -> None:
    eid = client.start("parent")
    deadline = time.monotonic() + 15  # a wait, generous for a loaded 2-core machine
    while True:  # the child is created, then the parent waits on it
        children = client.call(client.queue.storage.query, ExecutionQuery(parent_id=eid))
        page = client.get(f"/executions/{eid}").text
        if children and 'data-why-kind="child"' in page:
            break
        assert time.monotonic() < deadline, "the parent never said it waits for its child"
        time.sleep(0.05)
    why = _why(page)
    assert why.startswith("child:") and "'greet'" in why
    assert f'href="/executions/{children[0].id}"' in page
