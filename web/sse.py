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
from urllib.parse import parse_qs, urlencode

from litestar import asgi
from litestar.types import Receive, Scope, Send
from sse_starlette import EventSourceResponse, ServerSentEvent

from dq.engine.ids import now_ms

from . import live, loaders
from .dashboard import STATE_KEY, Dashboard
from .filters import parse_filters
from .hub import RESYNC, Client, Hub, Tick, new_matches

PAGES = ("overview", "executions", "execution")


def _after(scope: Scope, params: dict[str, list[str]]) -> int | None:
    headers = dict(scope.get("headers") or [])
    raw = headers.get(b"last-event-id", b"").decode() or (params.get("after") or [""])[-1]
    raw = raw.strip()
    return int(raw) if raw.isdigit() else None


def _topics(page: str, params: dict[str, list[str]]) -> set[str]:
    if page == "overview":
        return {"overview"}
    if page == "executions":
        return {"rows", "new"}
    eid = (params.get("id") or [""])[-1]
    return {f"exec:{eid}", "minis"}


async def _resync(dash: Dashboard, client: Client, page: str, params: dict[str, list[str]], after: int) -> str:
    """Everything the page shows, rendered fresh: for a client the ring cannot catch up."""
    now = now_ms()
    if page == "overview":
        top, scan = await loaders.overview_counts(dash), await loaders.overview_scan(dash, now)
        return live.overview_counts_html(top.counts, top.recent, now) + live.overview_scan_html(scan.tp, scan.groups, now)
    if page == "executions" and client.filters is not None:
        return live.execution_rows_html((await loaders.executions_rows(dash, client.filters)).rows, now)
    eid = (params.get("id") or [""])[-1]
    cache = await loaders.execution(dash, eid)
    if cache is None:
        return ""
    step = (params.get("step") or [""])[-1]
    html = live.execution_html(dash, cache, now, keys=[step] if step else [], children=True)
    missed = [e for e in cache.events if e.seq > after]
    if missed:
        html += live.event_rows_html(missed, cache.events[0].at)
    return html


def _event(tick_seq: int, parts: list[str]) -> ServerSentEvent:
    return ServerSentEvent(data=live.template(parts), event="update", id=str(tick_seq))


async def _stream(dash: Dashboard, hub: Hub, client: Client, replay: list[Tick] | None,
                  page: str, params: dict[str, list[str]]) -> AsyncIterator[bytes]:  # fmt: skip
    try:
        if replay is None:
            yield await _resynced(dash, hub, client, page, params)
        else:
            for tick in replay:
                for chunk in _encode(client, tick):
                    yield chunk
        while True:
            item = await client.queue.get()
            if item is None:
                return
            if item == RESYNC:
                yield await _resynced(dash, hub, client, page, params)
                continue
            assert isinstance(item, Tick)
            for chunk in _encode(client, item):
                yield chunk
    finally:
        hub.disconnect(client)


async def _resynced(dash: Dashboard, hub: Hub, client: Client, page: str, params: dict[str, list[str]]) -> bytes:
    html = await _resync(dash, client, page, params, client.after)
    client.after = hub.head
    return _event(hub.head, [html]).encode()


def _encode(client: Client, tick: Tick) -> list[bytes]:
    """The tick as SSE bytes for this client.

    In the steady state every client of the same page kind gets the same bytes, encoded
    once per tick; only a client whose resume point falls inside the tick (it must not
    see an event row twice) or that has new rows to announce gets its own.
    """
    mine = [m for m in tick.messages if m.topic in client.topics]
    out: list[bytes] = []
    if any(m.append and m.topic != "new" and m.seq <= client.after for m in mine):
        parts = [m.html for m in mine if m.topic != "new" and client.wants(m)]
        if parts:
            out.append(_event(tick.seq, parts).encode())
    else:
        data = tick.encoded.get(client.topics)
        if data is None:
            parts = [m.html for m in mine if m.topic != "new"]
            data = tick.encoded[client.topics] = _event(tick.seq, parts).encode() if parts else b""
        if data:
            out.append(data)
    new = sum(1 for m in mine if m.topic == "new" and m.seq > client.after and new_matches(client, m))
    if new and client.filters is not None:
        client.new_count += new
        out.append(_event(tick.seq, [live.new_banner_html(client.filters, client.new_count)]).encode())
    client.after = max(client.after, tick.seq)
    return out


@asgi("/live", copy_scope=True)
async def live_stream(scope: Scope, receive: Receive, send: Send) -> None:
    dash: Dashboard = scope["litestar_app"].state[STATE_KEY]
    hub = dash.hub
    params = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=False)
    page = (params.get("page") or ["overview"])[-1]
    if page not in PAGES:
        page = "overview"
    after = _after(scope, params)
    if after is not None and after > hub.head and not await hub.catch_up(after):
        after = 0  # from another server lifetime: start over
    filters = parse_filters(params, list(dash.jobs)) if page == "executions" else None
    client, replay = hub.connect(_topics(page, params), after, filters)
    response = EventSourceResponse(
        _stream(dash, hub, client, replay, page, params),
        ping=dash.settings.ping_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response(scope, receive, send)  # type: ignore[arg-type]


def stream_url(page: str, after: int, **params: Any) -> str:
    """The page's stream, resuming after the event seq the page was rendered at."""
    pairs: list[tuple[str, str]] = [("page", page), ("after", str(after))]
    for key, value in params.items():
        if isinstance(value, list):
            pairs += [(key, str(v)) for v in value]
        elif value is not None:
            pairs.append((key, str(value)))
    return "/live?" + urlencode(pairs)
