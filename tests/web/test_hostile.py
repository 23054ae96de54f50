"""The dashboard under hostile input: one test per defect of issue 16 (surrogates, DNS
rebinding, query parameters, the start form, static files, log injection, methods)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest

from dq import Queue, create_queue, create_sqlite_storage
from dq.app import create_app
from dq.engine.storage.base import Batch, StepRecord
from dq.web import HostPolicy, Settings, split_host

from .conftest import BASE_URL, FAST, Client, LiveServer, make_queue, open_client
from .legacy import BAD_INPUT, write_legacy_row
from .sample import JOBS
from .sse_client import Reader

# -- 1. text that cannot be encoded ---------------------------------------------------


def test_start_form_refuses_a_surrogate_naming_the_field(client: Client) -> None:
    token = client.csrf()
    res = client.post("/jobs/broken/start", data={"input": '{"id": "\\ud800"}', "_csrf_token": token})
    assert res.status_code == 422
    assert "holds text that cannot be encoded at [&#39;id&#39;]" in res.text
    assert client.call(client.queue.jobs.get_all) == []  # nothing stored


def test_a_stored_surrogate_renders_on_every_page_and_download(client: Client) -> None:
    eid = client.call(write_legacy_row, client.queue.storage)
    for url in ("/", "/executions", "/executions?job=broken", f"/executions/{eid}", f"/executions/{eid}?tab=events",
                f"/executions/{eid}/waterfall", f"/executions/{eid}/step?key=explode", "/jobs", "/jobs/broken"):  # fmt: skip
        res = client.get(url)
        assert res.status_code == 200, url
        assert "Something went wrong" not in res.text, url
    assert f'id="row-{eid}"' in client.get("/executions").text
    page = client.get(f"/executions/{eid}").text
    assert "\\ud800" in page  # payloads show the stored value's JSON escape
    assert "cut \ufffd emoji" in page  # plain text shows a replacement character
    download = client.get(f"/executions/{eid}/payload/input")
    assert download.status_code == 200 and json.loads(download.content) == BAD_INPUT  # lossless
    for field in ("output", "error"):
        assert client.get(f"/executions/{eid}/payload/{field}").status_code == 200
    step = client.get(f"/executions/{eid}/step-output?key=explode")
    assert step.status_code == 200 and json.loads(step.content) == "\ud800"


async def test_one_bad_row_never_cuts_a_stream(queue: Queue, live: LiveServer) -> None:
    before = await queue.storage.last_event_seq()

    async def bad_then_good() -> tuple[str, str]:
        bad = await write_legacy_row(queue.storage)
        await asyncio.sleep(0.5)  # a later tick than the bad row's
        good = await queue.jobs.greet.start({"name": "after the bad row"})
        return bad, good.id

    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        async with http.stream("GET", f"/live?page=executions&after={before}") as res:
            assert res.status_code == 200
            writer = asyncio.create_task(bad_then_good())
            reader = Reader()
            await reader.read(res, until=loop.time() + 8, stop_when=lambda r: writer.done() and f'id="row-{writer.result()[1]}"' in r.text())
        bad, good = await writer
        assert f'id="row-{bad}"' in reader.text() and f'id="row-{good}"' in reader.text()
        # a client resuming from before the bad tick replays it, and goes on
        async with http.stream("GET", f"/live?page=executions&after={before}") as res:
            again = Reader()
            await again.read(res, until=loop.time() + 5, stop_when=lambda r: f'id="row-{good}"' in r.text())
        assert f'id="row-{bad}"' in again.text() and f'id="row-{good}"' in again.text()
        # the execution's own stream, resynced from scratch, carries its rows too
        async with http.stream("GET", f"/live?page=execution&id={bad}&after=1") as res:
            own = Reader()
            await own.read(res, until=loop.time() + 5, stop_when=lambda r: bool(r.messages))
        assert 'id="exec-head"' in own.text() and "\ufffd" in own.text()


# -- 2. DNS rebinding: Host and Origin -------------------------------------------------


def test_a_foreign_host_is_refused_on_every_route_with_a_hint(client: Client) -> None:
    for url in ("/", "/executions", "/static/dq.css", "/healthz", "/live", "/no/such/page"):
        res = client.get(url, headers={"host": "evil.example"})
        assert res.status_code == 400, url
        line = res.text
        assert line.count("\n") == 1 and "Host 'evil.example' is not allowed" in line
        assert "--allowed-host evil.example" in line and "DQ_UI_ALLOWED_HOSTS" in line
    assert client.get("/", headers={"host": "evil.example:8000"}).status_code == 400
    assert client.get("/", headers={"host": "127.0.0.1.evil.example"}).status_code == 400
    assert client.get("/", headers={"host": "local host"}).status_code == 400


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.2:80", "[::1]:8000", "LOCALHOST."])
def test_loopback_hosts_are_accepted(client: Client, host: str) -> None:
    assert client.get("/healthz", headers={"host": host}).status_code == 200


def test_allowed_hosts_and_the_bound_address(queue: Queue) -> None:
    settings = Settings(**FAST, bound_host="0.0.0.0", allowed_hosts=("dq.example.com", ".corp.example"))  # type: ignore[arg-type]
    with open_client(queue, settings) as client:
        for host in ("dq.example.com", "dq.example.com:8000", "corp.example", "a.b.corp.example", "10.1.2.3:8000", "[fe80::1]"):
            assert client.get("/healthz", headers={"host": host}).status_code == 200, host
        for host in ("x.dq.example.com", "evilcorp.example", "example.com"):
            assert client.get("/healthz", headers={"host": host}).status_code == 400, host
    bound = Settings(**FAST, bound_host="192.168.1.10")  # type: ignore[arg-type]
    with open_client(make_queue(), bound) as client:
        assert client.get("/healthz", headers={"host": "192.168.1.10:8000"}).status_code == 200
        assert client.get("/healthz", headers={"host": "192.168.1.11"}).status_code == 400


def _cancel(client: Client, eid: str, **headers: str) -> int:
    return client.post(f"/executions/{eid}/cancel", headers={"x-csrftoken": client.csrf(), **headers}).status_code


def test_state_changes_need_a_same_origin_origin_or_referer(client: Client) -> None:
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    assert _cancel(client, eid, origin="http://evil.example") == 403
    assert _cancel(client, eid, origin="null") == 403
    assert _cancel(client, eid, origin="http://127.0.0.1:9999") == 403  # another port is another origin
    del client.headers["origin"]
    try:
        assert _cancel(client, eid) == 403  # neither header
        assert _cancel(client, eid, referer="http://evil.example/executions") == 403
        started = client.post("/jobs/greet/start", data={"input": '{"name": "x"}', "_csrf_token": client.csrf()},
                              headers={"referer": "http://evil.example/"})  # fmt: skip
        assert started.status_code == 403
        assert client.status(eid) == "waiting" and len(client.call(client.queue.jobs.get_all)) == 1  # nothing changed
        assert _cancel(client, eid, referer=f"{BASE_URL}/executions/{eid}") == 200
    finally:
        client.headers["origin"] = BASE_URL
    assert client.settle(eid) == "cancelled"


def test_the_origin_check_also_applies_with_a_token(queue: Queue) -> None:
    with open_client(queue, Settings(token="tok", **FAST)) as client:  # type: ignore[arg-type]
        client.get("/?token=tok")
        eid = client.start("slow")
        client.settle(eid, statuses=frozenset({"waiting"}))
        assert _cancel(client, eid, origin="http://evil.example") == 403
        assert client.get("/", headers={"host": "evil.example"}).status_code == 400
        assert client.status(eid) == "waiting"
        assert _cancel(client, eid) == 200


# -- 3. query parameters -------------------------------------------------------------


@pytest.fixture
def sqlite_client(tmp_path: Path) -> Client:
    queue = create_queue(jobs=JOBS, storage=create_sqlite_storage(path=str(tmp_path / "dq.db")), shutdown_grace="200ms")
    return open_client(queue, Settings(**FAST))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/executions?limit=²", "limit"),
        ("/executions?limit=0", "limit"),
        ("/executions?retry=²", "retry"),
        ("/executions?retry=--1", "retry"),
        ("/executions?retry=-1", "retry"),
        ("/executions?started_after=99999999999999999999", "started_after"),
        ("/executions?completed_before=٢٠٢٦-01-01", "completed_before"),
        ("/executions?retry_gt=99999999999999999999", "retry_gt"),
        ("/executions?cursor=%00", "cursor"),
        ("/executions?q=a%0ab", "q"),
        ("/live?after=²", "after"),
        ("/live?after=99999999999999999999", "after"),
        ("/live?page=nope", "page"),
        ("/live?page=executions&retry=²", "retry"),
        ("/jobs/greet?line=²", "line"),
        ("/executions/X/step?key=%00", "key"),
        ("/executions/X?tab=%ff", "tab"),
    ],
)
def test_bad_query_values_are_a_400_naming_the_parameter(sqlite_client: Client, url: str, name: str) -> None:
    with sqlite_client as client:
        res = client.get(url)
        assert res.status_code == 400, (url, res.text[:200])
        assert f"{name}: " in res.text
        assert "Traceback" not in res.text and "Something went wrong" not in res.text


def test_last_event_id_is_parsed_like_after(client: Client) -> None:
    for value in ("²".encode(), b"--1", b"99999999999999999999"):
        res = client.get("/live", headers={"last-event-id": value})  # type: ignore[dict-item]
        assert res.status_code == 400 and "Last-Event-ID: " in res.text, value


# -- 4. the start form ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[" * 100_000, "nested 100000 levels deep; at most 64"),
        ("1" * 5000, "a number has 5000 characters; at most 100"),
        ('{"a": 1e999999}', "too large for JSON"),
        ("NaN", "NaN is not a JSON value"),
        ('"' + "\\x" * 10, "Not valid JSON"),
    ],
)
def test_the_start_form_refuses_hostile_json_with_a_422(client: Client, body: str, message: str) -> None:
    token = client.csrf()
    res = client.post("/jobs/broken/start", data={"input": body, "_csrf_token": token})
    assert res.status_code == 422 and message in res.text
    inline = client.post("/jobs/broken/start", data={"input": body}, headers={"x-csrftoken": token, "hx-request": "1"})
    assert inline.status_code == 200 and 'id="start-error"' in inline.text and message in inline.text
    assert client.call(client.queue.jobs.get_all) == []


# -- 5. static files -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["%00", "a" * 10_000, "..%2fpyproject.toml", "../templates/base.html", "%2e%2e/x", "dq.css%00", ""])
def test_anything_but_a_shipped_static_file_is_a_404(client: Client, name: str) -> None:
    assert client.get(f"/static/{name}").status_code == 404


def test_static_files_have_types_and_etags(client: Client) -> None:
    res = client.get("/static/dq.css")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/css")
    again = client.get("/static/dq.css", headers={"if-none-match": res.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/static/htmx.min.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))


# -- 6. log injection ----------------------------------------------------------------


def test_request_paths_are_escaped_in_log_lines(client: Client, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    dash = client.app.state["dq_dashboard"]

    def explode(name: str) -> None:
        raise RuntimeError("storage went away")

    monkeypatch.setattr(dash, "job", explode)
    with caplog.at_level(logging.ERROR, logger="dq.web"):
        res = client.get("/jobs/x%0aERROR%20dq.web:%20forged%0d%1b[31m")
    assert res.status_code == 500 and "Traceback" not in res.text
    (record,) = [r for r in caplog.records if r.name == "dq.web"]
    line = record.getMessage()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/jobs/x\\nERROR dq.web: forged\\r\\x1b[31m" in line


# -- 7. methods ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD"])
def test_live_answers_get_only(client: Client, method: str) -> None:
    res = client.request(method, "/live?page=overview", headers={"x-csrftoken": client.csrf()})
    assert res.status_code == 405 and res.headers["allow"] == "GET"


def test_head_works_wherever_get_does(client: Client) -> None:
    eid = client.run("greet", {"name": "head"})
    for url in ("/", "/healthz", "/executions", f"/executions/{eid}", f"/executions/{eid}/payload/input",
                "/jobs", "/jobs/greet", "/static/dq.css"):  # fmt: skip
        get, head = client.get(url), client.head(url)
        assert head.status_code == 200 == get.status_code, url
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], url
    assert client.head("/executions/NOPE").status_code == 404
    assert client.head("/no/such/page").status_code == 404


async def _raw_get(port: int, target: bytes, headers: bytes = b"") -> bytes:
    """A request line as raw bytes (no client library would send these unescaped)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + headers + b"\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


@pytest.mark.parametrize("token", [None, "tok"])
async def test_raw_bytes_are_never_a_500(queue: Queue, token: str | None) -> None:
    """uvicorn refuses raw non-ASCII request targets itself; header bytes reach the app."""
    async with LiveServer(create_app(queue, settings=Settings(token=token, **FAST))) as live:  # type: ignore[arg-type]
        auth = b"Authorization: Bearer tok\r\n" if token else b""
        for target in (b"/executions?retry=\xff\xfe", b"/?token=\xc3\x28", b"/live?after=\xb2", b"/jobs?q=\xed\xa0\x80"):
            answer = await _raw_get(live.port, target, auth)
            status = int(answer.split(b" ", 2)[1])
            assert status < 500 and b"Traceback" not in answer, (target, answer[:200])
        cookie = await _raw_get(live.port, b"/", b"Cookie: dq_token=\xff\xfe\r\n")
        assert int(cookie.split(b" ", 2)[1]) == (401 if token else 200)


def test_a_step_output_download_with_a_non_latin_step_name(client: Client) -> None:
    eid = client.call(write_legacy_row, client.queue.storage)
    step = StepRecord(execution_id=eid, key="步骤#2", name="步骤", kind="run", status="completed", output={"ok": 1}, seq=2)
    client.call(client.queue.storage.commit, Batch(steps=[step]))
    res = client.get(f"/executions/{eid}/step-output", params={"key": "步骤#2"})
    assert res.status_code == 200 and json.loads(res.content) == {"ok": 1}
    assert res.headers["content-disposition"] == f'attachment; filename="{eid}-___2.json"'


def test_host_header_parsing_and_policy() -> None:
    assert split_host("LocalHost:8000") == "localhost" and split_host("[::1]:80") == "::1"
    for bad in ("localhost:²", "[::1", "[evil.example]:80", "a b", "évil.example", "host:80:80", ""):
        assert split_host(bad) is None, bad
    policy = HostPolicy(bound="myhost", allowed=(".corp.example",))
    assert policy.accepts("myhost") and policy.accepts("corp.example") and policy.accepts("127.3.2.1")
    assert not policy.accepts("0.0.0.0") and not policy.accepts("10.0.0.1") and not policy.accepts("xcorp.example")
    assert HostPolicy(allowed=("*",)).accepts("anything.example")
