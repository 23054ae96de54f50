"""Workers: every process that serves this storage (this one first), its heartbeat age,
capacity and what it runs now.

A worker sends a heartbeat every third of the lease; one that missed a beat is
late, one that missed three is lost (its leases expire and others resume its work).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Response

from dq.engine.ids import now_ms

from . import loaders, render
from .dashboard import dashboard_of
from .pages import html

Req = Request[Any, Any, Any]


@get("/workers", name="workers")
async def workers_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    now = now_ms()
    ctx = dash.context(request, "workers")
    ctx.update(workers=await loaders.workers(dash), now=now)
    return html(render.page("workers.html", **ctx))
