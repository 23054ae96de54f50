"""Lifecycle controls: small POST endpoints over the same API user code calls.

Each answers with the refreshed execution header (htmx swaps it out of band),
so the badge and the buttons change at once; the live stream confirms it.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Response

from dq import DqError
from dq.engine.ids import now_ms

from . import params, render
from .dashboard import dashboard_of
from .pages import html

Req = Request[Any, Any, Any]


async def _act(request: Req, execution_id: str, action: str) -> Response[str]:
    dash = dashboard_of(request)
    dash.require_writable()
    execution = await dash.queue.jobs.get(execution_id) if params.is_ident(execution_id) else None
    if execution is None:
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    try:
        if action == "cancel":
            done = await execution.cancel(reason="cancelled from the dashboard", by="dashboard")
        else:
            done = await getattr(execution, action)(by="dashboard")
    except DqError as exc:
        return html(str(exc), status_code=409)
    rec = await dash.storage.get_execution(execution_id)
    if rec is None:  # pragma: no cover - deleted in between
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    body = render.block("execution.html", "header", rec=rec, oob=True, read_only=False, now=now_ms())
    headers = {} if done else {"HX-Trigger": '{"dq:notice": "nothing to ' + action + '"}'}
    return Response(content=body, media_type="text/html", headers=headers, status_code=200)


@post("/executions/{execution_id:str}/pause", name="pause")
async def pause(request: Req, execution_id: FromPath[str]) -> Response[str]:
    return await _act(request, execution_id, "pause")


@post("/executions/{execution_id:str}/resume", name="resume")
async def resume(request: Req, execution_id: FromPath[str]) -> Response[str]:
    return await _act(request, execution_id, "resume")


@post("/executions/{execution_id:str}/cancel", name="cancel")
async def cancel(request: Req, execution_id: FromPath[str]) -> Response[str]:
    return await _act(request, execution_id, "cancel")


@post("/executions/{execution_id:str}/retry", name="retry")
async def retry(request: Req, execution_id: FromPath[str]) -> Response[str]:
    return await _act(request, execution_id, "retry")
