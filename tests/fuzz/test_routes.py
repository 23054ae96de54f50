"""Property-based fuzzing of every route: hostile path segments, query values, headers
and form bodies. The properties: no 5xx, no traceback in a body, and no state change
from a request that was refused (or that only reads).

Bounded for CI: a fixed number of examples per test, no per-example deadline, and
`derandomize` so every run tries the same examples (a failure reproduces as is).
"""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from .conftest import TOKEN, Target

BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- what an attacker or a careless client sends -------------------------------------

UNICODE_DIGITS = ["²", "٣", "१२", "\uff10", "¹²³", "߁", "\U0001d7d7"]  # fullwidth 0, bold 9
HUGE = ["99999999999999999999", "9" * 400, "-1", "--1", "+1", "1e9", "0x10", " 1", "1_000", "00000000000000000000001"]
CONTROL = ["\x00", "\n", "\r\nERROR forged", "\x1b[31m", "\x7f", "\u2028", "\x85"]
SURROGATES = ["\ud800", "\udfff", "a\ud83d", "\udc80x"]
hostile_text = st.one_of(
    st.sampled_from(UNICODE_DIGITS + HUGE + CONTROL + SURROGATES),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, categories=("Nd", "No", "Cc", "Cs", "Zs")), max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.just("x" * 10_000),
)


def encode(text: str) -> str:
    """Percent-encoded as a client would send it, surrogates included (as their raw UTF-8-ish bytes)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


ID_LIKE = st.sampled_from(["{completed}", "{waiting}", "{legacy}", "NOPE"])
segment = st.one_of(ID_LIKE, hostile_text)

GET_ROUTES = [
    "/", "/executions", "/executions/{id}", "/executions/{id}/waterfall", "/executions/{id}/step",
    "/executions/{id}/payload/{field}", "/executions/{id}/step-output", "/jobs", "/jobs/{name}", "/go",
    "/static/{name}", "/healthz", "/live", "/{name}",
]  # fmt: skip
PARAMS = ["limit", "cursor", "before", "retry", "retry_lt", "retry_gt", "started_after", "started_before",
          "completed_after", "completed_before", "status", "job", "q", "after", "page", "id", "step", "key",
          "tab", "nested", "line", "token"]  # fmt: skip
query = st.lists(st.tuples(st.sampled_from(PARAMS), st.one_of(hostile_text, st.sampled_from(
    ["executions", "execution", "overview", "events", "trace", "0", "1", "greet", "failed"]))), max_size=5)


def _fill(route: str, target: Target, seg: str, field: str) -> str:
    value = seg.format(completed=target.completed, waiting=target.waiting, legacy=target.legacy) if seg in (
        "{completed}", "{waiting}", "{legacy}") else seg  # fmt: skip
    return route.replace("{id}", encode(value)).replace("{name}", encode(value)).replace("{field}", encode(field))


def _header_value(text: str) -> bytes:
    """As raw header bytes: Latin-1 where it fits (HTTP's own charset), else UTF-8; without the
    control bytes the client library refuses to send at all (uvicorn would refuse them too)."""
    raw = text.encode("latin-1") if all(ord(c) < 256 for c in text) else text.encode("utf-8", "surrogatepass")
    return re.sub(rb"[\x00-\x08\x0a-\x1f\x7f]", b"", raw).strip()


def _check(res: httpx.Response, body: bytes) -> None:
    assert res.status_code < 500, (res.request.method, str(res.request.url), res.status_code, body[:300])
    assert b"Traceback" not in body and b'File "' not in body, body[:300]


def _send(target: Target, method: str, url: str, headers: dict[str, bytes], data: dict[str, str] | None = None) -> tuple[httpx.Response, bytes]:
    with httpx.Client(base_url=target.url, timeout=10) as http:
        try:
            with http.stream(method, url, headers=headers, data=data) as res:
                if res.headers.get("content-type", "").startswith("text/event-stream"):
                    return res, b""  # a live stream opened: its status is the answer
                return res, res.read()
        except httpx.LocalProtocolError:
            reject()  # the client library refuses to send it: not a request the server can see


READS = {
    "route": st.sampled_from(GET_ROUTES), "seg": segment, "field": st.sampled_from(["input", "output", "error", "nope"]),
    "params": query, "method": st.sampled_from(["GET", "HEAD"]), "last_event_id": st.none() | hostile_text,
}  # fmt: skip


def _read(target: Target, route: str, seg: str, field: str, params: list[tuple[str, str]], method: str,
          last_event_id: str | None, headers: dict[str, bytes]) -> httpx.Response:  # fmt: skip
    before = target.snapshot()
    qs = "&".join(f"{encode(k)}={encode(v)}" for k, v in params)
    url = _fill(route, target, seg, field) + (f"?{qs}" if qs else "")
    if last_event_id is not None:
        headers = {**headers, "last-event-id": _header_value(last_event_id)}
    res, body = _send(target, method, url, headers)
    _check(res, body)
    if method == "HEAD":
        assert body == b""
    assert target.snapshot() == before
    return res


@BOUNDED
@given(**READS)
def test_reads_never_fail_and_never_change_state(
    target: Target, route: str, seg: str, field: str, params: list[tuple[str, str]], method: str, last_event_id: str | None
) -> None:
    _read(target, route, seg, field, params, method, last_event_id, {})


@settings(BOUNDED, max_examples=30)
@given(**READS, auth=st.sampled_from(["bearer", "cookie", "wrong", "none"]))
def test_reads_behind_a_token_never_fail(
    token_target: Target, route: str, seg: str, field: str, params: list[tuple[str, str]], method: str,
    last_event_id: str | None, auth: str,
) -> None:  # fmt: skip
    headers = {
        "bearer": {"authorization": f"Bearer {TOKEN}".encode()},
        "cookie": {"cookie": f"dq_token={TOKEN}".encode()},
        "wrong": {"authorization": b"Bearer \xff\xfe", "cookie": b"dq_token=\xc3\x28; x"},
        "none": {},
    }[auth]
    res = _read(token_target, route, seg, field, params, method, last_event_id, headers)
    if auth in ("wrong", "none") and route in ("/", "/executions", "/jobs", "/go", "/live"):
        assert res.status_code == 401, res.status_code  # nothing behind the token without it


FOREIGN_ORIGINS = [
    "http://evil.example", "null", "http://127.0.0.1.evil.example", "http://evil.example:{port}",
    "http://127.0.0.1:1", "http://{host}@evil.example", "http://evil.example/{host}", "file://", "{host}",
    "javascript:alert(1)", "http://[::1", "",
]  # fmt: skip
HOSTS = ["{host}", "evil.example", "evil.example:{port}", "127.0.0.1.nip.io", "", "localhost:{port}",
         "[::1]:{port}", "127.0.0.1:{port}\x00", "LOCALHOST:{port}", "0.0.0.0", "a" * 300]  # fmt: skip
ACTIONS = ["pause", "resume", "cancel", "retry"]


@BOUNDED
@given(
    action=st.sampled_from([*ACTIONS, "start"]),
    target_id=st.sampled_from(["{waiting}", "{completed}", "{legacy}"]),
    host=st.sampled_from(HOSTS),
    origin=st.none() | st.sampled_from(FOREIGN_ORIGINS) | hostile_text,
    referer=st.none() | st.sampled_from(FOREIGN_ORIGINS) | hostile_text,
)
def test_refused_state_changes_change_nothing(
    target: Target, action: str, target_id: str, host: str, origin: str | None, referer: str | None
) -> None:
    """Every state-changing request from a foreign page (foreign Host, or an Origin/Referer that
    is not this dashboard's) is refused with a 4xx, and nothing changes. The CSRF token is
    valid, so the gate is what refuses."""
    port = target.url.rsplit(":", 1)[1]
    fill = {"host": target.host, "port": port}
    host_value = host.format(**fill)
    origin_value = origin.format(**fill) if origin in FOREIGN_ORIGINS else origin
    referer_value = referer.format(**fill) if referer in FOREIGN_ORIGINS else referer
    with httpx.Client(base_url=target.url, timeout=10) as http:
        csrf = re.search(r'"x-csrftoken": "([^"]+)"', http.get("/jobs").text)
        assert csrf is not None
        headers = {"host": _header_value(host_value), "x-csrftoken": csrf.group(1).encode()}
        if origin_value is not None:
            headers["origin"] = _header_value(origin_value)
        if referer_value is not None:
            headers["referer"] = _header_value(referer_value)
        before = target.snapshot()
        if action == "start":
            url, data = "/jobs/broken/start", {"input": "{}"}
        else:
            url = f"/executions/{_fill('{id}', target, target_id, '')}/{action}"
            data = None
        res = http.post(url, headers=headers, data=data)
        body = res.content
    _check(res, body)
    assert res.status_code in (400, 403), (host_value, origin_value, referer_value, res.status_code, body[:200])
    assert target.snapshot() == before


@BOUNDED
@given(body=st.one_of(
    hostile_text,
    st.integers(min_value=1, max_value=200_000).map(lambda n: "[" * n),
    st.integers(min_value=1, max_value=20_000).map(lambda n: "1" * n),
    st.recursive(st.none() | st.booleans() | st.integers() | hostile_text, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(hostile_text, inner, max_size=3), max_leaves=12).map(repr),
    st.sampled_from(['{"id": "\\ud800"}', '{"a": 1e999999}', "NaN", '{"a": [' * 70 + "]}" * 70]),
))  # fmt: skip
def test_start_form_bodies_never_fail(target: Target, body: str) -> None:
    """Any text in the start form: a redirect to the new execution, or a 422 naming the problem
    with nothing started."""
    with httpx.Client(base_url=target.url, timeout=10, headers={"origin": target.url}) as http:
        csrf = re.search(r'"x-csrftoken": "([^"]+)"', http.get("/jobs").text)
        assert csrf is not None
        before = target.snapshot()
        text = body.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # a form carries UTF-8
        res = http.post("/jobs/broken/start", data={"input": text}, headers={"x-csrftoken": csrf.group(1)})
    _check(res, res.content)
    assert res.status_code in (303, 422), (res.status_code, res.content[:200])
    if res.status_code == 422:
        assert b'id="start-error"' in res.content
        assert target.snapshot() == before
    else:
        assert len(target.snapshot()) == len(before) + 1
