"""Workers: the orchestration nodes, remote workers and in-process runtimes sharing this
storage, with their heartbeat age; late and lost ones stand out. Live over SSE.

A worker is late after 1.5 heartbeat intervals without a beat and lost after 3
(the node's rule, see engine/distributed/node.py). Remote workers carry their
node's interval; in-process runtimes beat once per lease third (10 s by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, asgi, get
from litestar.response import Response
from litestar.types import Receive, Scope, Send
from sse_starlette import EventSourceResponse, ServerSentEvent

from dq.engine.distributed.node import MISSED_BEATS

from . import live, prefix, render
from .dashboard import STATE_KEY, Dashboard, dashboard_of
from .pages import html

Req = Request[Any, Any, Any]
_IN_PROCESS_INTERVAL_MS = 10_000
STREAM_URL = "/workers/live"


@dataclass(slots=True)
class WorkerRow:
    id: str
    kind: str  # node | remote | in-process
    host: str
    pid: Any
    version: str
    age_ms: int
    health: str  # alive | late | lost | stopping
    capacity: Any = None
    running: int | None = None
    executions: list[str] = field(default_factory=list)
    url: str | None = None
    refused: dict[str, str] = field(default_factory=dict)
    refused_reports: int = 0
    this_process: bool = False


def _row(w: dict[str, Any], now: int) -> WorkerRow:
    info = w.get("info") or {}
    kind = str(info.get("kind") or "in-process")
    interval = int(info.get("interval_ms") or _IN_PROCESS_INTERVAL_MS)
    age = max(0, now - int(w.get("last_heartbeat") or 0))
    if age > MISSED_BEATS * interval:
        health = "lost"
    elif age > interval * 3 // 2:
        health = "late"
    else:
        health = "stopping" if info.get("state") == "stopping" else "alive"
    return WorkerRow(
        id=str(w["id"]), kind=kind, host=str(info.get("host", "")), pid=info.get("pid"),
        version=str(info.get("version", "")), age_ms=age, health=health, capacity=info.get("capacity"),
        running=info.get("running"), executions=list(info.get("executions") or []), url=info.get("url"),
        refused=dict(info.get("refused_jobs") or {}), refused_reports=int(info.get("refused_reports") or 0),
    )  # fmt: skip


async def worker_rows(dash: Dashboard) -> tuple[list[WorkerRow], int]:
    storage, runtime = dash.storage, dash.queue.runtime
    now = await storage.now()
    order = {"node": 0, "remote": 1}
    rows = [_row(w, now) for w in await storage.list_workers()]
    for row in rows:
        if row.id == runtime.worker_id:  # this server's own runtime: what it runs now, not at its last beat
            row.this_process, row.capacity = True, runtime.max_active
            row.executions = sorted(runtime.contexts)
            row.running = len(row.executions)
    rows.sort(key=lambda r: (order.get(r.kind, 2), r.host, r.id))
    return rows, now


def _table(rows: list[WorkerRow], now: int, oob: bool) -> str:
    return render.block("workers.html", "table", rows=rows, now=now, oob=oob)


@get("/workers", name="workers")
async def workers_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    rows, now = await worker_rows(dash)
    ctx = dash.context(request, "workers", prefix.url(STREAM_URL))
    ctx.update(rows=rows, now=now, oob=False)
    return html(render.page("workers.html", **ctx))


async def _updates(dash: Dashboard, every_s: float) -> AsyncIterator[ServerSentEvent]:
    """The table, re-rendered every `every_s`: heartbeats are not events, and their
    ages change all the time, so a tick (not the event log) drives this page."""
    while True:
        try:
            rows, now = await worker_rows(dash)
        except Exception:  # storage hiccup: the page keeps its last table
            pass
        else:
            yield ServerSentEvent(data=live.template([_table(rows, now, oob=True)]), event="update")
        await asyncio.sleep(every_s)


@asgi(STREAM_URL, copy_scope=True)
async def workers_stream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope.get("method") != "GET":  # a stream is only ever read (HEAD too would never end)
        start: Any = {"type": "http.response.start", "status": 405,
                      "headers": [(b"allow", b"GET"), (b"content-type", b"text/plain; charset=utf-8")]}  # fmt: skip
        await send(start)
        body: Any = {"type": "http.response.body", "body": b"dq-ui: the workers stream answers GET only\n"}
        await send(body)
        return
    dash: Dashboard = scope["litestar_app"].state[STATE_KEY]
    response = EventSourceResponse(_updates(dash, 1.0), ping=dash.settings.ping_s,
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    await response(scope, receive, send)  # type: ignore[arg-type]
