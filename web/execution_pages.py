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

from . import loaders, params, render
from .dashboard import Dashboard, dashboard_of
from .format import payload_bytes
from .pages import html
from .ran_source import diff_lines, ran_source
from .sse import stream_url
from .views import execution_context, panel_context, read_all_events

Req = Request[Any, Any, Any]


async def _record(dash: Dashboard, execution_id: str) -> ExecutionRecord:
    # Text no id can hold never reaches storage (PostgreSQL refuses NUL bytes with an error).
    rec = await dash.storage.get_execution(execution_id) if params.is_ident(execution_id) else None
    if rec is None:
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    return rec


@get("/executions/{execution_id:str}", name="execution")
async def execution_page(request: Req, execution_id: FromPath[str]) -> Response[str]:
    dash = dashboard_of(request)
    storage = dash.storage
    query = params.query_lists(request.scope)
    tab = params.choice(params.last(query, "tab") or "trace", "tab", ("trace", "events"))
    key = _step_key(query, "step") or None
    seq = await storage.last_event_seq()  # before the reads: the stream resumes from here
    now = now_ms()
    data = await loaders.execution(dash, execution_id, now, upto=seq) if params.is_ident(execution_id) else None
    if data is None or data.rec is None:
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    ctx = dash.context(request, "executions", stream_url("execution", seq, id=execution_id, step=key))
    ctx.update(execution_context(dash, data.rec, data.steps, data.events, data.children, now, key=key, tab=tab,
                                 tree=data.tree, ran=data.ran))  # fmt: skip
    ctx["why"] = data.why
    ctx["replays"] = await loaders.replays(dash, execution_id)
    return html(render.page("execution.html", **ctx))


@get("/executions/{execution_id:str}/waterfall", name="waterfall")
async def waterfall_fragment(request: Req, execution_id: FromPath[str]) -> Response[str]:
    """The waterfall alone (a child execution expanded inside its parent's)."""
    dash = dashboard_of(request)
    nested = params.choice(params.last(params.query_lists(request.scope), "nested") or "1", "nested", ("0", "1"))
    rec = await _record(dash, execution_id)
    steps = await dash.storage.get_steps(execution_id)
    events = await read_all_events(dash.storage, execution_id)
    ctx = execution_context(dash, rec, steps, events, [], now_ms())
    ctx.update(nested=nested == "1", oob=False)
    return html(render.block("execution.html", "waterfall", **ctx))


@get("/executions/{execution_id:str}/step", name="step_panel")
async def step_panel(request: Req, execution_id: FromPath[str]) -> Response[str]:
    """The step panel for `?key=` (htmx swaps it in when a waterfall row is clicked)."""
    dash = dashboard_of(request)
    key = _step_key(params.query_lists(request.scope), "key")
    rec = await _record(dash, execution_id)
    steps = await dash.storage.get_steps(execution_id)
    events = await read_all_events(dash.storage, execution_id)
    ctx = panel_context(dash, rec, steps, events, key, await ran_source(dash, rec, events))
    ctx.update(oob=False, now=now_ms())
    return html(render.page("step_panel.html", **ctx))


def _step_key(query: dict[str, list[str]], name: str) -> str:
    return params.text(params.last(query, name), name, max_len=params.MAX_TEXT * 5)


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
    key = _step_key(params.query_lists(request.scope), "key")
    await _record(dash, execution_id)
    step = next((s for s in await dash.storage.get_steps(execution_id) if s.key == key), None)
    if step is None:
        raise NotFoundException(f"Execution {execution_id!r} has no step {key!r}.")
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in key)  # a header is Latin-1
    return _download(step.output, f"{execution_id}-{safe}")


@get("/executions/{execution_id:str}/source-diff", name="source_diff")
async def source_diff(request: Req, execution_id: FromPath[str]) -> Response[str]:
    """The code the execution ran against the job's code now."""
    dash = dashboard_of(request)
    rec = await _record(dash, execution_id)
    ran = await ran_source(dash, rec, await read_all_events(dash.storage, execution_id))
    if ran is None:
        raise NotFoundException(f"Execution {execution_id!r} has no recorded source version.")
    lines = diff_lines(ran.version, ran.current) if ran.current is not None else []
    ctx = dash.context(request, "executions")
    ctx.update(rec=rec, ran=ran, lines=lines, now=now_ms())
    return html(render.page("source_diff.html", **ctx))
