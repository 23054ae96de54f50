"""Pages: the overview, the executions list and the go-to box."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, get
from litestar.enums import MediaType
from litestar.response import Redirect, Response

from dq.engine.ids import now_ms
from dq.engine.storage.base import ExecutionQuery

from . import loaders, params, prefix, render
from .dashboard import dashboard_of
from .filters import parse_filters
from .sse import stream_url
from .stats import status_counts

Req = Request[Any, Any, Any]


def html(body: str, status_code: int = 200) -> Response[str]:
    return Response(content=body, media_type=MediaType.HTML, status_code=status_code)


def query_lists(request: Req) -> dict[str, list[str]]:
    return params.query_lists(request.scope)


@get("/", name="overview")
async def overview(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    storage = dash.storage
    seq = await storage.last_event_seq()
    now = now_ms()
    ctx = dash.context(request, "overview", stream_url("overview", seq))
    top, scan = await loaders.overview_counts(dash), await loaders.overview_scan(dash, now)
    ctx.update(counts=top.counts, recent=top.recent, tp=scan.tp, groups=scan.groups, job_count=len(dash.jobs),
               retention=loaders.retention(dash))
    return html(render.page("overview.html", **ctx))


@get("/executions", name="executions")
async def executions(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    storage = dash.storage
    f = parse_filters(query_lists(request), list(dash.jobs))
    seq = await storage.last_event_seq()
    page = await loaders.executions_rows(dash, f)
    rows, more = page.rows, page.more
    newer_url = older_url = None
    if f.before:
        if more and rows:
            newer_url = f.url(before=rows[0].id)
        if rows:
            older_url = f.url(cursor=rows[-1].id)
    else:
        if more and rows:
            older_url = f.url(cursor=rows[-1].id)
        if f.cursor and rows:
            newer_url = f.url(before=rows[0].id)
    chip_query = f.query()
    chip_query.statuses = None
    counts = await status_counts(storage, chip_query)
    total = sum(n for s, n in counts.items() if not f.statuses or s in f.statuses)
    ids = [r.id for r in rows]  # the stream then carries only the rows this page lists
    extra = {"cursor": f.cursor, "before": f.before, "span": f"{seq},{min(ids)},{max(ids)}" if ids else str(seq)}
    live_params: dict[str, Any] = {}
    for key, value in f.params():
        live_params.setdefault(key, []).append(value)
    ctx = dash.context(request, "executions", stream_url("executions", seq, **live_params, **extra))
    ctx.update(
        f=f, rows=rows, counts=counts, total=total, job_names=sorted(dash.jobs),
        newer_url=newer_url, older_url=older_url, new_count=0,
    )  # fmt: skip
    return html(render.page("executions.html", **ctx), status_code=400 if f.errors else 200)


@get("/go", name="go")
async def go(request: Req) -> Redirect:
    """The go-to box: an exact id opens the execution, anything else searches ids."""
    dash = dashboard_of(request)
    text = params.last(query_lists(request), "id")
    if not text:
        return Redirect(prefix.url("/executions"))
    if not params.is_ident(text):  # no id holds it: the list says why, naming the parameter
        return Redirect(prefix.url(f"/executions?q={quote(text, safe='')}"))
    if await dash.storage.get_execution(text) is not None:
        return Redirect(prefix.url(f"/executions/{text}"))
    found = await dash.storage.query(ExecutionQuery(id_contains=text, limit=2))
    if len(found) == 1:
        return Redirect(prefix.url(f"/executions/{found[0].id}"))
    return Redirect(prefix.url(f"/executions?q={quote(text, safe='')}"))
