"""Workers: every process that serves this storage (this one first), its heartbeat age,
capacity and what it runs now.

A worker sends a heartbeat every third of the lease; one that missed a beat is
late, one that missed three is lost (its leases expire and others resume its work).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar import Request, get
from litestar.response import Response

from dq.engine.ids import now_ms
from dq.engine.storage.base import ExecutionQuery, ExecutionRecord

from . import render
from .dashboard import Dashboard, dashboard_of
from .pages import html

Req = Request[Any, Any, Any]


@dataclass(slots=True)
class WorkerView:
    id: str
    host: str
    pid: Any
    kind: str
    state: str
    heartbeat_age_ms: int
    health: str  # ok | late | lost
    capacity: int | None
    this_process: bool
    running: list[ExecutionRecord] = field(default_factory=list)


async def workers(dash: Dashboard) -> list[WorkerView]:
    storage, queue = dash.storage, dash.queue
    runtime = queue.runtime
    me = runtime.worker_id
    clock = await storage.now()
    beat_ms = max(50, queue.lease_ms // 3)
    running = await storage.query(ExecutionQuery(statuses=("running",), limit=5000))
    by_worker: dict[str, list[ExecutionRecord]] = {}
    for rec in running:
        by_worker.setdefault(rec.worker_id or "", []).append(rec)
    out = []
    for w in await storage.list_workers():
        info = w.get("info") or {}
        age = max(0, clock - int(w.get("last_heartbeat") or 0))
        health = "ok" if age <= 2 * beat_ms else ("late" if age <= 3 * beat_ms else "lost")
        mine = w["id"] == me
        capacity = runtime.max_active if mine else info.get("capacity")
        out.append(WorkerView(
            w["id"], str(info.get("host", "")), info.get("pid"), str(info.get("kind", "")),
            str(info.get("state", "")), age, health, capacity if isinstance(capacity, int) else None,
            mine, by_worker.get(w["id"], []),
        ))  # fmt: skip
    out.sort(key=lambda v: (not v.this_process, v.health != "ok", v.id))
    return out


@get("/workers", name="workers")
async def workers_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    now = now_ms()
    ctx = dash.context(request, "workers")
    ctx.update(workers=await workers(dash), now=now)
    return html(render.page("workers.html", **ctx))
