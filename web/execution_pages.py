"""One execution: the page, its fragments (waterfall, step panel) and payload downloads."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Response

from dq.engine.ids import now_ms
from dq.engine.storage.base import ExecutionRecord

from . import loaders, render
from .dashboard import Dashboard, dashboard_of
from .format import payload_bytes
from .pages import html
from .sse import stream_url
from .views import execution_context, panel_context, read_all_events

Req = Request[Any, Any, Any]


async def _record(dash: Dashboard, execution_id: str) -> ExecutionRecord:
    rec = await dash.storage.get_execution(execution_id)
    if rec is None:
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    return rec


@get("/executions/{execution_id:str}", name="execution")
async def execution_page(request: Req, execution_id: FromPath[str]) -> Response[str]:
    dash = dashboard_of(request)
    storage = dash.storage
    seq = await storage.last_event_seq()  # before the reads: the stream resumes from here
    data = await loaders.execution(dash, execution_id, upto=seq)
    if data is None or data.rec is None:
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    tab = request.query_params.get("tab") or "trace"
    tab = tab if tab in ("trace", "events") else "trace"
    key = request.query_params.get("step") or None
    now = now_ms()
    ctx = dash.context(request, "executions", stream_url("execution", seq, id=execution_id, step=key))
    ctx.update(execution_context(dash, data.rec, data.steps, data.events, data.children, now, key=key, tab=tab))
    return html(render.page("execution.html", **ctx))


@get("/executions/{execution_id:str}/waterfall", name="waterfall")
async def waterfall_fragment(request: Req, execution_id: FromPath[str]) -> Response[str]:
    """The waterfall alone (a child execution expanded inside its parent's)."""
    dash = dashboard_of(request)
    rec = await _record(dash, execution_id)
    steps = await dash.storage.get_steps(execution_id)
    events = await read_all_events(dash.storage, execution_id)
    ctx = execution_context(dash, rec, steps, events, [], now_ms())
    ctx.update(nested=request.query_params.get("nested", "1") != "0", oob=False)
    return html(render.block("execution.html", "waterfall", **ctx))


@get("/executions/{execution_id:str}/step", name="step_panel")
async def step_panel(request: Req, execution_id: FromPath[str]) -> Response[str]:
    """The step panel for `?key=` (htmx swaps it in when a waterfall row is clicked)."""
    dash = dashboard_of(request)
    key = request.query_params.get("key") or ""
    rec = await _record(dash, execution_id)
    steps = await dash.storage.get_steps(execution_id)
    events = await read_all_events(dash.storage, execution_id)
    ctx = panel_context(dash, rec, steps, events, key)
    ctx.update(oob=False, now=now_ms())
    return html(render.page("step_panel.html", **ctx))


def _download(value: Any, name: FromPath[str]) -> Response[bytes]:
    return Response(
        content=payload_bytes(value),
        media_type=MediaType.JSON,
        headers={"Content-Disposition": f'attachment; filename="{name}.json"'},
    )


@get("/executions/{execution_id:str}/payload/{field:str}", name="payload")
async def payload_download(request: Req, execution_id: FromPath[str], field: FromPath[str]) -> Response[bytes]:
    dash = dashboard_of(request)
    rec = await _record(dash, execution_id)
    if field not in ("input", "output", "error"):
        raise NotFoundException(f"An execution has no payload {field!r}.")
    return _download(getattr(rec, field), f"{execution_id}-{field}")


@get("/executions/{execution_id:str}/step-output", name="step_output")
async def step_output_download(request: Req, execution_id: FromPath[str]) -> Response[bytes]:
    dash = dashboard_of(request)
    key = request.query_params.get("key") or ""
    await _record(dash, execution_id)
    step = next((s for s in await dash.storage.get_steps(execution_id) if s.key == key), None)
    if step is None:
        raise NotFoundException(f"Execution {execution_id!r} has no step {key!r}.")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
    return _download(step.output, f"{execution_id}-{safe}")
