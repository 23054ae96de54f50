"""Operating from the dashboard: search by input, bulk actions, the replay dialog, job controls."""

from __future__ import annotations

import html as htmllib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dq import Queue, create_job, create_memory_storage, create_queue, run
from dq.web import Settings

from .conftest import FAST, Client, open_client
from .sample import JOBS


class Media(BaseModel):
    path: str
    user: dict[str, Any] = {}
    fail: bool = False


def _encode(data: Media) -> str:
    if data.fail:
        raise RuntimeError(f"cannot encode {data.path}")
    return data.path + ".ogg"


@create_job(name="convert", input=Media, retry=0)
async def convert(data: Media) -> str:
    await run("fetch", lambda: f"fetched {data.path}")
    return str(await run("encode", lambda: _encode(data), retry=0))


@pytest.fixture
def queue() -> Queue:
    return create_queue(jobs=[*JOBS, convert], storage=create_memory_storage(), shutdown_grace="200ms")


@pytest.fixture
def client(queue: Queue) -> Iterator[Client]:
    with open_client(queue, Settings(**FAST)) as c:  # type: ignore[arg-type]
        yield c


def row_ids(page: str) -> set[str]:
    return set(re.findall(r'id="row-([^"]+)"', page))


def post(client: Client, url: str, data: Any) -> Any:
    return client.post(url, data=data, headers={"x-csrftoken": client.csrf(), "hx-request": "true"})


# --- search by input ----------------------------------------------------------------


def test_search_by_input_terms_anded_in_the_url_and_with_other_filters(client: Client) -> None:
    a = client.run("convert", {"path": "a.wav", "user": {"id": 7}})
    b = client.run("convert", {"path": "b.wav", "user": {"id": 7}, "fail": True})
    c = client.run("convert", {"path": "c.wav", "user": {"id": 8}})
    s = client.run("convert", {"path": "7", "user": {"id": "7"}})
    assert row_ids(client.get("/executions", params={"q": "input.user.id=7"}).text) == {a, b}
    assert row_ids(client.get("/executions", params={"q": 'input.user.id="7"'}).text) == {s}
    both = client.get("/executions", params={"q": "input.user.id=7 input.path=b.wav"})
    assert row_ids(both.text) == {b}
    assert 'value="input.user.id=7 input.path=b.wav"' in both.text  # kept in the box and the URL
    assert row_ids(client.get("/executions", params={"q": "input.user.id=7", "status": "completed"}).text) == {a}
    assert row_ids(client.get("/executions", params={"q": f"input.user.id=8 {c[-6:]}"}).text) == {c}
    bad = client.get("/executions", params={"q": "input.user"})
    assert "write input.&lt;path&gt;=&lt;value&gt;" in bad.text or "write input.<path>=<value>" in htmllib.unescape(bad.text)


# --- bulk actions ---------------------------------------------------------------------


def wait_bulk(client: Client, body: str) -> str:
    task = re.search(r'id="bulk-([^"]+)"', body)
    assert task, body
    deadline = time.monotonic() + 20
    while 'data-finished="true"' not in body:
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
        body = client.get(f"/bulk/{task.group(1)}").text
    return body


def test_bulk_cancel_all_matching_a_filter_confirms_then_acts(client: Client) -> None:
    slow = [client.start("slow", i) for i in range(3)]
    for eid in slow:
        client.settle(eid, statuses=frozenset({"waiting"}))
    other = client.run("convert", {"path": "x.wav"})
    page = client.get("/executions", params={"job": "slow"}).text
    assert 'id="bulk-form"' in page and "All 3 matching this filter" in page
    form = {"action": "cancel", "scope": "filter", "job": "slow"}
    confirm = post(client, "/bulk", form)
    assert confirm.status_code == 200
    assert 'id="bulk-count">3<' in confirm.text and "job slow" in confirm.text
    assert all(client.status(e) == "waiting" for e in slow)  # nothing happened yet
    done = wait_bulk(client, post(client, "/bulk", {**form, "confirm": "1"}).text)
    assert '<b class="bulk-done">3</b>' in done
    assert all(client.status(e) == "cancelled" for e in slow) and client.status(other) == "completed"
    events = client.call(client.queue.storage.read_events, 0)
    assert {e.data.get("by") for e in events if e.type == "cancel" and e.execution_id in slow} == {"dashboard (bulk)"}


def test_bulk_on_selected_rows(client: Client) -> None:
    slow = [client.start("slow", i) for i in range(3)]
    for eid in slow:
        client.settle(eid, statuses=frozenset({"waiting"}))
    form = {"action": "pause", "scope": "selected", "ids": slow[:2], "confirm": "1"}
    wait_bulk(client, post(client, "/bulk", form).text)
    assert [client.status(e) for e in slow] == ["paused", "paused", "waiting"]


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"action": "explode", "scope": "filter"}, 400, "Unknown action"),
        ({"action": "cancel", "scope": "filter", "status": "bogus"}, 400, "is not a status"),
        ({"action": "retry", "scope": "filter", "job": "slow"}, 200, "nothing matches"),
    ],
)
def test_bulk_bad_requests_are_named(client: Client, form: dict[str, str], status: int, message: str) -> None:
    res = post(client, "/bulk", form)
    assert res.status_code == status and message in res.text


def test_actions_need_the_csrf_token(client: Client) -> None:
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    for url, data in (("/bulk", {"action": "cancel", "scope": "filter", "confirm": "1"}),
                      (f"/executions/{eid}/replay", {"input": "null"}), ("/jobs/slow/pause", {}),
                      ("/jobs/slow/cancel", {"input": "{}"})):  # fmt: skip
        assert client.post(url, data=data).status_code == 403, url
        assert client.post(url, data=data, headers={"x-csrftoken": "forged"}).status_code == 403, url
    assert client.status(eid) == "waiting"


def test_read_only_hides_and_refuses_every_action(queue: Queue) -> None:
    with open_client(queue, Settings(read_only=True, **FAST)) as client:  # type: ignore[arg-type]
        token = client.csrf()
        eid = client.start("slow")
        client.settle(eid, statuses=frozenset({"waiting"}))
        page = client.get("/executions").text
        assert 'id="bulk-form"' not in page and "data-read-only" in page
        form = {"action": "cancel", "scope": "filter", "confirm": "1"}
        for url, data in (("/bulk", form), (f"/executions/{eid}/replay", {"input": "null"}),
                          ("/jobs/slow/pause", {}), ("/jobs/slow/cancel", {"input": "{}"})):  # fmt: skip
            assert client.post(url, data=data, headers={"x-csrftoken": token}).status_code == 403, url
        assert client.get(f"/executions/{eid}/replay").status_code == 403
        assert 'id="job-controls"' not in client.get("/jobs/slow").text
        assert client.status(eid) == "waiting"


# --- the replay dialog ------------------------------------------------------------------


def test_replay_dialog_shows_reused_and_rerun_steps_and_replays(client: Client) -> None:
    original = client.run("convert", {"path": "song.wav", "fail": True})
    assert client.status(original) == "failed"
    page = client.get(f"/executions/{original}").text
    assert 'data-action="replay"' in page and "from_step=encode" in page
    dialog = client.get(f"/executions/{original}/replay", params={"from_step": "encode"}).text
    assert re.search(r'class="reused" data-key="fetch".*fetched song\.wav', dialog, re.S)
    assert 'class="rerun" data-key="encode"' in dialog
    whole = client.get(f"/executions/{original}/replay").text
    assert 'class="reused"' not in whole

    res = post(client, f"/executions/{original}/replay",
               {"from_step": "encode", "input": '{"path": "song.flac"}'})  # fmt: skip
    target = res.headers["hx-redirect"]
    new = target.rsplit("/", 1)[-1]
    assert client.settle(new) == "completed"
    assert client.call(client.queue.storage.get_execution, new).output == "song.flac.ogg"  # type: ignore[union-attr]
    new_page = client.get(target).text
    assert f'id="replay-of" href="/executions/{original}"' in new_page
    assert f"mini-{new}" in client.get(f"/executions/{original}").text  # the original lists its replays
    log = htmllib.unescape(client.get(target, params={"tab": "events"}).text)
    assert f"replay of {original[-8:]} from step encode · reused: fetch · by dashboard" in log
    replay_events = [e for e in client.call(client.queue.storage.read_events, 0) if e.execution_id == new and e.type == "replay"]
    assert replay_events[0].data["by"] == "dashboard" and replay_events[0].data["reused"] == ["fetch"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"from_step": "encode", "input": '{"path": '}, "Not valid JSON"),
        ({"from_step": "encode", "input": '{"user": 3}'}, "Invalid input"),
        ({"from_step": "nope", "input": '{"path": "x"}'}, "its steps are ['fetch', 'encode']"),
    ],
)
def test_replay_dialog_errors_inline_and_store_nothing(client: Client, form: dict[str, str], message: str) -> None:
    original = client.run("convert", {"path": "song.wav", "fail": True})
    before = len(client.call(client.queue.jobs.get_all))
    res = post(client, f"/executions/{original}/replay", form)
    assert res.status_code == 200 and "hx-redirect" not in res.headers
    assert 'id="replay-error"' in res.text and message in htmllib.unescape(res.text)
    assert form["input"].strip() in htmllib.unescape(res.text)  # kept for correction
    assert len(client.call(client.queue.jobs.get_all)) == before


def test_replay_dialog_warns_when_the_jobs_code_changed_since_the_run(client: Client) -> None:
    original = client.run("convert", {"path": "old.wav"})
    assert 'id="replay-code-changed"' not in client.get(f"/executions/{original}/replay").text
    source = Path(__file__)
    stat = source.stat()
    later = time.time() + 5
    os.utime(source, (later, later))  # "a fix was deployed" after the run
    try:
        assert 'id="replay-code-changed"' in client.get(f"/executions/{original}/replay").text
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_replay_of_an_unfinished_execution_is_explained(client: Client) -> None:
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    assert "Only an execution that ended" in client.get(f"/executions/{eid}/replay").text
    res = post(client, f"/executions/{eid}/replay", {"input": "null"})
    assert "Only an execution that ended" in res.text and "this one is waiting" in res.text
    assert client.call(lambda: client.queue.jobs.get_all(replay_of=eid)) == []
    assert client.get("/executions/NOPE/replay").status_code == 404


# --- job controls and the overview ---------------------------------------------------------


def test_job_pause_resume_and_cancel_by_input(client: Client) -> None:
    res = post(client, "/jobs/convert/pause", {})
    assert res.status_code == 200 and res.headers["hx-redirect"] == "/jobs/convert"
    page = client.get("/jobs/convert").text
    assert 'data-action="resume-job"' in page
    held = [client.start("convert", {"path": p, "user": {"id": u}}) for p, u in (("a", 7), ("b", 7), ("c", 8))]
    time.sleep(0.2)
    assert [client.status(e) for e in held] == ["pending"] * 3  # the job is paused: nothing starts
    res = post(client, "/jobs/convert/cancel", {"input": '{"user": {"id": 7}}'})
    assert 'id="cancel-result"' in res.text and "2 executions cancelled" in res.text
    assert [client.status(e) for e in held] == ["cancelled", "cancelled", "pending"]
    for body, message in (("[1]", "expected a JSON object"), ("{", "Not valid JSON")):
        bad = post(client, "/jobs/convert/cancel", {"input": body})
        assert 'id="cancel-error"' in bad.text and message in bad.text
    post(client, "/jobs/convert/resume", {})
    assert client.settle(held[2]) == "completed"
    assert 'data-action="pause-job"' in client.get("/jobs/convert").text
    assert post(client, "/jobs/nosuch/pause", {}).status_code == 404


def test_a_job_pause_from_the_dashboard_is_recorded_on_its_executions(client: Client) -> None:
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    post(client, "/jobs/slow/pause", {})
    assert client.settle(eid, statuses=frozenset({"paused"})) == "paused"
    post(client, "/jobs/slow/resume", {})
    assert client.settle(eid, statuses=frozenset({"waiting", "pending"})) in ("waiting", "pending")
    events = [e for e in client.call(client.queue.storage.read_events, 0) if e.execution_id == eid]
    assert [(e.type, e.data.get("by")) for e in events if e.type in ("pause", "resume")] == [
        ("pause", "dashboard"), ("resume", "dashboard"),
    ]  # fmt: skip


def test_failure_groups_offer_replay_all(client: Client) -> None:
    failed = [client.run("convert", {"path": f"{i}.wav", "fail": True}) for i in range(2)]
    page = client.get("/").text
    assert 'data-action="replay-group"' in page
    assert all(f'name="ids" value="{e}"' in page for e in failed)
    form = {"action": "replay", "scope": "selected", "ids": failed, "from_step": "encode"}
    confirm = post(client, "/bulk", form)
    assert 'id="bulk-count">2<' in confirm.text and "from step" in confirm.text
    wait_bulk(client, post(client, "/bulk", {**form, "confirm": "1"}).text)
    replays = client.call(lambda: client.queue.jobs.get_all(job_name="convert", status=["pending", "running", "failed"]))
    assert sorted(r.replay_of for r in replays if r.replay_of) == sorted(failed)
