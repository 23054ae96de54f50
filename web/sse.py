"""`GET /live`: the one SSE endpoint. Each page asks for what it shows; the hub feeds it.

`/live?page=overview`, `/live?page=executions&<filters>`,
`/live?page=execution&id=<id>&step=<key>`; `after=<seq>` (or the
`Last-Event-ID` header, which wins) resumes after a page render or a drop.
Served by sse-starlette inside a Litestar `@asgi` handler: it pings, notices
disconnects, and ends its streams when uvicorn shuts down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from litestar import asgi
from litestar.types import Receive, Scope, Send
from sse_starlette import EventSourceResponse, ServerSentEvent

from dq.engine.ids import now_ms
from dq.engine.text import scrub

from . import live, loaders, params, prefix
from .dashboard import STATE_KEY, Dashboard
from .filters import parse_filters
from .hub import RESYNC, Hub
from .hub_client import Client, Tick, new_count

PAGES = ("overview", "executions", "execution")


def _after(scope: Scope, query: dict[str, list[str]]) -> int | None:
    """The event seq to resume after: `Last-Event-ID` (the browser's, on reconnect) wins."""
    header = params.header(scope, b"last-event-id").strip()
    if header:
        return params.integer(header, "Last-Event-ID")
    raw = params.last(query, "after")
    return params.integer(raw, "after") if raw else None


def _rows_shown(query: dict[str, list[str]], after: int | None) -> tuple[set[str] | None, tuple[str, str] | None]:
    """`span=<seq>,<lowest id>,<highest id>`: the rows the list page rendered at event `seq`
    shows (`span=<seq>`: none). Without it, or when resuming from elsewhere than `seq` (a
    reconnect: a resync may have replaced the rows since), the stream carries every changed row."""
    if "span" not in query:
        return None, None
    raw = params.last(query, "span")
    seq, _, ids = raw.partition(",")
    if params.integer(seq, "span") != after:
        return None, None
    if not ids:
        return set(), None
    lo, comma, hi = ids.partition(",")
    if not comma:
        raise params.BadParam("span", raw, "is not <seq>,<lowest id>,<highest id>")
    lo, hi = params.ident(lo, "span"), params.ident(hi, "span")
    if lo > hi:
        raise params.BadParam("span", raw, "has its lowest id after its highest")
    return None, (lo, hi)


def _topics(page: str, query: dict[str, list[str]]) -> set[str]:
    if page == "overview":
        return {"overview"}
    if page == "executions":
        return {"rows", "new"}
    eid = (query.get("id") or [""])[-1]
    return {f"exec:{eid}", "minis"}


async def _resync(dash: Dashboard, client: Client, page: str, query: dict[str, list[str]], after: int) -> str:
    """Everything the page shows, rendered fresh: for a client the ring cannot catch up."""
    now = now_ms()
    if page == "overview":
        top, scan = await loaders.overview_counts(dash), await loaders.overview_scan(dash, now)
        return live.overview_counts_html(top.counts, top.recent, now) + live.overview_scan_html(scan.tp, scan.groups, now)
    if page == "executions" and client.filters is not None:
        rows = (await loaders.executions_rows(dash, client.filters)).rows
        client.shown, client.span = {r.id for r in rows}, None  # the rows it shows from now on
        return live.execution_rows_html(rows, now)
    eid = (query.get("id") or [""])[-1]
    cache = await loaders.execution(dash, eid, now)
    if cache is None:
        return ""
    step = (query.get("step") or [""])[-1]
    html = live.execution_html(dash, cache, now, keys=[step] if step else [], children=True)
    missed = [e for e in cache.events if e.seq > after]
    if missed:
        html += live.event_rows_html(missed, cache.events[0].at)
    return html


def _event(tick_seq: int, parts: list[str]) -> ServerSentEvent:
    # scrub: storage may hold text no encoder accepts (rows from before inputs were checked);
    # one such row must not end every stream that carries it.
    return ServerSentEvent(data=scrub(live.template(parts)), event="update", id=str(tick_seq))


async def _stream(dash: Dashboard, hub: Hub, client: Client, replay: list[Tick] | None,
                  page: str, query: dict[str, list[str]]) -> AsyncIterator[bytes]:  # fmt: skip
    try:
        if replay is None:
            yield await _resynced(dash, hub, client, page, query)
        else:
            for tick in replay:
                for chunk in _encode(client, tick):
                    yield chunk
        while True:
            item = await client.queue.get()
            if item is None:
                return
            if item == RESYNC:
                yield await _resynced(dash, hub, client, page, query)
                continue
            assert isinstance(item, Tick)
            for chunk in _encode(client, item):
                yield chunk
    finally:
        hub.disconnect(client)


async def _resynced(dash: Dashboard, hub: Hub, client: Client, page: str, query: dict[str, list[str]]) -> bytes:
    html = await _resync(dash, client, page, query, client.after)
    client.after = hub.head
    return _event(hub.head, [html]).encode()


def _encode(client: Client, tick: Tick) -> list[bytes]:
    """The tick as SSE bytes for this client.

    In the steady state every client of the same page kind (and rows) gets the same
    bytes, encoded once per tick; only a client whose resume point falls inside the
    tick (it must not see an event row twice) gets its own. The "new" banner is
    rendered once per list view and count.
    """
    mine = [m for m in tick.messages if m.topic in client.topics and (not m.key or client.shows(m.key))]
    out: list[bytes] = []
    if any(m.append and m.topic != "new" and m.seq <= client.after for m in mine):
        parts = [m.html for m in mine if m.topic != "new" and client.wants(m)]
        if parts:
            out.append(_event(tick.seq, parts).encode())
    else:
        key: object = (client.topics, tuple(m.key for m in mine if m.key))
        data = tick.encoded.get(key)
        if data is None:
            parts = [m.html for m in mine if m.topic != "new"]
            data = tick.encoded[key] = _event(tick.seq, parts).encode() if parts else b""
        if data:
            out.append(data)
    new = sum(new_count(client, m) for m in mine if m.topic == "new")
    if new and client.filters is not None:
        client.new_count += new
        key = ("new", client.filters.url(), client.new_count)
        banner = tick.encoded.get(key)
        if banner is None:
            banner = tick.encoded[key] = _event(tick.seq, [live.new_banner_html(client.filters, client.new_count)]).encode()
        out.append(banner)
    client.after = max(client.after, tick.seq)
    return out


LIVE_PATH = "/live"


@asgi(LIVE_PATH, copy_scope=True)
async def live_stream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope.get("method") != "GET":  # a stream is only ever read (HEAD too would never end)
        await _plain(send, 405, "dq-ui: /live answers GET only\n", [(b"allow", b"GET")])
        return
    dash: Dashboard = scope["litestar_app"].state[STATE_KEY]
    hub = dash.hub
    try:
        query = params.query_lists(scope)
        page = params.choice(params.last(query, "page") or "overview", "page", PAGES)
        after = _after(scope, query)
        if page == "execution":
            params.ident(params.last(query, "id"), "id")
            params.text(params.last(query, "step"), "step", max_len=params.MAX_TEXT * 5)
        filters = parse_filters(query, list(dash.jobs)) if page == "executions" else None
        shown, span = _rows_shown(query, after) if page == "executions" else (None, None)
    except params.BadParam as exc:
        await _plain(send, 400, f"dq-ui: {exc.detail}\n", [])
        return
    if filters is not None and filters.errors:  # each names its parameter
        await _plain(send, 400, "dq-ui: " + "; ".join(filters.errors) + "\n", [])
        return
    if after is not None and after > hub.head and not await hub.catch_up(after):
        after = 0  # from another server lifetime: start over
    client, replay = hub.connect(_topics(page, query), after, filters, shown=shown, span=span)
    response = EventSourceResponse(
        _stream(dash, hub, client, replay, page, query),
        ping=dash.settings.ping_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response(scope, receive, send)  # type: ignore[arg-type]


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = scrub(text).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        *headers, (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body, "more_body": False})


def stream_url(page: str, after: int, **extra: Any) -> str:
    """The page's stream, resuming after the event seq the page was rendered at."""
    pairs: list[tuple[str, str]] = [("page", page), ("after", str(after))]
    for key, value in extra.items():
        if isinstance(value, list):
            pairs += [(key, str(v)) for v in value]
        elif value is not None:
            pairs.append((key, str(value)))
    return prefix.url(LIVE_PATH + "?" + urlencode(pairs))
