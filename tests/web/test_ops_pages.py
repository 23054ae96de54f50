"""Schedules, Pipes and Workers pages: what they show and what their forms do."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from dq import Queue, create_job, create_memory_storage, create_pipe, create_queue, run
from dq.web import Settings

from .conftest import Client, open_client


class Upload(BaseModel):
    path: str


uploads = create_pipe(name="uploads", input=Upload)


@create_job(name="nightly", cron="0 3 * * *")
async def nightly() -> str:
    return await run("sweep", lambda: "swept")


@create_job(name="listener")
async def listener(data: Any) -> Any:
    return await uploads.wait_for({"path": "wanted.mp3"})


@create_job(name="busy")
async def busy(data: Any) -> None:
    await run("spin", lambda: asyncio.sleep(30))


@pytest.fixture
def ops(settings: Settings) -> Iterator[Client]:
    queue: Queue = create_queue(jobs=[nightly, listener, busy], pipes={"uploads": uploads},
                                storage=create_memory_storage(), shutdown_grace="200ms")  # fmt: skip
    with open_client(queue, settings) as client:
        yield client


def _next_three_am(after: datetime, n: int) -> list[str]:
    first = after.replace(hour=3, minute=0, second=0, microsecond=0)
    if first <= after:
        first += timedelta(days=1)
    return [(first + timedelta(days=i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]


def test_schedules_page_words_fires_trigger_and_pause(ops: Client) -> None:
    before = datetime.now(UTC)
    page = ops.get("/schedules").text
    row = page[page.index('id="schedule-nightly"') :]
    assert "at 03:00" in row and "0 3 * * *" in row and "UTC" in row
    fires = re.findall(r'data-fire="\d+">([^<]+)<', row)
    assert [f[:19].replace("T", " ") for f in fires] == _next_three_am(before, 5)
    assert "never" in row.split("</tr>")[0]
    csrf = ops.csrf()
    res = ops.post("/schedules/nightly/trigger", data={"_csrf_token": csrf}, follow_redirects=False)
    assert res.status_code in (302, 303)
    eid = res.headers["location"].rsplit("/", 1)[-1]
    assert ops.settle(eid) == "completed"
    row = ops.get("/schedules").text
    assert f'href="/executions/{eid}"' in row
    ops.post("/schedules/nightly/pause", data={"_csrf_token": csrf}, follow_redirects=False)
    assert 'id="schedule-nightly" data-paused="true"' in ops.get("/schedules").text
    assert ops.call(ops.queue.storage.get_state, ["cron_paused:nightly"]) == {"cron_paused:nightly": True}
    ops.post("/schedules/nightly/resume", data={"_csrf_token": csrf}, follow_redirects=False)
    assert 'id="schedule-nightly" data-paused="false"' in ops.get("/schedules").text
    assert ops.post("/schedules/listener/pause", data={"_csrf_token": csrf}).status_code == 404


def test_pipes_page_messages_waiters_and_validated_send(ops: Client) -> None:
    waiter = ops.start("listener")
    deadline = time.monotonic() + 5
    while f"/executions/{waiter}" not in (page := ops.get("/pipes").text):
        assert time.monotonic() < deadline, "the waiting execution is not listed under its pipe"
        time.sleep(0.05)
    assert "Upload {path: str}" in page
    csrf = ops.csrf()
    bad_json = ops.post("/pipes/uploads/send", data={"_csrf_token": csrf, "message": "{path:"})
    assert bad_json.status_code == 422 and "Not valid JSON" in bad_json.text
    bad_shape = ops.post("/pipes/uploads/send", data={"_csrf_token": csrf, "message": '{"size": 3}'})
    assert bad_shape.status_code == 422 and "Invalid message" in bad_shape.text and "path" in bad_shape.text
    assert ops.call(ops.queue.storage.last_message_seq, "uploads") == 0  # nothing stored
    for path in ("other.mp3", "wanted.mp3"):
        ok = ops.post("/pipes/uploads/send", data={"_csrf_token": csrf, "message": f'{{"path": "{path}"}}'},
                      follow_redirects=False)  # fmt: skip
        assert ok.status_code == 303
    assert ops.settle(waiter) == "completed"
    page = ops.get("/pipes").text
    assert page.index("wanted.mp3") < page.index("other.mp3")  # newest first
    assert f"/executions/{waiter}" not in page
    assert ops.post("/pipes/nope/send", data={"_csrf_token": csrf, "message": "{}"}).status_code == 404


def test_workers_page_lists_this_process_with_what_it_runs(ops: Client) -> None:
    eid = ops.start("busy")
    ops.settle(eid, statuses=frozenset({"running"}))
    page = ops.get("/workers").text
    me = ops.queue.runtime.worker_id
    row = page[page.index(f'data-worker="{me}"') :].split("</tr>")[0]
    assert "this process" in row and 'data-health="alive"' in row
    assert f'href="/executions/{eid}"' in row
    capacity, running = (cell.split("<", 1)[0] for cell in row.split('<td class="num">')[1:3])
    assert (capacity, running) == (str(ops.queue.runtime.max_active), "1")
